"""diffusers' own caches as baselines: First Block Cache, TaylorSeer, MagCache and SeaCache.

Why: so that users and ``vidcache bench`` can compare our methods against diffusers' in one run. The
caching itself is diffusers' code (``apply_first_block_cache``, ``apply_taylorseer_cache``,
``apply_mag_cache``, ``apply_sea_cache`` with their config classes); vidcache adds only what each
needs to work on Wan, CogVideoX and HunyuanVideo and to be measured like our methods. In reports
they are named ``diffusers-fbcache``, ``diffusers-taylorseer``, ``diffusers-magcache`` and
``diffusers-seacache`` (``cache.stats.method``), and ``--cache`` accepts both spellings.

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
  - SeaCache (arXiv 2602.18993) compares a spectrally filtered copy of the transformer's input
    latent between steps and skips the block stack while the accumulated relative L1 stays under
    ``threshold``, adding the last residual extrapolated to first order. diffusers ships an
    adapter for Wan text-to-video only and needs the pipeline to pass ``step_index``, ``sigma``
    and ``num_inference_steps`` to ``cache_context``, which only Wan's pipeline does: on CogVideoX
    and HunyuanVideo it would silently run every step ("fail-open"). vidcache gives it (a) the
    latent to filter through the adapter (the first ``out_channels`` channels of ``hidden_states``,
    as (C, T, H, W) per batch row: any family, image-to-video's condition channels left out) and
    (b) the missing context fields from its clock: the step, the step count and the noise level
    ``sigma`` of the flow interpolant ``x = (1 - sigma) x0 + sigma eps``, which is ``t / 1000`` for
    flow-matching schedulers and ``sqrt(1 - a) / (sqrt(a) + sqrt(1 - a))`` (``a`` = alphas_cumprod
    at ``t``) for a VP scheduler such as CogVideoX's DDIM, the same interpolant after dividing by
    ``sqrt(a) + sqrt(1 - a)``.
* **Per-branch state**: all four keep their state in a diffusers ``StateManager`` keyed by the
  cache context, so Wan's cond and uncond are kept apart.
* **Rank agreement**: FBCache's skip decision is data-dependent; the head hook's decision function
  is replaced, on the instance, by the same rule (``mean|r - r_prev| / mean|r_prev| > threshold``)
  read through ``base.agreed_values`` (an unreduced per-rank decision deadlocks context parallelism).
  SeaCache's gate reads one distance per batch row to the host (``.cpu()``) on every rank; its
  gate is replaced, on the instance, by the same rule with the distances read through
  ``base.agreed_values`` in one call, and its indicator by the same filter without the host read
  diffusers' filter makes on the way (``sea_indicator``): one host read per forward instead of
  three per batch row.
  TaylorSeer's and MagCache's decisions are schedule-only (counters and fixed ratios).
* **Statistics**: a light hook on every block, registered *inside* diffusers' (so it only fires when
  the block really runs), counts executed blocks per forward; ``compute_ratio`` is therefore what
  ran, not what the method believes. Memory: the tensors held in diffusers' states.
* **Lifecycle**: state reset before every video (keeping the current cache context), and removal
  through vidcache's ``remove_cache`` (diffusers' hooks are removed first, then ours).
"""

from __future__ import annotations

import dataclasses
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
    SeaCacheConfig,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_mag_cache,
    apply_sea_cache,
    apply_taylorseer_cache,
)
from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.hooks import StateManager
from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK, nearest_interp
from diffusers.hooks.sea_cache import _SEA_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_ROOT_HOOK
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


@dataclass
class SeaCacheBaselineConfig:
    """diffusers' ``SeaCacheConfig`` (its defaults); the raw-vision callback is vidcache's."""

    threshold: float = 0.25
    residual_order: int = 1
    retention_steps: int = 1
    cache_end_steps: int = 1
    max_consecutive_cached: int = 2
    power_exp: float = 3.0

    def __post_init__(self) -> None:
        self.threshold = base.check_float("threshold", self.threshold)
        base.check_int("residual_order", self.residual_order, 0)
        base.check_int("retention_steps", self.retention_steps, 0)
        base.check_int("cache_end_steps", self.cache_end_steps, 0)
        base.check_int("max_consecutive_cached", self.max_consecutive_cached, 0)
        self.power_exp = base.check_float("power_exp", self.power_exp)
        self.sea()  # diffusers' own checks (threshold >= 0, order 0 or 1, power > 0)

    def sea(self, raw_vision_callback: Any = None) -> SeaCacheConfig:
        return SeaCacheConfig(**dataclasses.asdict(self), raw_vision_callback=raw_vision_callback)


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

    def before_removal(self) -> None:
        """``remove_cache``: diffusers' hooks on the blocks come off first (they wrap our counting
        hooks), the one on the transformer itself after ours (ours wraps it)."""
        self._remove_diffusers_hooks(sub for sub in self.transformer.modules() if sub is not self.transformer)

    def after_removal(self) -> None:
        self._remove_diffusers_hooks([self.transformer])

    def _remove_diffusers_hooks(self, modules) -> None:
        for sub in modules:
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None:
                for name in self.hook_names:
                    registry.remove_hook(name, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()

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


def _counted(transformer: torch.nn.Module) -> tuple[base.Layout, base.BranchStates]:
    """The transformer's adapter and the states of counting hooks registered on every block (first,
    so that a diffusers hook registered after wraps them and they fire only when a block runs)."""
    layout = base.layout_of(transformer)
    states = base.BranchStates(CountState)
    for i, (key, block) in enumerate(layout.blocks(transformer)):
        base.register(block, CountHook(states, key, i), "count")
    return layout, states


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
        diff = base.relative_l1(residual, prev)
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
    layout, states = _counted(transformer)
    threshold = layout.fbcache_threshold if config.threshold is None else config.threshold
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
    layout, states = _counted(transformer)
    dtype = transformer.dtype if config.factors_dtype == "model" else _DTYPES[config.factors_dtype]
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
    layout, states = _counted(transformer)
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


# ---------------------------------------------------------------------------- SeaCache


def noise_level(scheduler: Any, t: float | None) -> float | None:
    """``sigma`` of the flow interpolant ``x = (1 - sigma) x0 + sigma eps`` at timestep ``t``, from host
    numbers (module docstring): a VP scheduler's ``alphas_cumprod``, else flow matching's ``t / 1000``."""
    if t is None:
        return None
    alphas = getattr(scheduler, "alphas_cumprod", None)
    flow = getattr(getattr(scheduler, "config", None), "prediction_type", None) == "flow_prediction"
    if torch.is_tensor(alphas) and alphas.device.type == "cpu" and not flow:
        a = float(alphas[min(max(int(round(t)), 0), len(alphas) - 1)])
        return math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a))
    return min(max(t / 1000.0, 0.0), 1.0)


def _raw_vision(layout: base.Layout, out_channels: int):
    """SeaCache's callback for any family: each batch row's noisy latent as (C, T, H, W), from the
    transformer's ``hidden_states`` (the adapter's frame axis; condition channels beyond
    ``out_channels`` left out)."""
    channel_dim = 1 if layout.frame_dim == 2 else 2

    def callback(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor] | None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if not torch.is_tensor(hidden) or hidden.ndim != 5:
            return None
        latent = hidden.narrow(channel_dim, 0, min(out_channels, hidden.shape[channel_dim]))
        if channel_dim == 2:  # [B, F, C, H, W] -> [B, C, F, H, W]
            latent = latent.transpose(1, 2)
        return list(latent.unbind(0))

    return callback


def sea_indicator(latent: torch.Tensor, sigma: float, power: float) -> torch.Tensor:
    """SeaCache's indicator of one (C, T, H, W) latent: the latent filtered in the 3-D Fourier domain
    (T, H, W) by the Wiener gain of a clean signal of power ``1 / |f| ** power`` under noise level
    ``sigma``, per axis ``s P / (s**2 P + n**2)`` with ``s = 1 - sigma``, ``n = sigma``, their product
    scaled to unit mean (the paper's Eq. 7, as diffusers' ``_apply_sea_filter`` computes it). The same
    numbers as diffusers' filter without its host read (a check of the mean gain that cannot fail:
    every factor is positive and finite), in the latent's dtype and its own storage."""
    x = latent.movedim(0, -1).contiguous().float()
    sigma = max(1e-6, min(1.0 - 1e-6, sigma))
    s, n = 1.0 - sigma, sigma
    gain = None
    for axis in range(3):
        f = torch.fft.fftfreq(x.shape[axis], device=x.device, dtype=torch.float32)
        clean = 1.0 / (f.abs().pow(power) + 1e-16)
        g = (s * clean / (s**2 * clean + n**2 + 1e-16)).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
        gain = g if gain is None else gain * g
    gain = gain / gain.mean()
    out = torch.fft.ifftn(torch.fft.fftn(x, dim=(0, 1, 2)) * gain, dim=(0, 1, 2)).real
    return out.to(latent.dtype).contiguous()


def _sea_indicators(config: SeaCacheBaselineConfig):
    """The leader hook's ``_build_indicator``, with ``sea_indicator`` for each batch row."""

    def build(metadata: Any) -> list[torch.Tensor] | None:
        if not metadata.raw_vision:
            return None
        return [sea_indicator(latent, metadata.sigma, config.power_exp).detach() for latent in metadata.raw_vision]

    return build


def _agreed_sea_gate(shared: Any, states: base.BranchStates):
    """diffusers' SeaCache gate (``SeaCacheSharedState.resolve_gate``: forced steps, the accumulated
    distance against ``threshold``, the cap on consecutive reuses), with its per-row distances read
    through ``base.agreed_values`` in one call."""

    @torch.compiler.disable
    def resolve_gate(state: Any, metadata: Any, indicator: list | None, config: SeaCacheConfig) -> bool:
        key = (metadata.step_index, metadata.sigma)
        if state.gate_key == key:  # the leader asked twice for this step
            return state.gate_should_compute
        non_adjacent = state.gate_key is not None and metadata.step_index != state.gate_key[0] + 1
        if non_adjacent:
            shared.mark_fail_open("SeaCache received non-adjacent scheduler steps; running full.")
            state.reset_trajectory()
        capped = bool(config.max_consecutive_cached and state.consecutive_cached >= config.max_consecutive_cached)
        forced = (non_adjacent or indicator is None or state.previous_indicator is None or capped
                  or metadata.step_index < config.retention_steps
                  or metadata.step_index >= metadata.num_inference_steps - config.cache_end_steps)
        compute, accumulated, distance = True, 0.0, None
        if not forced:
            distance = _agreed_distance(indicator, state.previous_indicator)
            if math.isfinite(distance):
                accumulated = state.accumulated_distance + distance
                compute = accumulated >= config.threshold
            else:
                shared.mark_fail_open("SeaCache indicator history changed shape, device, or dtype; running full.")
        state.accumulated_distance = 0.0 if compute else accumulated
        state.gate_key, state.gate_should_compute = key, compute
        state.previous_indicator = None if indicator is None else [v.detach() for v in indicator]
        record = states.get_state().record if states.has_context else None
        if record is not None and distance is not None:
            record.detail = {"distance": distance, "acc": state.accumulated_distance}
        return compute

    return resolve_gate


def _agreed_distance(current: list[torch.Tensor], previous: list[torch.Tensor]) -> float:
    """The mean over rows of ``mean|c - p| / mean|p|``, its sums read in one rank-agreed call."""
    if len(current) != len(previous) or not current or any(
            c.shape != p.shape or c.dtype != p.dtype for c, p in zip(current, previous)):
        return math.inf
    sums = base.agreed_values(torch.stack([x for c, p in zip(current, previous) for x in (base.l1(c, p), base.l1(p))]))
    ratios = [num / den if den > 0 else math.inf for num, den in zip(sums[0::2], sums[1::2])]
    return sum(ratios) / len(ratios)


class SeaCacheHook(BaselineHook):
    """Gives diffusers' SeaCache the scheduler coordinates only Wan's pipeline passes."""

    hook_names = (_SEA_CACHE_ROOT_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_BLOCK_HOOK)
    branch_local = True  # diffusers' StateManager: one state per cache context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._contexts: list[tuple[StateManager, Any]] = []

    def never_fired_hint(self) -> str:
        return f"threshold {self.params['threshold']} is below every accumulated indicator change; raise it"

    def before(self, state: CountState) -> None:
        info, self._contexts = state.info, []
        for manager in self.state_managers():
            ctx = manager._context
            if ctx is None or None not in (ctx.step_index, ctx.sigma, ctx.num_inference_steps):
                continue
            filled = dataclasses.replace(
                ctx,
                step_index=info.step if ctx.step_index is None else ctx.step_index,
                num_inference_steps=info.num_steps if ctx.num_inference_steps is None else ctx.num_inference_steps,
                sigma=noise_level(self.link.scheduler(), info.t) if ctx.sigma is None else ctx.sigma,
            )
            self._contexts.append((manager, ctx))
            manager.set_context(filled)

    def after(self, state: CountState) -> None:
        for manager, ctx in self._contexts:
            manager.set_context(ctx)
        self._contexts = []


def apply_seacache(
    transformer: torch.nn.Module, config: SeaCacheBaselineConfig, *, pipeline: base.PipelineLink | None = None
) -> None:
    """diffusers' SeaCache on ``transformer`` through vidcache's adapter (any family; module docstring)."""
    layout, states = _counted(transformer)
    out_channels = int(transformer.config.out_channels or transformer.config.in_channels)
    apply_sea_cache(transformer, config.sea(_raw_vision(layout, out_channels)))
    root = transformer._diffusers_hook.get_hook(_SEA_CACHE_ROOT_HOOK)
    root.shared_state.resolve_gate = _agreed_sea_gate(root.shared_state, states)
    blocks = layout.blocks(transformer)
    leader = blocks[0][1]._diffusers_hook.get_hook(_SEA_CACHE_LEADER_BLOCK_HOOK)
    tail = blocks[-1][1]._diffusers_hook.get_hook(_SEA_CACHE_BLOCK_HOOK)
    if leader is None or tail is None or not tail.is_tail:  # diffusers' block list is not the adapter's
        raise base.CacheError(f"seacache: diffusers' SeaCache does not hook this {layout.name} transformer's stack")
    leader._build_indicator = _sea_indicators(config)
    params = {"implementation": "diffusers.hooks.apply_sea_cache", **base.config_params(config)}
    _attach(SeaCacheHook, "diffusers-seacache", transformer, layout, states, params, pipeline, needs_timestep=True)
