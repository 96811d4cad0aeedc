"""What every vidcache cache method shares: layouts, the step clock, per-branch state, statistics,
and the one function through which a data-dependent decision reads the device.

Why our own framework instead of diffusers' cache hooks: diffusers' PAB and FasterCache keep one
state for both CFG branches (on Wan, PAB hands the cond forward's attention to the uncond forward;
FasterCache crashes there), and none of its hooks report what they reused. We keep diffusers'
mechanism (``ModelHook`` registered through ``HookRegistry``, one ``StateManager`` keyed by the
pipeline's ``transformer.cache_context(name)``) and build the rest on it:

* **State** lives in one ``BranchStates`` (a ``StateManager``) per transformer instance and method;
  every hook of that method on that transformer shares it, and ``get_state()`` returns the state of
  the current cache context ("cond", "uncond", "cond_uncond"...). Nothing is kept on a class and
  nothing is keyed by call parity. A pipeline with two transformers (Wan 2.2 A14B) gets two
  independent sets of hooks and states.
* **The step clock** (``TransformerHook``, registered on the transformer itself) works out for every
  forward where the denoising loop is: the step index from the cache context when the pipeline
  passes one (WanPipeline: ``step_index``, ``num_inference_steps``), else the pipeline scheduler's
  own step count (Wan's image-to-video pipeline passes none, and Wan 2.2's second expert must not
  restart at step 0), else the branch's own forward count. The timestep comes from the
  transformer's own ``timestep`` argument; when that tensor lives on an accelerator, reading it
  would be a host-device sync in every forward, so the clock reads it from a host copy of the
  pipeline scheduler's timesteps instead (copied once per video, indexed by the step). Without a
  pipeline (a bare transformer) it reads the argument. ``timestep.max()`` is used because Wan 2.2
  TI2V passes a per-token timestep whose first-frame tokens may be 0. A forward outside any
  ``cache_context`` runs in one branch named "default".
* **Between videos** three things clear the state, none of them a callback: diffusers itself
  calls every stateful hook's ``reset_state`` at the end of each pipeline call
  (``maybe_free_model_hooks``; the statistics survive it until the next video starts, so the
  runner can still read them); ``set_timesteps`` gives the scheduler a new ``timesteps`` tensor
  for every call, and the clock resets the states when it sees a different object (an
  interrupted call); and ``reset_cache`` (the runner, before every video) clears states and
  statistics explicitly.
* **Rank agreement**: every data-dependent decision reads its deciding values through
  ``agreed_values``, which all-reduces them over the process group first when
  ``torch.distributed`` runs with more than one rank, so all ranks take the same branch.
  Schedule-only decisions (a timestep window, a counter) need no reduction and read nothing from
  the device: PAB and FasterCache make no host-device sync; TeaCache reads its distances once
  per branch and video on Wan and CogVideoX, one per non-forced forward on HunyuanVideo.

Statistics. Each forward produces one record per transformer, kept in order, with the step, the
branch, the timestep and what ran. The unit of ``compute_ratio`` is *one block computed for one CFG
branch*: a Wan forward covers one branch, a CogVideoX forward with CFG two ([uncond, cond]), a
HunyuanVideo forward one. ``compute_ratio`` = executed units / total units, where a block counts as
executed when it ran at all, even if some of its attention outputs were reused. Attention-only
reuse (PAB, FasterCache's attention extrapolation) is reported separately as
``attention_compute_ratio`` = attention-module computations / attention-module slots, in the same
branch units; so PAB shows ``compute_ratio`` 1.0 and its saving in ``attention_compute_ratio``.
``memory_bytes`` is the peak, over forward boundaries, of the bytes held in the method's states
(distinct storages only).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager
from diffusers.utils.torch_utils import unwrap_module

from ..errors import UsageError
from ..models import FamilyAdapter, adapter_of
from ..models.layout import block_inputs, block_outputs, pack_block_output, sample_of, with_sample
from .steps import StepScale

# the block I/O helpers the methods use through ``base``
__all__ = ["block_inputs", "block_outputs", "pack_block_output", "sample_of", "with_sample"]

HOOK_PREFIX = "vidcache."
FORWARD_HOOK = HOOK_PREFIX + "forward"
ATTENTION_KINDS = ("spatial", "temporal", "cross")


class CacheError(UsageError, ValueError):
    """A bad cache method, preset or parameter: a ``ValueError`` for Python callers, one line
    for the CLI."""


# --------------------------------------------------------------------------------------------
# Family layouts: the adapter of vidcache.models says where a family keeps what the caches touch
# --------------------------------------------------------------------------------------------

Layout = FamilyAdapter  # what the caches read of a family: blocks, attention kinds, CFG layout, ...


def layout_of(transformer: torch.nn.Module) -> Layout:
    """The adapter of a supported transformer; ``CacheError`` for one vidcache cannot cache."""
    try:
        return adapter_of(transformer)
    except UsageError as err:
        raise CacheError(str(err).replace("cannot run", "cannot cache", 1)) from None


def block_metadata(block: torch.nn.Module):
    """diffusers' record of which output index holds the video / text stream of a block."""
    return TransformerBlockRegistry.get(type(unwrap_module(block)))


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def config_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def build_config(cls: type, params: dict[str, Any], method: str):
    """``cls(**params)``, an unknown key or a bad value reported as one clear ``CacheError``."""
    known = config_fields(cls)
    for key in params:
        if key not in known:
            names = ", ".join(sorted(known))
            raise CacheError(f"unknown {method} parameter '{key}' (known: {names})")
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise CacheError(f"{method}: {err}") from None


def config_params(config: Any) -> dict[str, Any]:
    """The JSON-serialisable parameters of a config (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def check_window(name: str, value: Any) -> tuple[float, float]:
    """A timestep window ``[lo, hi]`` (reuse allowed when ``lo < t < hi``)."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or value[0] >= value[1]
    ):
        raise ValueError(f"'{name}' must be two finite timesteps [lo, hi] with lo < hi, got {value!r}")
    return float(value[0]), float(value[1])


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"'{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{name}' must be a number, got {value!r}")
    if not math.isfinite(value):  # NaN compares false to every bound: it would pass them all
        raise ValueError(f"'{name}' must be a finite number, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'{name}' must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Rank agreement: the one place a data-dependent decision reads the device
# --------------------------------------------------------------------------------------------

_decision_group = None


def set_decision_group(group: Any) -> None:
    """The process group whose ranks must agree on cache decisions (default: the world group)."""
    global _decision_group
    _decision_group = group


@torch.compiler.disable
def agreed_values(values: torch.Tensor) -> list[float]:
    """Read a few deciding scalars to the host, summed over ranks when several ranks run.

    Every data-dependent skip/compute decision of every method goes through here. Under context
    parallelism each rank holds part of the sequence, so local metrics differ; summing them (a
    single ``all_reduce``) gives every rank the same global values and therefore the same branch,
    where a per-rank decision would deadlock the run at the next collective. The ``tolist()`` is the
    forward's one host-device sync.
    """
    values = values.detach().to(torch.float64 if values.device.type == "cpu" else torch.float32)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size(_decision_group) > 1:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=_decision_group)
    return values.flatten().tolist()


def compact(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t``, or a copy of it when it is a view into a bigger storage (a block's video stream split off
    a joint [video, text] output): what a cache keeps should hold only its own bytes."""
    if t is None or t.untyped_storage().nbytes() <= t.numel() * t.element_size():
        return t
    return t.clone()


def l1(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``sum|a - b|`` (``sum|a|`` without ``b``) as an fp32 scalar on ``a``'s device, accumulated in
    fp32 without an fp32 copy of a residual-sized tensor: the difference is taken in the tensors'
    own dtype (one temporary of their size), the sum widens on the fly."""
    diff = a.abs() if b is None else torch.sub(a, b.to(a.dtype)).abs_()
    return diff.sum(dtype=torch.float32)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean|current - previous| / mean|previous|`` accumulated in fp32, agreed across ranks."""
    num, den = agreed_values(torch.stack([l1(current, previous), l1(previous)]))
    return num / den if den > 0 else float("inf")


# --------------------------------------------------------------------------------------------
# Where the loop is
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    """One forward's place in the denoising loop, on the host."""

    step: int
    num_steps: int | None
    t: float | None  # timestep on the 0-1000 scale; None when not needed and not free to read
    branch: str


def in_window(t: float | None, window: tuple[float, float]) -> bool:
    return t is not None and window[0] < t < window[1]


@dataclass(frozen=True)
class PipelineLink:
    """What the hooks may read (never call back into) from the pipeline driving the transformer."""

    timesteps: Callable[[], Any] = lambda: None
    cfg_active: Callable[[], bool | None] = lambda: None
    step_index: Callable[[], int | None] = lambda: None
    scheduler: Callable[[], Any] = lambda: None

    @classmethod
    def of(cls, pipe: Any, family: FamilyAdapter | None = None) -> PipelineLink:
        def timesteps():
            return getattr(getattr(pipe, "scheduler", None), "timesteps", None)

        def cfg_active():
            return (family or FamilyAdapter()).cfg_active(pipe)

        def step_index():
            """The scheduler's own count of the steps it has taken (None before the first: step 0),
            for schedulers that keep one; None when it keeps none."""
            scheduler = getattr(pipe, "scheduler", None)
            if scheduler is None or not hasattr(type(scheduler), "step_index"):
                return None
            index = scheduler.step_index
            return 0 if index is None else int(index)

        return cls(timesteps, cfg_active, step_index, lambda: getattr(pipe, "scheduler", None))


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_tensors(item)
    elif hasattr(obj, "tensors"):
        yield from obj.tensors()


def held_bytes(objs: Any) -> int:
    seen, total = set(), 0
    for t in iter_tensors(objs):
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class BranchState(BaseState):
    """Everything one method keeps for one branch (cache context) of one transformer.

    ``slots`` holds per-module caches keyed by the module's name in the transformer. Subclasses add
    the method's own fields and list their tensors in ``tensors()``.
    """

    def __init__(self) -> None:
        self.forwards = 0  # forwards of this branch in this video
        self.last_run_step: int | None = None  # last step at which the model really ran
        self.info: StepInfo | None = None
        self.record: ForwardRecord | None = None
        self.slots: dict[str, Any] = {}

    def reset(self) -> None:
        self.__init__()

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from iter_tensors(self.slots)


class BranchStates(StateManager):
    """diffusers' ``StateManager`` (one state per cache context), plus a view of all the states."""

    def states(self) -> list[BranchState]:
        return list(self._state_cache.values())

    @property
    def has_context(self) -> bool:
        return self._context is not None

    def reset_keeping_context(self) -> None:
        context = self._context
        self.reset()
        self.set_context(context)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

_sequence = itertools.count()


@dataclass
class ForwardRecord:
    """What one forward computed. Units are module computations x CFG branches."""

    step: int
    branch: str
    t: float | None
    branches: int  # CFG branches this forward serves (2 for a batched [uncond, cond] forward)
    blocks: int  # blocks in the stack
    attention: dict[str, int]  # attention modules per kind
    branches_run: int | None = None  # branches actually computed; None = all
    blocks_skipped: bool = False  # the whole block stack was skipped (TeaCache)
    attn_reused: dict[str, int] = field(default_factory=dict)
    action: str | None = None
    detail: dict[str, Any] | None = None  # method-specific numbers (TeaCache: rel_l1, acc)
    seq: int = field(default_factory=lambda: next(_sequence))

    def rows(self) -> int:
        return self.branches if self.branches_run is None else self.branches_run

    def reuse_attention(self, kind: str) -> None:
        self.attn_reused[kind] = self.attn_reused.get(kind, 0) + self.rows()

    def counts(self) -> tuple[int, int, dict[str, tuple[int, int]]]:
        run_rows = 0 if self.blocks_skipped else self.rows()
        attn = {
            kind: (max(0, n * run_rows - self.attn_reused.get(kind, 0)), n * self.branches)
            for kind, n in self.attention.items()
        }
        return self.blocks * run_rows, self.blocks * self.branches, attn

    def entry(self, expert: int) -> dict[str, Any]:
        blocks_run, blocks_total, attn = self.counts()
        reused = blocks_run < blocks_total or any(r < n for r, n in attn.values())
        action = self.action or ("attention reused" if reused else "computed")
        entry = {
            "step": self.step,
            "branch": self.branch,
            "expert": expert,
            "t": None if self.t is None else round(self.t, 3),
            "action": action,
            "blocks": [blocks_run, blocks_total],
            "attention": {kind: list(v) for kind, v in attn.items()},
        }
        if self.detail:
            entry.update(self.detail)
        return entry


@dataclass
class RunStats:
    records: list[ForwardRecord] = field(default_factory=list)
    peak_bytes: int = 0


# --------------------------------------------------------------------------------------------
# The transformer-level hook
# --------------------------------------------------------------------------------------------


class TransformerHook(ModelHook):
    """Registered on the transformer itself: clock, new-video detection, statistics, memory.

    Methods that act on the whole forward (FasterCache's CFG-Cache) subclass it and override
    ``run``; the others use it as is and do their work in module hooks that read ``state.info``.
    """

    _is_stateful = True

    def __init__(
        self,
        method: str,
        states: BranchStates,
        layout: Layout,
        transformer: torch.nn.Module,
        params: dict[str, Any],
        pipeline: PipelineLink | None = None,
        needs_timestep: bool = False,
        warnings: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.method = method
        self.states = states
        self.layout = layout
        self.params = params
        self.link = pipeline or PipelineLink()
        self.needs_timestep = needs_timestep
        self.apply_warnings = list(warnings or [])
        self.stats = RunStats()
        self.n_blocks = len(layout.blocks(transformer))
        self.n_attention = {kind: 0 for kind in dict.fromkeys(layout.attention_attrs.values())}
        for _, _, kind in layout.attention_modules(transformer):
            self.n_attention[kind] += 1
        self._schedule_key: Any = None
        self._host_timesteps: list[float] | None = None
        self._arg_names: list[str] = []
        self._stats_done = False
        # step-counted parameters stated for ``schedule_steps`` steps (``caches/steps.py``)
        self.scale = StepScale(params.get("schedule_steps"))
        self._scaled_for: int | None = None

    # -- diffusers hook interface ------------------------------------------------------------
    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        signature = inspect.signature(type(unwrap_module(module)).forward)
        self._arg_names = list(signature.parameters)[1:]
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """Forget cached tensors and counters. diffusers calls this at the end of every pipeline
        call (``maybe_free_model_hooks``), before the runner asks for the statistics: those are
        kept until the next forward starts a new video (or ``clear``)."""
        self.states.reset()
        self.reset_shared()
        self._schedule_key = None
        self._host_timesteps = None
        self._stats_done = True
        return module

    def clear(self) -> None:
        """``reset_state`` and forget the statistics too (``reset_cache``)."""
        self.reset_state(None)
        self.stats = RunStats()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.states.has_context:  # called outside ``cache_context``: one default branch
            self.states.set_context(CacheContext("default"))
            try:
                return self.new_forward(module, *args, **kwargs)
            finally:
                self.states.set_context(None)
        if self._stats_done:
            self.stats, self._stats_done = RunStats(), False
        self._detect_new_video()
        state = self.states.get_state()
        info = self._step_info(state, args, kwargs)
        self._note_scale(info.num_steps)
        record = ForwardRecord(
            step=info.step,
            branch=info.branch,
            t=info.t,
            branches=self.branches(args, kwargs),
            blocks=self.n_blocks,
            attention=dict(self.n_attention),
        )
        state.info, state.record = info, record
        output = self.run(module, state, args, kwargs)
        state.forwards += 1
        if record.rows() > 0:
            state.last_run_step = info.step
        self.stats.records.append(record)
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.held_bytes())
        return output

    # -- for subclasses ------------------------------------------------------------------------
    def run(self, module: torch.nn.Module, state: BranchState, args: tuple, kwargs: dict) -> Any:
        return self.fn_ref.original_forward(*args, **kwargs)

    def reset_shared(self) -> None:
        """Forget what a subclass shares between branches (nothing here)."""

    def shared_tensors(self) -> Iterator[torch.Tensor]:
        return iter(())

    def never_fired_hint(self) -> str:
        return ""

    def before_removal(self) -> None:
        """Called by ``remove_cache`` before vidcache's hooks come off (a wrapped method's own hooks
        that wrap vidcache's)."""

    def after_removal(self) -> None:
        """Called by ``remove_cache`` after vidcache's hooks came off (a wrapped method's own hooks
        that vidcache's wrapped: a hook comes off before the ones inside it, or the chain of
        forwards keeps a removed one)."""

    # -- helpers -------------------------------------------------------------------------------
    def arg(self, name: str, args: tuple, kwargs: dict, default: Any = None) -> Any:
        if name in kwargs:
            return kwargs[name]
        if name in self._arg_names:
            i = self._arg_names.index(name)
            if i < len(args):
                return args[i]
        return default

    def cond_half(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The inputs of a batched [uncond, cond] forward cut to their cond rows. Only the adapter's
        ``batched_inputs`` whose first dimension really is the batch are cut: a conditioning tensor
        with one row for the whole batch (CogVideoX image-to-video's ``ofs``) is passed as it is."""
        batch = self.arg("hidden_states", args, kwargs).shape[0]

        def half(value: Any) -> Any:
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
                return value[batch // 2 :]
            return value

        names = self.layout.batched_inputs
        args = tuple(
            half(v) if i < len(self._arg_names) and self._arg_names[i] in names else v
            for i, v in enumerate(args)
        )
        return args, {k: half(v) if k in names else v for k, v in kwargs.items()}

    def branches(self, args: tuple, kwargs: dict) -> int:
        """CFG branches one forward serves: 2 for a batched [uncond, cond] forward, else 1."""
        if self.layout.cfg_layout != "batched":
            return 1
        cfg = self.link.cfg_active()
        if cfg is None:  # a bare transformer: an even batch is taken as [uncond, cond]
            hidden = self.arg("hidden_states", args, kwargs)
            cfg = torch.is_tensor(hidden) and hidden.shape[0] % 2 == 0
        return 2 if cfg else 1

    def held_bytes(self) -> int:
        return held_bytes([state for state in self.states.states()] + list(self.shared_tensors()))

    def _note_scale(self, steps: int | None) -> None:
        """Say in the live parameters (the report's ``cache.params``) how this run's step count
        stretched the method's counts: ``schedule_scale`` = {steps, factor}, absent when 1."""
        if steps == self._scaled_for:
            return
        self._scaled_for = steps
        k = self.scale.factor(steps)
        if k == 1.0:
            self.params.pop("schedule_scale", None)
        else:
            self.params["schedule_scale"] = {"steps": steps, "factor": round(k, 6)}

    def _detect_new_video(self) -> None:
        key = self.link.timesteps()
        if key is None or key is self._schedule_key:
            return
        if self._schedule_key is not None:
            self.states.reset_keeping_context()
            self.reset_shared()
            self.stats = RunStats()
        self._schedule_key = key
        self._host_timesteps = None

    def _step_info(self, state: BranchState, args: tuple, kwargs: dict) -> StepInfo:
        """The step: the cache context's when the pipeline passes one (WanPipeline does), else the
        pipeline scheduler's own step count (WanImageToVideoPipeline passes none, and with two
        experts each transformer's forward count would restart at the switch: diffusers #14025),
        else this branch's forward count (one transformer, one forward per step and branch)."""
        ctx = self.states.context
        step = ctx.step_index
        if step is None:
            step = self.link.step_index()
        if step is None:
            step = state.forwards
        num_steps = ctx.num_inference_steps
        if num_steps is None and torch.is_tensor(self._schedule_key):
            num_steps = len(self._schedule_key)
        return StepInfo(step, num_steps, self._timestep(ctx, step, args, kwargs), self.layout.branch_of(ctx.name))

    def _timestep(self, ctx: Any, step: int, args: tuple, kwargs: dict) -> float | None:
        if isinstance(ctx.timestep, (int, float)):
            return float(ctx.timestep)
        ts = self.arg("timestep", args, kwargs)
        if isinstance(ts, (int, float)):
            return float(ts)
        if not torch.is_tensor(ts):
            return None
        if ts.device.type == "cpu":  # free to read
            return float(ts.max())
        if not self.needs_timestep:
            return None
        host = self.host_timesteps()
        if host is not None and step < len(host):
            return host[step]
        return float(ts.max())  # no pipeline schedule known: one sync

    def host_timesteps(self) -> list[float] | None:
        """The pipeline scheduler's timesteps on the host (copied once per video); None without a
        pipeline. For schedule-only rules that look ahead (FasterCache: what the next step will do)."""
        if self._host_timesteps is None and torch.is_tensor(self._schedule_key):
            self._host_timesteps = [float(x) for x in self._schedule_key.tolist()]  # once a video
        return self._host_timesteps


# --------------------------------------------------------------------------------------------
# Hooks on modules
# --------------------------------------------------------------------------------------------


class BranchHook(ModelHook):
    """A hook on a submodule that works on the shared per-branch state of its method."""

    _is_stateful = True

    def __init__(self, states: BranchStates, key: str) -> None:
        super().__init__()
        self.states = states
        self.key = key

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.states.reset()
        return module


def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_PREFIX + name)


def batch_of(args: tuple, kwargs: dict) -> int | None:
    for value in itertools.chain(args, kwargs.values()):
        if torch.is_tensor(value) and value.ndim > 0:
            return value.shape[0]
    return None


def fit_batch(cached: Any, batch: int | None) -> Any:
    """A cached module output, fitted to the current batch: as is, or the cond half of a cached
    [uncond, cond] batch when only the cond rows run (FasterCache's CFG-Cache on CogVideoX).
    None when it cannot fit."""
    tensors = cached if isinstance(cached, tuple) else (cached,)
    if batch is None or any(not torch.is_tensor(t) for t in tensors):
        return None
    if all(t.shape[0] == batch for t in tensors):
        return cached
    if all(t.shape[0] == 2 * batch for t in tensors):
        halves = tuple(t[batch:] for t in tensors)
        return halves if isinstance(cached, tuple) else halves[0]
    return None


# --------------------------------------------------------------------------------------------
# Attach, find, reset, remove
# --------------------------------------------------------------------------------------------


def _registries(transformer: torch.nn.Module) -> list[HookRegistry]:
    return [
        m._diffusers_hook for _, m in unwrap_module(transformer).named_modules()
        if hasattr(m, "_diffusers_hook")
    ]


def forward_hook(transformer: torch.nn.Module) -> TransformerHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(FORWARD_HOOK) if registry is not None else None
    return hook if isinstance(hook, TransformerHook) else None


def attach(transformer: torch.nn.Module, top: TransformerHook) -> None:
    """Register the transformer-level hook (after the module hooks), and refresh diffusers' cache
    of which submodules carry hooks: else ``cache_context`` would not reach hooks added after it
    first ran."""
    register(transformer, top, FORWARD_HOOK[len(HOOK_PREFIX):])
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def reset_hooks(transformer: torch.nn.Module) -> None:
    for registry in _registries(transformer):
        for name, hook in list(registry.hooks.items()):
            if isinstance(hook, TransformerHook):
                hook.clear()
            elif name.startswith(HOOK_PREFIX) and hook._is_stateful:
                hook.reset_state(registry._module_ref)


def remove_hooks(transformer: torch.nn.Module) -> None:
    top = forward_hook(transformer)
    if top is not None:
        top.before_removal()
    for registry in _registries(transformer):
        for name in [n for n in registry._hook_order if n.startswith(HOOK_PREFIX)]:
            registry.remove_hook(name, recurse=False)
    if top is not None:
        top.after_removal()
    if hasattr(transformer, "_diffusers_hook"):
        transformer._diffusers_hook.invalidate_child_registries_cache()


def collect_stats(transformers: list[torch.nn.Module]) -> dict[str, Any]:
    """Merge the statistics of a pipeline's transformers (two for Wan 2.2 A14B) for the report."""
    hooks = [(i, h) for i, h in enumerate(forward_hook(t) for t in transformers) if h is not None]
    if not hooks:
        return {
            "method": "none",
            "compute_ratio": 1.0,
            "attention_compute_ratio": 1.0,
            "steps_reused": 0,
            "forwards": 0,
            "per_step": [],
            "memory_bytes": 0,
            "warnings": [],
        }
    records = sorted(((r, i) for i, h in hooks for r in h.stats.records), key=lambda x: x[0].seq)
    per_step = [r.entry(i) for r, i in records]
    blocks_run = sum(e["blocks"][0] for e in per_step)
    blocks_total = sum(e["blocks"][1] for e in per_step)
    attn_run = sum(v[0] for e in per_step for v in e["attention"].values())
    attn_total = sum(v[1] for e in per_step for v in e["attention"].values())
    reused = sum(
        1 for e in per_step
        if e["blocks"][0] < e["blocks"][1] or any(v[0] < v[1] for v in e["attention"].values())
    )
    method = hooks[0][1].method
    warnings = [w for _, h in hooks for w in h.apply_warnings]
    if per_step and reused == 0:
        hint = hooks[0][1].never_fired_hint()
        warnings.append(
            f"{method} never reused anything in this video ({len(per_step)} forwards)"
            + (f": {hint}" if hint else "")
        )
    return {
        "method": method,
        "compute_ratio": blocks_run / blocks_total if blocks_total else 1.0,
        "attention_compute_ratio": attn_run / attn_total if attn_total else 1.0,
        "steps_reused": reused,
        "forwards": len(per_step),
        "per_step": per_step,
        "memory_bytes": sum(h.stats.peak_bytes for _, h in hooks),
        "warnings": list(dict.fromkeys(warnings)),
    }
