"""PAB, Pyramid Attention Broadcast (arXiv 2408.12588): reuse attention outputs inside a window.

Attention outputs change little between neighbouring steps in the middle of denoising, and the
less the more "global" the attention: PAB recomputes self (spatial) attention every ``r_s`` calls,
temporal every ``r_t`` and cross attention every ``r_c`` calls (the pyramid ``r_s < r_t < r_c``),
and broadcasts (reuses) the last computed output in between. Norms, modulation, gates and MLPs
always run: only the attention module's output (after its output projection, before gate and
residual) is cached.

Rule, per attention module and per branch, as VideoSys (PAB's official code) runs it: the module's
call counter ``c`` counts every call of this branch in the video (0 on the first), inside the
window or not; reuse iff the timestep is inside the kind's window ``lo < t < hi``, ``c % r != 0``
and a cached output of the right batch exists; otherwise compute and store (also outside the
window, so that a window opening on a reuse call has its output: one output per module, the
peak is the same).

What is ours (the paper and its code were written for models with a separate temporal attention,
and diffusers' implementation shares one counter and one cache between the CFG branches):

* State is per branch: Wan's uncond forward only ever reuses attention computed by an earlier
  uncond forward, never the cond forward's (diffusers' PAB hands cond's output to uncond).
* None of Wan, CogVideoX and HunyuanVideo has a temporal attention: their self attention spans
  all video tokens (CogVideoX and HunyuanVideo jointly with the text tokens, in HunyuanVideo's
  dual-stream and single-stream blocks alike). All of it is "spatial"; Wan's ``attn2`` is the only
  cross attention. ``temporal_*`` parameters are accepted for the pyramid's sake and apply to no
  module of these families.
* Windows are timesteps; the presets choose them against each model's real schedule (see
  ``docs/caches.md``). Schedule-only: no decision reads the device.
* Ranges are reuse periods stated for ``schedule_steps`` steps; a run with another step count
  stretches them (fractional periods allowed: ``caches/steps.py``), so a preset keeps its trade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import base
from .steps import StepScale, check_period, check_schedule_steps, due


@dataclass
class PABConfig:
    """Broadcast ranges (recompute every r-th call; 1 = never reuse; fractions allowed) and windows
    ``[lo, hi]``; ``schedule_steps``: the step count the ranges are stated for."""

    spatial_range: float = 2
    spatial_window: tuple[float, float] = (100.0, 800.0)
    temporal_range: float = 4
    temporal_window: tuple[float, float] = (100.0, 800.0)
    cross_range: float = 6
    cross_window: tuple[float, float] = (100.0, 800.0)
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        for kind in base.ATTENTION_KINDS:
            check_period(f"{kind}_range", getattr(self, f"{kind}_range"))
            name = f"{kind}_window"
            setattr(self, name, base.check_window(name, getattr(self, name)))

    def rule(self, kind: str) -> tuple[float, tuple[float, float]]:
        return getattr(self, f"{kind}_range"), getattr(self, f"{kind}_window")


class _Slot:
    __slots__ = ("calls", "output")

    def __init__(self) -> None:
        self.calls = 0  # calls of this module in this branch and video (VideoSys' count)
        self.output: Any = None

    def tensors(self):
        return base.iter_tensors(self.output)


class PABAttentionHook(base.BranchHook):
    """On one attention module: broadcast its output per the rule above."""

    def __init__(
        self,
        states: base.BranchStates,
        key: str,
        kind: str,
        every: float,
        window: tuple[float, float],
        scale: StepScale = StepScale(None),
    ) -> None:
        super().__init__(states, key)
        self.kind, self.every, self.window, self.scale = kind, every, window, scale

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.states.get_state()
        slot = state.slots.get(self.key)
        if slot is None:
            slot = state.slots[self.key] = _Slot()
        reuse = base.in_window(state.info.t, self.window) and not due(
            slot.calls, self.scale.period(self.every, state.info.num_steps))
        slot.calls += 1
        if reuse:
            cached = base.fit_batch(slot.output, base.batch_of(args, kwargs))
            if cached is not None:
                state.record.reuse_attention(self.kind)
                return cached
        slot.output = self.fn_ref.original_forward(*args, **kwargs)
        return slot.output


class PABForwardHook(base.TransformerHook):
    def never_fired_hint(self) -> str:
        p = self.params
        return (
            f"no step's timestep fell inside spatial_window {p['spatial_window']} / cross_window "
            f"{p['cross_window']} with a range > 1"
        )


def apply_pab(
    transformer: torch.nn.Module, config: PABConfig, *, pipeline: base.PipelineLink | None = None
) -> None:
    """Attach PAB to ``transformer`` (one hook per attention module, one on the transformer)."""
    layout = base.layout_of(transformer)
    states = base.BranchStates(base.BranchState)
    scale = StepScale(config.schedule_steps)
    for key, module, kind in layout.attention_modules(transformer):
        every, window = config.rule(kind)
        base.register(module, PABAttentionHook(states, key, kind, every, window, scale), "pab")
    params = base.config_params(config)
    top = PABForwardHook("pab", states, layout, transformer, params, pipeline, needs_timestep=True)
    base.attach(transformer, top)
