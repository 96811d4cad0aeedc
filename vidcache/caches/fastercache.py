"""FasterCache (arXiv 2410.19355): attention extrapolation plus the CFG-Cache.

Two reuses, both schedule-only (no decision reads the device):

1. **Attention reuse.** Inside ``attention_window``, each self (spatial) attention module computes
   on every ``attention_range``-th in-window call of its branch; in between its output is
   extrapolated from its last two *computed* outputs: ``A = A1 + w * (A1 - A2)``
   (``w = attention_weight``). Extrapolation needs two outputs and a branch that ran the model at
   the previous step (a Wan uncond forward replaced by the CFG-Cache leaves a gap: the next real
   uncond forward then computes everything). Cross attention is not touched (cheap, and the paper
   reuses self attention only).
2. **CFG-Cache.** The difference between the branches' outputs, split into frequency bands, changes
   slowly. On a full step inside ``cfg_window`` the delta ``D = uncond - cond`` of the transformer
   output is stored; on the others only cond runs and uncond is rebuilt as
   ``IFFT(LF(cond) + w1 LF(D) + HF(cond) + w2 HF(D))`` with ``w1 = 1 + alpha [t > cfg_t0]``,
   ``w2 = 1 + alpha [t <= cfg_t0]``; LF is a disc of radius ``min(H, W) // 5`` of the 2-D FFT over
   each frame's H x W. The FFT is linear and LF + HF = identity, so this equals
   ``cond + D + alpha * band(D)`` with band = LF early (``t > cfg_t0``) and HF late; that is what we
   compute (one real FFT of D, in fp32). Uncond runs fully on every ``cfg_range``-th in-window
   forward of the uncond branch (the first one included), refreshing D.

How the CFG-Cache meets each family's CFG layout (ours; diffusers' version crashes on Wan):

* **Wan** runs cond and uncond as separate forwards ("cond" first, then "uncond"). The cond forward
  leaves its output in a per-transformer link (the only state shared between branches, and only
  within one step: the uncond forward checks the step index). On a reuse step the hook on the
  transformer returns the synthesised uncond output *without running the model*.
* **CogVideoX** runs one forward on [uncond, cond]. On a reuse step only the cond half of the
  batched inputs is run and the synthesised uncond half is concatenated in front.
* **HunyuanVideo** is guidance-distilled: only attention reuse applies (``cfg_cache`` is ignored).

``cfg_cache = false`` turns the CFG-Cache off on every family.

``attention_range`` and ``cfg_range`` are reuse periods stated for ``schedule_steps`` steps; a run
with another step count stretches them (fractional periods allowed), windows and ``cfg_t0`` are
timesteps and need no stretch (``caches/steps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import base
from .steps import StepScale, check_period, check_schedule_steps, due


@dataclass
class FasterCacheConfig:
    attention_range: float = 2
    attention_window: tuple[float, float] = (-1.0, 681.0)
    attention_weight: float = 0.5
    cfg_cache: bool = True
    cfg_range: float = 5
    cfg_window: tuple[float, float] = (-1.0, 641.0)
    alpha: float = 0.2
    cfg_t0: float = 300.0
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        check_period("attention_range", self.attention_range)
        check_period("cfg_range", self.cfg_range)
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        self.attention_window = base.check_window("attention_window", self.attention_window)
        self.cfg_window = base.check_window("cfg_window", self.cfg_window)
        self.attention_weight = base.check_float("attention_weight", self.attention_weight)
        self.alpha = base.check_float("alpha", self.alpha)
        self.cfg_t0 = base.check_float("cfg_t0", self.cfg_t0)
        base.check_bool("cfg_cache", self.cfg_cache)


# ---------------------------------------------------------------------------- frequency bands


def low_band_mask(height: int, width: int, device: torch.device) -> torch.Tensor:
    """The low band of ``rfft2`` over (H, W): frequencies within ``min(H, W) // 5`` of zero (the
    centred disc of FasterCache, expressed without fftshift)."""
    radius = min(height, width) // 5
    fy = torch.fft.fftfreq(height, d=1.0 / height, device=device)
    fx = torch.fft.rfftfreq(width, d=1.0 / width, device=device)
    return (fy[:, None] ** 2 + fx[None, :] ** 2) <= radius**2


def band(x: torch.Tensor, low: bool) -> torch.Tensor:
    """The low (or high) frequency part of ``x`` over its last two dimensions, in fp32."""
    h, w = x.shape[-2:]
    spectrum = torch.fft.rfft2(x.float())
    mask = low_band_mask(h, w, x.device)
    return torch.fft.irfft2(spectrum * (mask if low else ~mask), s=(h, w))


def synthesise_uncond(
    cond: torch.Tensor, delta: torch.Tensor, t: float, config: FasterCacheConfig
) -> torch.Tensor:
    out = cond.float() + delta
    if config.alpha:
        out = out + config.alpha * band(delta, low=t > config.cfg_t0)
    return out.to(cond.dtype)


# ---------------------------------------------------------------------------- attention


class _Slot:
    __slots__ = ("calls", "a1", "a2")

    def __init__(self) -> None:
        self.calls = 0  # in-window calls of this module in this branch
        self.a1: Any = None  # last computed output
        self.a2: Any = None  # the one before

    def tensors(self):
        return base.iter_tensors((self.a1, self.a2))


def _extrapolate(a1: Any, a2: Any, w: float) -> Any:
    if isinstance(a1, tuple):
        return tuple(x1 + w * (x1 - x2) for x1, x2 in zip(a1, a2))
    return a1 + w * (a1 - a2)


class FasterAttentionHook(base.BranchHook):
    def __init__(
        self, states: base.BranchStates, key: str, kind: str, config: FasterCacheConfig
    ) -> None:
        super().__init__(states, key)
        self.kind, self.config = kind, config
        self.scale = StepScale(config.schedule_steps)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.states.get_state()
        info, config = state.info, self.config
        slot = state.slots.get(self.key)
        if slot is None:
            slot = state.slots[self.key] = _Slot()
        if base.in_window(info.t, config.attention_window):
            reuse = not due(slot.calls, self.scale.period(config.attention_range, info.num_steps))
            slot.calls += 1
            contiguous = state.last_run_step is not None and state.last_run_step == info.step - 1
            if reuse and contiguous and slot.a2 is not None:
                batch = base.batch_of(args, kwargs)
                a1, a2 = base.fit_batch(slot.a1, batch), base.fit_batch(slot.a2, batch)
                if a1 is not None and a2 is not None:
                    state.record.reuse_attention(self.kind)
                    return _extrapolate(a1, a2, config.attention_weight)
        else:
            slot.calls = 0
        out = self.fn_ref.original_forward(*args, **kwargs)
        slot.a2, slot.a1 = slot.a1, out
        return out


# ---------------------------------------------------------------------------- CFG-Cache


class FasterCacheState(base.BranchState):
    def __init__(self) -> None:
        super().__init__()
        self.cfg_calls = 0  # in-window forwards of this branch (uncond / cond_uncond)


class _CfgLink:
    """Shared between the branches of one transformer: cond's output of the current step (Wan)
    and the stored uncond - cond delta."""

    def __init__(self) -> None:
        self.cond_step: int | None = None
        self.cond_out: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None

    def tensors(self):
        return base.iter_tensors((self.cond_out, self.delta))


class FasterCacheForwardHook(base.TransformerHook):
    def __init__(self, *args: Any, config: FasterCacheConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.cfg = config.cfg_cache and self.layout.cfg_layout in ("separate", "batched")
        self.shared = _CfgLink()

    def reset_shared(self) -> None:
        self.shared = _CfgLink()

    def shared_tensors(self):
        return self.shared.tensors()

    def never_fired_hint(self) -> str:
        p = self.params
        return (
            f"no timestep fell inside attention_window {p['attention_window']}"
            + (f" or cfg_window {p['cfg_window']}" if self.cfg else "")
        )

    def run(self, module: torch.nn.Module, state: base.BranchState, args: tuple, kwargs: dict):
        info = state.info
        if not self.cfg or not base.in_window(info.t, self.config.cfg_window):
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.layout.cfg_layout == "separate":
            return self._run_separate(state, args, kwargs)
        if state.record.branches == 2:
            return self._run_batched(state, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def _reuse_now(self, state: FasterCacheState) -> bool:
        period = self.scale.period(self.config.cfg_range, state.info.num_steps)
        reuse = not due(state.cfg_calls, period) and self.shared.delta is not None
        state.cfg_calls += 1
        return reuse

    def _run_separate(self, state: FasterCacheState, args: tuple, kwargs: dict) -> Any:
        info, link = state.info, self.shared
        if info.branch != "uncond":
            out = self.fn_ref.original_forward(*args, **kwargs)
            if info.branch == "cond":
                link.cond_step, link.cond_out = info.step, base.sample_of(out)
            return out
        have_cond = link.cond_step == info.step and link.cond_out is not None
        cond, link.cond_out = link.cond_out, None
        if self._reuse_now(state) and have_cond:
            state.record.branches_run = 0
            state.record.action = "uncond synthesised"
            uncond = synthesise_uncond(cond, link.delta, info.t, self.config)
            return base.with_sample(None, uncond, self.arg("return_dict", args, kwargs, True))
        out = self.fn_ref.original_forward(*args, **kwargs)
        if have_cond:
            link.delta = base.sample_of(out).float() - cond.float()
        return out

    def _run_batched(self, state: FasterCacheState, args: tuple, kwargs: dict) -> Any:
        info, link = state.info, self.shared
        if not self._reuse_now(state):
            out = self.fn_ref.original_forward(*args, **kwargs)
            uncond, cond = base.sample_of(out).float().chunk(2)
            link.delta = uncond - cond
            return out
        state.record.branches_run = 1
        state.record.action = "cond only, uncond synthesised"
        args, kwargs = self._cond_half(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        cond = base.sample_of(out)
        uncond = synthesise_uncond(cond, link.delta, info.t, self.config)
        return base.with_sample(out, torch.cat([uncond, cond]))

    def _cond_half(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The batched inputs cut to their cond rows (the second half of [uncond, cond])."""
        batch = self.arg("hidden_states", args, kwargs).shape[0]

        def half(value: Any) -> Any:  # only inputs that really carry the [uncond, cond] batch
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
                return value[batch // 2 :]
            return value

        names = self.layout.batched_inputs
        args = tuple(
            half(v) if i < len(self._arg_names) and self._arg_names[i] in names else v
            for i, v in enumerate(args)
        )
        return args, {k: half(v) if k in names else v for k, v in kwargs.items()}


def apply_fastercache(
    transformer: torch.nn.Module,
    config: FasterCacheConfig,
    *,
    pipeline: base.PipelineLink | None = None,
) -> None:
    """Attach FasterCache: a hook per self-attention module, one on the transformer."""
    layout = base.layout_of(transformer)
    states = base.BranchStates(FasterCacheState)
    for key, module, kind in layout.attention_modules(transformer):
        if kind == "spatial":
            base.register(module, FasterAttentionHook(states, key, kind, config), "fastercache")
    warnings = []
    if config.cfg_cache and layout.cfg_layout == "distilled":
        warnings.append(
            f"fastercache: {layout.name} is guidance-distilled; only attention reuse applies"
        )
    top = FasterCacheForwardHook(
        "fastercache",
        states,
        layout,
        transformer,
        base.config_params(config),
        pipeline,
        needs_timestep=True,
        warnings=warnings,
        config=config,
    )
    base.attach(transformer, top)
