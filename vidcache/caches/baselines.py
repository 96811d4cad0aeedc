"""diffusers' own caches as baselines: First Block Cache, TaylorSeer and MagCache.

Why: so that users and ``vidcache bench`` can compare our methods against diffusers' in one run. The
caching itself is diffusers' code (``apply_first_block_cache``, ``apply_taylorseer_cache``,
``apply_mag_cache`` with their config classes); vidcache adds only what each needs to work on Wan,
CogVideoX and HunyuanVideo and to be measured like our methods. In reports they are named
``diffusers-fbcache``, ``diffusers-taylorseer`` and ``diffusers-magcache`` (``cache.stats.method``),
and ``--cache`` accepts both spellings.

What vidcache adds around them:

* **Settings that fire, per family** (used when a preset gives none; the presets state them):
  - FBCache thresholds from METHODS.md: Wan 0.03, CogVideoX 0.04, HunyuanVideo 0.06 (diffusers'
    default 0.05 often never fires on Wan).
  - TaylorSeer: diffusers' default identifiers (``^blocks.*attn`` ...) must match a module name
    *ending* in ``attn``; Wan's ``attn1``/``attn2`` and CogVideoX's ``attn1`` match none, so nothing is
    hooked. We hook whole blocks (``mode = "blocks"``: ``^blocks\\.\\d+$`` on Wan,
    ``^transformer_blocks\\.\\d+$`` on CogVideoX, both block lists on HunyuanVideo): on a predicted
    step every block's output is its first-order Taylor forecast, so no block runs. ``mode = "lite"``
    is diffusers' lite variant (blocks return zeros, ``proj_out`` is forecast): the same compute,
    far less memory, a forecast of the final output instead of the last block's. ``identifiers``
    overrides both. Factors are kept in the transformer's dtype unless ``factors_dtype`` says
    otherwise (diffusers' default bf16 would quantise an fp32 model's forecasts).
  - MagCache needs per-model magnitude ratios. We ship none (the official ones were measured on the
    original Wan code, interleaving cond/uncond, at other shifts); instead, when a preset gives no
    ``mag_ratios``, the **first video** of a run is diffusers' calibration mode (no skipping; every
    step's mean residual-norm ratio recorded per branch), and later videos use the ratios measured
    there (the branches' ratios averaged step by step; the official code keeps one list per branch,
    diffusers one for all). The ratios are remembered for the loaded transformer (a weak reference:
    later attachments to it in this process, e.g. ``vidcache bench``'s alternating runs, start
    calibrated). ``cache.params.mag_ratios_source`` says where the ratios came from. Ratios
    are interpolated (diffusers' nearest) to each run's step count, and the step index comes from
    vidcache's clock, so Wan 2.2's second expert reads the ratios of the steps it really runs.
* **Per-branch state**: all three keep their state in a diffusers ``StateManager`` keyed by the
  cache context, so Wan's cond and uncond are kept apart.
* **Rank agreement**: FBCache's skip decision is data-dependent; the head hook's decision function
  is replaced, on the instance, by the same rule (``mean|r - r_prev| / mean|r_prev| > threshold``)
  read through ``base.agreed_values`` (an unreduced per-rank decision deadlocks context parallelism).
  TaylorSeer's and MagCache's decisions are schedule-only (counters and fixed ratios).
* **Statistics**: a light hook on every block, registered *inside* diffusers' (so it only fires when
  the block really runs), counts executed blocks per forward; ``compute_ratio`` is therefore what
  ran, not what the method believes. Memory: the tensors held in diffusers' states.
* **Lifecycle**: state reset before every video (keeping the current cache context), and removal
  through vidcache's ``remove_cache`` (diffusers' hooks are removed first, then ours).
"""

from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_mag_cache,
    apply_taylorseer_cache,
)
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.hooks import StateManager
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK, nearest_interp
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

from . import base
from ._partial import block_attention_kinds, mark_partial
from .steps import StepScale, check_schedule_steps

# transformer -> magnitude ratios calibrated on it in this process (so that ``vidcache bench``, which
# re-attaches the cache for every paired run, calibrates once per loaded model, not every time)
_CALIBRATED: weakref.WeakKeyDictionary[torch.nn.Module, list[float]] = weakref.WeakKeyDictionary()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------- configs


@dataclass
class FBCacheConfig:
    """``threshold`` absent: the family's (Wan 0.03, CogVideoX 0.04, HunyuanVideo 0.06); stated for
    ``schedule_steps`` steps (a change since the last compute, ``~ m / N``: ``caches/steps.py``)."""

    threshold: float | None = None
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        if self.threshold is not None:
            self.threshold = base.check_float("threshold", self.threshold)


@dataclass
class TaylorSeerConfig:
    """diffusers' ``TaylorSeerCacheConfig`` plus how to pick the hooked modules (``mode``:
    "blocks" or "lite"; ``identifiers``: regexes replacing both) and ``factors_dtype`` ("model",
    "float32", "bfloat16", "float16"). ``disable_cache_after_step`` absent: never. The three step
    counts are stated for ``schedule_steps`` steps and follow the run's (``caches/steps.py``)."""

    cache_interval: int = 5
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    max_order: int = 1
    mode: str = "blocks"
    identifiers: list | None = None
    factors_dtype: str = "model"
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        base.check_int("cache_interval", self.cache_interval, 1)
        base.check_int("disable_cache_before_step", self.disable_cache_before_step, 0)
        if self.disable_cache_after_step is not None:
            base.check_int("disable_cache_after_step", self.disable_cache_after_step, 0)
        base.check_int("max_order", self.max_order, 0)
        if self.mode not in ("blocks", "lite"):
            raise ValueError(f"'mode' must be \"blocks\" or \"lite\", got {self.mode!r}")
        if self.identifiers is not None:
            if not isinstance(self.identifiers, (list, tuple)) or not all(isinstance(i, str) for i in self.identifiers):
                raise ValueError("'identifiers' must be a list of regular expressions")
            for pattern in self.identifiers:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"'identifiers': bad regular expression {pattern!r} ({err})") from None
            self.identifiers = list(self.identifiers)
        if self.factors_dtype != "model" and self.factors_dtype not in _DTYPES:
            raise ValueError(f"'factors_dtype' must be one of model, {', '.join(_DTYPES)}; got {self.factors_dtype!r}")


@dataclass
class MagCacheBaselineConfig:
    """diffusers' ``MagCacheConfig``; ``mag_ratios`` absent: calibrated on the run's first video.
    ``max_skip_steps`` and ``threshold`` are stated for ``schedule_steps`` steps and follow the run's."""

    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2
    mag_ratios: list | None = None
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        self.threshold = base.check_float("threshold", self.threshold)
        base.check_int("max_skip_steps", self.max_skip_steps, 0)
        self.retention_ratio = base.check_float("retention_ratio", self.retention_ratio)
        if self.mag_ratios is not None:
            if not isinstance(self.mag_ratios, (list, tuple)) or not self.mag_ratios:
                raise ValueError("'mag_ratios' must be a non-empty list of numbers")
            self.mag_ratios = [base.check_float("mag_ratios", v) for v in self.mag_ratios]


# ---------------------------------------------------------------------------- shared machinery


class CountHook(base.BranchHook):
    """Inside diffusers' hook on a block: fires only when the block really runs."""

    _is_stateful = False

    def __init__(self, states: base.BranchStates, key: str, index: int) -> None:
        super().__init__(states, key)
        self.index = index

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.states.get_state()
        if state.record is not None:
            state.ran.add(self.index)
        return self.fn_ref.original_forward(*args, **kwargs)


class CountState(base.BranchState):
    def __init__(self) -> None:
        super().__init__()
        self.ran: set[int] = set()


class BaselineHook(base.TransformerHook):
    """Clock and statistics around one of diffusers' caches; resets and removes its hooks."""

    hook_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, transformer: torch.nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transformer = transformer
        self.block_kinds = block_attention_kinds(self.layout, transformer)

    def diffusers_hooks(self) -> list[tuple[torch.nn.Module, base.ModelHook]]:
        out = []
        for _, module in self.transformer.named_modules():
            registry = getattr(module, "_diffusers_hook", None)
            for name in self.hook_names:
                hook = registry.get_hook(name) if registry is not None else None
                if hook is not None:
                    out.append((module, hook))
        return out

    def state_managers(self) -> list[StateManager]:
        seen, out = set(), []
        for _, hook in self.diffusers_hooks():
            for value in vars(hook).values():
                if isinstance(value, StateManager) and id(value) not in seen:
                    seen.add(id(value))
                    out.append(value)
        return out

    def reset_shared(self) -> None:
        """Reset diffusers' states too, keeping the cache context the pipeline has set."""
        for manager in self.state_managers():
            context = manager._context
            manager.reset()
            manager.set_context(context)

    def shared_tensors(self):
        for manager in self.state_managers():
            for state in manager._state_cache.values():
                yield from base.iter_tensors([v for v in vars(state).values() if _holds_tensors(v)])

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        """Removed by ``remove_cache``: take diffusers' hooks off first (they wrap ours)."""
        for sub in self.transformer.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for name in self.hook_names:
                    registry.remove_hook(name, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()
        return module

    def run(self, module: torch.nn.Module, state: CountState, args: tuple, kwargs: dict) -> Any:
        state.ran = set()
        bare = [m for m in self.state_managers() if m._context is None]
        for manager in bare:  # a bare transformer call: diffusers' states get our default branch
            manager.set_context(self.states.context)
        try:
            self.before(state)
            out = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            for manager in bare:
                manager.set_context(None)
        reused = [i for i in range(self.n_blocks) if i not in state.ran]
        if len(reused) == self.n_blocks:
            state.record.blocks_skipped = True
            state.record.action = "blocks skipped"
        elif reused:
            mark_partial(state.record, len(reused), [self.block_kinds[i] for i in reused])
            state.record.action = f"{len(reused)}/{self.n_blocks} blocks reused"
        self.after(state)
        state.ran = set()
        return out

    def before(self, state: CountState) -> None:
        """Per-method preparation of a forward."""

    def after(self, state: CountState) -> None:
        """Per-method bookkeeping after a forward."""


def _holds_tensors(value: Any) -> bool:
    if torch.is_tensor(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    return False


def _count_blocks(transformer: torch.nn.Module, layout: base.Layout, states: base.BranchStates) -> None:
    for i, (key, block) in enumerate(layout.blocks(transformer)):
        base.register(block, CountHook(states, key, i), "count")


def _attach(
    cls: type[BaselineHook],
    method: str,
    transformer: torch.nn.Module,
    layout: base.Layout,
    states: base.BranchStates,
    params: dict[str, Any],
    pipeline: base.PipelineLink | None,
    **kwargs: Any,
) -> BaselineHook:
    top = cls(method, states, layout, transformer, params, pipeline, transformer=transformer, **kwargs)
    base.attach(transformer, top)
    return top


# ---------------------------------------------------------------------------- First Block Cache


class FBCacheHook(BaselineHook):
    hook_names = (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)
    branch_local = True  # diffusers' StateManager: one state per cache context

    def never_fired_hint(self) -> str:
        return f"threshold {self.params['threshold']} is below every first-block residual change; raise it"


def _agreed_fbc_decision(hook: Any, states: base.BranchStates, scale: StepScale):
    """diffusers' FBCache rule, with its two means read through the rank-agreement function and its
    threshold following the run's step count."""

    @torch.compiler.disable
    def should_compute(residual: torch.Tensor) -> bool:
        prev = hook.state_manager.get_state().head_block_residual
        if prev is None:
            return True
        num, den = base.agreed_values(
            torch.stack([(residual.float() - prev.float()).abs().sum(), prev.float().abs().sum()])
        )
        diff = num / den if den > 0 else math.inf
        state = states.get_state()
        if state.record is not None:
            state.record.detail = {"rel_l1": diff}
        steps = state.info.num_steps if state.info is not None else None
        return diff > scale.threshold(hook.threshold, steps)

    return should_compute


def apply_fbcache(
    transformer: torch.nn.Module, config: FBCacheConfig, *, pipeline: base.PipelineLink | None = None
) -> None:
    """diffusers' First Block Cache on ``transformer``, with the family's threshold when none is set."""
    layout = base.layout_of(transformer)
    threshold = layout.fbcache_threshold if config.threshold is None else config.threshold
    states = base.BranchStates(CountState)
    _count_blocks(transformer, layout, states)
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
    head = layout.blocks(transformer)[0][1]
    leader = head._diffusers_hook.get_hook(_FBC_LEADER_BLOCK_HOOK)
    leader._should_compute_remaining_blocks = _agreed_fbc_decision(leader, states, StepScale(config.schedule_steps))
    params = {"implementation": "diffusers.hooks.apply_first_block_cache", "threshold": threshold,
              "schedule_steps": config.schedule_steps}
    _attach(FBCacheHook, "diffusers-fbcache", transformer, layout, states, params, pipeline)


# ---------------------------------------------------------------------------- TaylorSeer


def taylorseer_identifiers(layout: base.Layout) -> list[str]:
    """Regexes (``re.fullmatch`` on module names) for every block of the family's stack."""
    return [rf"^{re.escape(name)}\.\d+$" for name in layout.block_lists]


class TaylorSeerHook(BaselineHook):
    hook_names = (_TAYLORSEER_CACHE_HOOK,)
    branch_local = True  # diffusers' StateManager per hooked module: one state per cache context

    def never_fired_hint(self) -> str:
        p = self.params
        return (
            f"the run is too short for cache_interval {p['cache_interval']} after "
            f"disable_cache_before_step {p['disable_cache_before_step']}"
        )

    def __init__(self, *args: Any, config: TaylorSeerConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.configured_for: int | None = None

    def before(self, state: CountState) -> None:
        """diffusers' hooks hold the counts: set them for this run's step count."""
        steps = state.info.num_steps
        if steps == self.configured_for:
            return
        self.configured_for = steps
        c, scale = self.config, self.scale
        after = c.disable_cache_after_step
        if after is not None and c.schedule_steps is not None and steps:
            after = steps - scale.forced(max(0, c.schedule_steps - after), steps)
        for _, hook in self.diffusers_hooks():
            hook.cache_interval = scale.cap(c.cache_interval, steps)
            hook.disable_cache_before_step = scale.forced(c.disable_cache_before_step, steps)
            hook.disable_cache_after_step = after


def apply_taylorseer(
    transformer: torch.nn.Module, config: TaylorSeerConfig, *, pipeline: base.PipelineLink | None = None
) -> None:
    """diffusers' TaylorSeer on ``transformer``, hooking modules that exist in this family."""
    layout = base.layout_of(transformer)
    dtype = transformer.dtype if config.factors_dtype == "model" else _DTYPES[config.factors_dtype]
    states = base.BranchStates(CountState)
    _count_blocks(transformer, layout, states)
    if config.identifiers is not None:
        cache_ids, skip_ids = config.identifiers, None
    elif config.mode == "lite":  # diffusers' lite patterns: blocks inactive, proj_out forecast
        cache_ids, skip_ids = None, None
    else:
        cache_ids, skip_ids = taylorseer_identifiers(layout), None
    ts_config = TaylorSeerCacheConfig(
        cache_interval=config.cache_interval,
        disable_cache_before_step=config.disable_cache_before_step,
        disable_cache_after_step=config.disable_cache_after_step,
        max_order=config.max_order,
        taylor_factors_dtype=dtype,
        skip_predict_identifiers=skip_ids,
        cache_identifiers=cache_ids,
        use_lite_mode=config.mode == "lite" and config.identifiers is None,
    )
    apply_taylorseer_cache(transformer, ts_config)
    hooked = [
        name for name, m in transformer.named_modules()
        if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(_TAYLORSEER_CACHE_HOOK)
    ]
    if not hooked:
        raise base.CacheError(
            f"taylorseer: identifiers {config.identifiers} match no module of this {layout.name} transformer")
    params = {
        "implementation": "diffusers.hooks.apply_taylorseer_cache",
        **base.config_params(config),
        "factors_dtype": str(dtype).removeprefix("torch."),
        "hooked_modules": len(hooked),
    }
    if config.identifiers is None and config.mode == "blocks":
        params["identifiers"] = cache_ids
    _attach(TaylorSeerHook, "diffusers-taylorseer", transformer, layout, states, params, pipeline, config=config)


# ---------------------------------------------------------------------------- MagCache


class MagCacheHook(BaselineHook):
    """Sets diffusers' MagCache up for each video's step count; calibrates on the first video."""

    hook_names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
    branch_local = False  # the calibration averages both branches' ratios

    def __init__(self, *args: Any, mag: MagCacheConfig, ratios: list[float] | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mag = mag  # the config object diffusers' hooks hold: set up in place per video
        self.stated = (mag.max_skip_steps, mag.threshold)  # as stated, for ``schedule_steps`` steps
        self.ratios = ratios
        earlier = _CALIBRATED.get(self.transformer) if ratios is None else None
        self.videos = 0
        self.calibrating = False
        self.calibrated_last = False  # the last video was a calibration video (for the hint)
        self.seen: dict[str, list[int]] = {}  # branch -> steps recorded while calibrating
        self.configured_for: int | None = None
        self.params["mag_ratios_source"] = "preset" if ratios is not None else "calibrated on the first video"
        if earlier is not None:
            self.ratios = earlier
            self.params.update(mag_ratios=earlier, mag_ratios_source="calibrated earlier in this process")

    def never_fired_hint(self) -> str:
        if self.calibrated_last:
            return "this video calibrated the magnitude ratios (diffusers' calibration mode never skips)"
        return f"threshold {self.params['threshold']} is below every accumulated ratio error; raise it"

    def reset_shared(self) -> None:
        self._harvest()
        super().reset_shared()
        self.seen = {}
        self.configured_for = None

    def _harvest(self) -> None:
        """After a calibration video: the branches' ratios, averaged step by step."""
        if not self.calibrating or not self.seen:
            return
        per_step: dict[int, list[float]] = {}
        for manager in self.state_managers():
            for branch, state in manager._state_cache.items():
                for step, ratio in zip(self.seen.get(branch, []), state.calibration_ratios):
                    per_step.setdefault(step, []).append(float(ratio))
        n = self.configured_for
        if n and per_step:
            # steps this transformer never ran (the other expert's, on Wan 2.2 A14B) keep 1.0
            self.ratios = [round(sum(per_step[i]) / len(per_step[i]), 5) if i in per_step else 1.0 for i in range(n)]
            self.ratios[min(per_step)] = 1.0  # nothing to compare the first residual with
            self.calibrating = False
            _CALIBRATED[self.transformer] = self.ratios
            self.params["mag_ratios_source"] = f"calibrated on video {self.videos}"
            self.params["mag_ratios"] = self.ratios

    def _configure(self, steps: int) -> None:
        self.videos += 1
        self.mag.max_skip_steps = self.scale.cap(self.stated[0], steps)
        self.mag.threshold = self.scale.threshold(self.stated[1], steps, 2, 1)  # error ~ m^2 / N
        self.configured_for = steps
        self.calibrating = self.calibrated_last = self.ratios is None
        self.mag.calibrate = self.calibrating
        if self.calibrating:
            # never reach diffusers' end-of-run branch (it prints and clears the ratios)
            self.mag.num_inference_steps = steps + 1
            self.mag.mag_ratios = None
        else:
            self.mag.num_inference_steps = steps
            self.mag.mag_ratios = nearest_interp(torch.tensor(self.ratios, dtype=torch.float32), steps)

    def before(self, state: CountState) -> None:
        info = state.info
        steps = info.num_steps
        if steps is None:
            raise base.CacheError("magcache: the step count is unknown (run it inside a diffusers pipeline)")
        if self.configured_for != steps:
            self._configure(steps)
        for manager in self.state_managers():
            if manager._context is not None:
                manager.get_state().step_index = info.step  # vidcache's clock: right for each expert
        if self.calibrating:
            self.seen.setdefault(info.branch, []).append(info.step)
            state.record.detail = {"magcache": "calibrating"}


def apply_magcache(
    transformer: torch.nn.Module, config: MagCacheBaselineConfig, *, pipeline: base.PipelineLink | None = None
) -> None:
    """diffusers' MagCache on ``transformer`` (ratios from the preset, or calibrated on video 1)."""
    layout = base.layout_of(transformer)
    states = base.BranchStates(CountState)
    _count_blocks(transformer, layout, states)
    mag = MagCacheConfig(
        threshold=config.threshold,
        max_skip_steps=config.max_skip_steps,
        retention_ratio=config.retention_ratio,
        calibrate=True,  # replaced per video by MagCacheHook._configure
    )
    apply_mag_cache(transformer, mag)
    params = {"implementation": "diffusers.hooks.apply_mag_cache", **base.config_params(config)}
    _attach(
        MagCacheHook, "diffusers-magcache", transformer, layout, states, params, pipeline,
        needs_timestep=False, mag=mag, ratios=config.mag_ratios,
    )
