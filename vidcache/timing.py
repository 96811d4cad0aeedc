"""Where a video's time goes: text encoding, each denoising step, VAE decode.

Measured with hooks on the pipeline's own modules rather than by re-implementing each family's
``__call__``, so the pipeline runs exactly as diffusers ships it. On CUDA every mark synchronises,
otherwise kernel launches, not work, would be timed. Beside the wall clock, the denoising loop's
process CPU time is kept (``denoise_cpu_s``): on a CPU shared with other work it measures this run's
work where the wall clock measures the neighbours too (``vidcache tune`` times CPU runs with it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class VideoTimes:
    text_encode_s: float = 0.0
    decode_s: float = 0.0
    denoise_start: float | None = None
    step_ends: list[float] = field(default_factory=list)
    cpu_start: float | None = None
    cpu_end: float | None = None

    @property
    def denoise_cpu_s(self) -> float:
        """Process CPU time from the first transformer call to the last step's end."""
        return 0.0 if self.cpu_start is None or self.cpu_end is None else self.cpu_end - self.cpu_start

    @property
    def step_s(self) -> list[float]:
        if self.denoise_start is None:
            return []
        marks = [self.denoise_start, *self.step_ends]
        return [b - a for a, b in zip(marks, marks[1:])]


class PipelineTimer:
    """Attach once per loaded pipeline; ``start_video`` before each call, ``times`` after."""

    def __init__(self, pipe, transformers: list[torch.nn.Module], device: str):
        self.cuda = device == "cuda"
        self.times = VideoTimes()
        self._handles = []
        self._patched = []
        for name in ("text_encoder", "text_encoder_2"):
            enc = getattr(pipe, name, None)
            if isinstance(enc, torch.nn.Module):
                self._time_module(enc)
        for tr in transformers:
            self._handles.append(tr.register_forward_pre_hook(self._denoise_pre))
        vae = pipe.vae
        original = vae.decode

        def timed_decode(*args, **kwargs):
            t0 = self.now()
            try:
                return original(*args, **kwargs)
            finally:
                self.times.decode_s += self.now() - t0

        vae.decode = timed_decode
        self._patched.append(vae)

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _time_module(self, module: torch.nn.Module) -> None:
        starts: list[float] = []

        def pre(_m, _a):
            starts.append(self.now())

        def post(_m, _a, _o):
            self.times.text_encode_s += self.now() - starts.pop()

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _denoise_pre(self, _m, _a):
        if self.times.denoise_start is None:
            self.times.denoise_start = self.now()
            self.times.cpu_start = time.process_time()

    def start_video(self) -> None:
        self.times = VideoTimes()

    def on_step_end(self, pipe, step: int, timestep, callback_kwargs):
        """The pipeline's ``callback_on_step_end``."""
        self.times.step_ends.append(self.now())
        self.times.cpu_end = time.process_time()
        return {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for vae in self._patched:
            vae.__dict__.pop("decode", None)
        self._handles, self._patched = [], []
