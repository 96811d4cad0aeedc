"""Fit TeaCache's rescaling polynomial to a model: ``vidcache calibrate``.

Why: TeaCache accumulates ``poly(d)``, where ``d`` is the relative L1 change of a cheap indicator
between consecutive steps and ``poly`` maps it to the change the *output* will show. The official
polynomials exist for a few checkpoints (METHODS.md); any other model (Wan 2.2, a fine-tune, the tiny
reference model) falls back to the nearest set with a warning, and a threshold tuned on a wrong
polynomial means little. This module does what the TeaCache authors did: run the model *uncached*
on a few prompts, and for every pair of consecutive forwards of one branch record

    x = rel_L1(indicator_t, indicator_t-1)        (TeaCache's indicator for the family, fp32)
    y = rel_L1(output_t, output_t-1)              (the transformer's prediction)

then fit a degree-4 polynomial y(x) with numpy (x^4 .. x^0, the order of ``teacache.COEFFICIENTS``).
The result is a TOML preset fragment (``[teacache] coefficients = [...]``) for ``--preset FILE``.

Branches are diffusers' cache contexts (Wan's "cond" / "uncond" forwards, CogVideoX's batched
"cond_uncond", HunyuanVideo's "cond"); pairs never span two branches or two videos. Wan 2.2 A14B's
two experts are recorded as separate series and fitted together (one set of coefficients serves
both in a preset). Ours: the indicator is read exactly where TeaCache reads it (the time embedder's
output on Wan and CogVideoX, block 0's modulated input on HunyuanVideo), from hooks, so the fitted
``x`` is the ``d`` TeaCache will see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .caches import base
from .caches.teacache import embedder_indicator
from .errors import UsageError
from .loading import transformers_of
from .models import FamilyAdapter

HOOK = "vidcache_calibrate"
DEGREE = 4


@dataclass
class Calibration:
    """The fitted polynomial and what it was fitted on."""

    family: str
    retention: bool
    coefficients: list[float]  # x^4 .. x^0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    videos: int = 0

    @property
    def mean_rel_error(self) -> float:
        """mean |poly(x) - y| / mean y over the points: how well one curve explains them."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        return float(np.abs(np.polyval(self.coefficients, x) - y).mean() / max(y.mean(), 1e-12))

    @property
    def negative_below(self) -> float | None:
        """The largest x of the fitted range where the curve is below zero (TeaCache would then
        count a change as negative and skip more than it should), or None."""
        grid = np.linspace(min(self.x), max(self.x), 200)
        below = grid[np.polyval(self.coefficients, grid) < 0]
        return float(below.max()) if below.size else None

    def summary(self) -> dict[str, Any]:
        return {"family": self.family, "retention": self.retention, "coefficients": self.coefficients,
                "points": len(self.x), "videos": self.videos,
                "x_range": [min(self.x), max(self.x)], "mean_rel_error": self.mean_rel_error,
                "negative_below": self.negative_below}

    def warnings(self) -> list[str]:
        neg = self.negative_below
        if neg is None:
            return []
        return [f"the fitted curve is below zero for indicator changes up to {neg:.4g} (inside the fitted range): "
                "TeaCache would count such a step as a negative change, so look at the curve before using it"]

    def toml(self, model: str) -> str:
        s = self.summary()
        lines = [
            f"# vidcache calibrate: TeaCache coefficients for {model} ({self.family}), fitted on",
            f"#   {self.videos} uncached videos, {s['points']} pairs of consecutive forwards; indicator change",
            f"#   {s['x_range'][0]:.4g} .. {s['x_range'][1]:.4g}, mean relative fit error {s['mean_rel_error']:.3f}.",
            "# Use: vidcache gen --cache teacache --preset THIS_FILE ... (then tune thresh with vidcache bench)",
            "[teacache]",
            "coefficients = [" + ", ".join(f"{c:.10e}" for c in self.coefficients) + "]",
        ]
        lines[4:4] = [f"# warning: {w}" for w in self.warnings()]
        if self.retention:
            lines.append("retention = true")
        return "\n".join(lines) + "\n"


class _Branch(BaseState):
    def __init__(self) -> None:
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.prev = None


class _Recorder(ModelHook):
    """On a transformer: pairs this forward's indicator (set by the indicator hook) with its output,
    per cache context (branch), and records (x, y) against the branch's previous forward."""

    _is_stateful = True

    def __init__(self, sink: _Sink) -> None:
        super().__init__()
        self.sink = sink
        self.states = StateManager(_Branch)

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        indicator, self.sink.indicator = self.sink.indicator, None
        if indicator is None:
            raise RuntimeError("calibrate: the indicator was not seen in this forward")
        sample = base.sample_of(output).detach().float()
        state = self.states.get_state()
        if state.prev is not None:
            self.sink.add(base.relative_l1(indicator, state.prev[0]), base.relative_l1(sample, state.prev[1]))
        state.prev = (indicator, sample)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


class _Sink:
    def __init__(self) -> None:
        self.indicator: torch.Tensor | None = None
        self.x: list[float] = []
        self.y: list[float] = []

    def add(self, x: float, y: float) -> None:
        self.x.append(x)
        self.y.append(y)


def _indicator_hook(transformer: torch.nn.Module, retention: bool, sink: _Sink):
    """A torch hook that hands this forward's indicator to ``sink``; returns its handle."""
    layout = base.layout_of(transformer)
    source = embedder_indicator(layout, retention)
    if source is not None:  # Wan, CogVideoX: from the time embedder's call, as TeaCache reads it
        name, _ = source

        def post(module, args, kwargs, output):
            sink.indicator = layout.embedder_indicator(transformer, args, kwargs, output, retention).detach().float()

        return transformer.get_submodule(name).register_forward_hook(post, with_kwargs=True)
    block = layout.blocks(transformer)[0][1]  # HunyuanVideo: block 0's modulated input
    meta = base.block_metadata(block)

    def pre(module, args, kwargs):
        hidden = base.block_inputs(meta, args, kwargs)[0]
        sink.indicator = layout.block_indicator(module, meta, hidden, args, kwargs).detach().float()

    return block.register_forward_pre_hook(pre, with_kwargs=True)


class Recording:
    """Hooks on every denoiser of ``pipe`` while it is open; ``new_video()`` between videos."""

    def __init__(self, pipe: Any, family: FamilyAdapter, retention: bool) -> None:
        if retention and not family.teacache.has_retention:
            raise UsageError(f"calibrate: --retention exists for Wan only, not {family.name}")
        self.sink = _Sink()
        self.handles, self.recorders = [], []
        for tr in transformers_of(pipe):
            recorder = _Recorder(self.sink)
            HookRegistry.check_if_exists_or_initialize(tr).register_hook(recorder, HOOK)
            self.recorders.append((tr, recorder))
            self.handles.append(_indicator_hook(tr, retention, self.sink))

    def new_video(self) -> None:
        for tr, recorder in self.recorders:
            recorder.reset_state(tr)
        self.sink.indicator = None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        for tr, _ in self.recorders:
            HookRegistry.check_if_exists_or_initialize(tr).remove_hook(HOOK, recurse=False)
        self.handles, self.recorders = [], []


def fit(x: list[float], y: list[float]) -> list[float]:
    """Degree-4 least squares, x^4 .. x^0; refuses what cannot carry five coefficients."""
    finite = [(a, b) for a, b in zip(x, y) if np.isfinite(a) and np.isfinite(b)]
    if len({round(a, 12) for a, _ in finite}) <= DEGREE:
        raise UsageError(f"calibrate: {len(finite)} usable pairs of steps with fewer than {DEGREE + 1} distinct "
                         "indicator changes; use more steps or more prompts")
    xs, ys = np.array(finite, dtype=np.float64).T
    return [float(c) for c in np.polyfit(xs, ys, DEGREE)]


def calibrate(runner: Any, retention: bool = False, on_video: Any = None) -> Calibration:
    """Run every job of ``runner``'s plan uncached with the recording hooks; fit the polynomial."""
    runner.load()
    family = runner.plan.model.family
    recording = Recording(runner.pipe, family, retention)
    try:
        for pos, job in enumerate(runner.plan.jobs):
            if on_video:
                on_video(job, pos, len(runner.plan.jobs))
            recording.new_video()
            runner.generate(job)
    finally:
        recording.close()
    sink = recording.sink
    return Calibration(family.name, retention, fit(sink.x, sink.y), sink.x, sink.y, len(runner.plan.jobs))

