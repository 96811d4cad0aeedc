"""FasterCache (arXiv 2410.19355): attention extrapolation plus the CFG-Cache.

Two reuses, both schedule-only (no decision reads the device). Both follow the phase of the
official CogVideoX sample script, whose counter is the 1-based step ``c = step + 1``:

1. **Attention reuse.** Inside ``attention_window``, each self (spatial) attention module computes
   on the steps where ``(step + 1) % attention_range == 0``; on the others its output is
   extrapolated from the branch's last two *computed* outputs: ``A = A1 + w * (A1 - A2)``
   (``w = attention_weight``). Extrapolation needs two outputs computed without a gap: after a
   forward the branch did not run (a Wan uncond forward replaced by the CFG-Cache) the history is
   dropped and the next real forward computes. Cross attention is not touched (cheap, and the
   paper reuses self attention only). A cached output that cannot serve the rows of this forward
   (the cond-only half batch of a CogVideoX CFG-Cache step takes the cond rows of a full one; a
   full step cannot use a half one) is recomputed, as in the official script.
2. **CFG-Cache.** The difference between the branches' outputs, split into frequency bands, changes
   slowly. Every full step stores the delta ``D = uncond - cond`` of the transformer output (fp32);
   inside ``cfg_window``, on the steps where ``(step + 1) % cfg_range != 0``, only cond runs and
   uncond is rebuilt as ``IFFT(LF(cond) + w_lf LF(D) + HF(cond) + w_hf HF(D))``; LF is the centred
   disc of radius ``min(H, W) // 5`` of the 2-D FFT over each frame's H x W. The FFT is linear and
   LF + HF = identity, so this is ``cond + w_hf D + (w_lf - w_hf) LF(D)``: one real FFT of D, in fp32.
   The band weights (``band_weights``):

   * ``"constant"`` (the paper): ``w_lf = 1 + alpha [t > cfg_t0]``, ``w_hf = 1 + alpha [t <= cfg_t0]``;
   * ``"compound"`` (the official code, and diffusers' FasterCache): every reuse step multiplies the
     band's weight by ``band_growth`` while the step's timestep lies inside the band's window
     (``lf_window``, ``hf_window``), from 1 at the last full step: ``w = band_growth ** k``, ``k`` the
     reuse steps since the last full one that fell inside the window.

   The official CogVideoX script (2B, 50 steps) is, in these terms: attention and CFG reuse from
   step 17, ``attention_range = 3`` (2 of every 3 steps reused), ``w = 0.3``, ``cfg_range = 5``,
   compounding x1.1 with the low band up to step 39 and the high band from step 29; the
   ``cogvideox`` presets state exactly that on their own schedules.

How the CFG-Cache meets each family's CFG layout (ours; diffusers' version crashes on Wan):

* **Wan** runs cond and uncond as separate forwards ("cond" first, then "uncond"). The cond forward
  leaves its output in a per-transformer link (the only state shared between branches, and only
  within one step: the uncond forward checks the step index). On a reuse step the hook on the
  transformer returns the synthesised uncond output *without running the model*. Inside the CFG
  window the uncond branch therefore only runs its full steps, each after a skipped one: it can
  extrapolate no attention there, so it keeps attention outputs only where its next step lies in
  the attention window and outside the CFG window (with the attention window inside the CFG
  window, none at all: half of FasterCache's memory on Wan).
* **CogVideoX** runs one forward on [uncond, cond]. On a reuse step only the cond half of the
  batched inputs is run and the synthesised uncond half is concatenated in front.
* **HunyuanVideo** is guidance-distilled: only attention reuse applies (``cfg_cache`` is ignored).

``cfg_cache = false`` turns the CFG-Cache off on every family.

``attention_range`` and ``cfg_range`` are reuse periods stated for ``schedule_steps`` steps; a run
with another step count stretches them (fractional periods allowed: a step computes when
``due(step + 1, period)``, which for an integer period is the official ``(step + 1) % range == 0``);
windows and ``cfg_t0`` are timesteps and need no stretch (``caches/steps.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import base
from .steps import StepScale, check_period, check_schedule_steps, due

BAND_WEIGHTS = ("constant", "compound")


@dataclass
class FasterCacheConfig:
    attention_range: float = 2
    attention_window: tuple[float, float] = (-1.0, 681.0)
    attention_weight: float = 0.5
    cfg_cache: bool = True
    cfg_range: float = 5
    cfg_window: tuple[float, float] = (-1.0, 641.0)
    band_weights: str = "constant"
    alpha: float = 0.2
    cfg_t0: float = 300.0
    band_growth: float = 1.1
    lf_window: tuple[float, float] = (99.0, 901.0)  # diffusers' defaults for the compounding rule
    hf_window: tuple[float, float] = (-1.0, 301.0)
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        check_period("attention_range", self.attention_range)
        check_period("cfg_range", self.cfg_range)
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        for name in ("attention_window", "cfg_window", "lf_window", "hf_window"):
            setattr(self, name, base.check_window(name, getattr(self, name)))
        for name in ("attention_weight", "alpha", "cfg_t0", "band_growth"):
            setattr(self, name, base.check_float(name, getattr(self, name)))
        base.check_bool("cfg_cache", self.cfg_cache)
        if self.band_weights not in BAND_WEIGHTS:
            raise ValueError(f"'band_weights' must be one of {', '.join(BAND_WEIGHTS)}, got {self.band_weights!r}")


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


def band_weights(config: FasterCacheConfig, t: float, k_lf: int, k_hf: int) -> tuple[float, float]:
    """(w_lf, w_hf) for a reuse step at timestep ``t``; ``k_lf`` / ``k_hf``: the reuse steps since the
    last full one (this one included) whose timestep fell inside ``lf_window`` / ``hf_window``."""
    if config.band_weights == "compound":
        return config.band_growth**k_lf, config.band_growth**k_hf
    early = t > config.cfg_t0
    return 1.0 + config.alpha * early, 1.0 + config.alpha * (not early)


def synthesise_uncond(cond: torch.Tensor, delta: torch.Tensor, w_lf: float, w_hf: float) -> torch.Tensor:
    """``IFFT(LF(cond) + w_lf LF(D) + HF(cond) + w_hf HF(D)) = cond + w_hf D + (w_lf - w_hf) LF(D)``."""
    out = cond.float() + w_hf * delta
    if w_lf != w_hf:
        out = out + (w_lf - w_hf) * band(delta, low=True)
    return out.to(cond.dtype)


# ---------------------------------------------------------------------------- attention


class _Slot:
    __slots__ = ("a1", "a2")

    def __init__(self) -> None:
        self.a1: Any = None  # last computed output
        self.a2: Any = None  # the one before

    def tensors(self):
        return base.iter_tensors((self.a1, self.a2))


def reuse_step(info: base.StepInfo, window: tuple[float, float], period: float, scale: StepScale) -> bool:
    """The official script's rule for both reuses: inside ``window``, every step whose 1-based
    counter ``step + 1`` is not due for the period as it runs at this step count."""
    return base.in_window(info.t, window) and not due(info.step + 1, scale.period(period, info.num_steps))


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
        if state.last_run_step is None or state.last_run_step != info.step - 1:
            slot.a1 = slot.a2 = None  # a gap (or the first forward): the history is stale
        reuse = reuse_step(info, config.attention_window, config.attention_range, self.scale)
        if reuse and slot.a2 is not None:
            batch = base.batch_of(args, kwargs)
            a1, a2 = base.fit_batch(slot.a1, batch), base.fit_batch(slot.a2, batch)
            if a1 is not None and a2 is not None:
                state.record.reuse_attention(self.kind)
                return _extrapolate(a1, a2, config.attention_weight)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if state.keep_attention:
            slot.a2, slot.a1 = slot.a1, out
        else:
            slot.a1 = slot.a2 = None
        return out


# ---------------------------------------------------------------------------- CFG-Cache


class FasterCacheState(base.BranchState):
    def __init__(self) -> None:
        super().__init__()
        self.keep_attention = True  # this forward's attention outputs can serve a later one


class _CfgLink:
    """Shared between the branches of one transformer: cond's output of the current step (Wan),
    the stored uncond - cond delta and the reuse steps counted for the band weights since."""

    def __init__(self) -> None:
        self.cond_step: int | None = None
        self.cond_out: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.k_lf = self.k_hf = 0

    def refresh(self, delta: torch.Tensor) -> None:
        self.delta, self.k_lf, self.k_hf = delta, 0, 0

    def tensors(self):
        return base.iter_tensors((self.cond_out, self.delta))


class FasterCacheForwardHook(base.TransformerHook):
    def __init__(self, *args: Any, config: FasterCacheConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.scale = StepScale(config.schedule_steps)
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

    def run(self, module: torch.nn.Module, state: FasterCacheState, args: tuple, kwargs: dict):
        state.keep_attention = self._keeps_attention(state.info)
        if not self.cfg:
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.layout.cfg_layout == "separate":
            return self._run_separate(state, args, kwargs)
        if state.record.branches == 2:
            return self._run_batched(state, args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def synthesised(self, info: base.StepInfo) -> bool:
        """The CFG-Cache rebuilds uncond at this step (given a stored delta): schedule only."""
        return reuse_step(info, self.config.cfg_window, self.config.cfg_range, self.scale)

    def _keeps_attention(self, info: base.StepInfo) -> bool:
        """Wan's uncond attention outputs are kept only where its next forward can extrapolate from
        them: a next step inside the attention window and outside the CFG window (module docstring)."""
        if not (self.cfg and self.layout.cfg_layout == "separate" and info.branch == "uncond"):
            return True
        ts = self.host_timesteps()
        if ts is None:  # no schedule known (a bare transformer): keep, as before
            return True
        if info.step + 1 >= len(ts):
            return False
        t = ts[info.step + 1]
        return base.in_window(t, self.config.attention_window) and not base.in_window(t, self.config.cfg_window)

    def _uncond(self, cond: torch.Tensor, t: float) -> torch.Tensor:
        link, config = self.shared, self.config
        link.k_lf += base.in_window(t, config.lf_window)
        link.k_hf += base.in_window(t, config.hf_window)
        return synthesise_uncond(cond, link.delta, *band_weights(config, t, link.k_lf, link.k_hf))

    def _run_separate(self, state: FasterCacheState, args: tuple, kwargs: dict) -> Any:
        info, link = state.info, self.shared
        if info.branch != "uncond":
            out = self.fn_ref.original_forward(*args, **kwargs)
            if info.branch == "cond":
                link.cond_step, link.cond_out = info.step, base.sample_of(out)
            return out
        have_cond = link.cond_step == info.step and link.cond_out is not None
        cond, link.cond_out = link.cond_out, None
        if have_cond and link.delta is not None and self.synthesised(info):
            state.record.branches_run = 0
            state.record.action = "uncond synthesised"
            return base.with_sample(None, self._uncond(cond, info.t), self.arg("return_dict", args, kwargs, True))
        out = self.fn_ref.original_forward(*args, **kwargs)
        if have_cond:
            link.refresh(base.sample_of(out).float() - cond.float())
        return out

    def _run_batched(self, state: FasterCacheState, args: tuple, kwargs: dict) -> Any:
        info, link = state.info, self.shared
        if link.delta is None or not self.synthesised(info):
            out = self.fn_ref.original_forward(*args, **kwargs)
            uncond, cond = base.sample_of(out).float().chunk(2)
            link.refresh(uncond - cond)
            return out
        state.record.branches_run = 1
        state.record.action = "cond only, uncond synthesised"
        args, kwargs = self.cond_half(args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        cond = base.sample_of(out)
        return base.with_sample(out, torch.cat([self._uncond(cond, info.t), cond]))


def uncond_keeps_attention(params: dict[str, Any]) -> bool:
    """Whether Wan's uncond branch ever keeps attention outputs under these (effective) parameters:
    only when some step of the attention window lies outside the CFG window (for the memory
    estimate; ``FasterCacheForwardHook._keeps_attention`` decides per forward)."""
    known = {k: v for k, v in params.items() if k in base.config_fields(FasterCacheConfig)}
    config = FasterCacheConfig(**known)
    (a_lo, a_hi), (c_lo, c_hi) = config.attention_window, config.cfg_window
    return not (config.cfg_cache and c_lo <= a_lo and a_hi <= c_hi)


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
