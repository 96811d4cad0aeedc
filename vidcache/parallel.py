"""Context parallelism: several processes (GPUs) render one video together.

Why this module exists: diffusers 0.42.1 can split a transformer's sequence across ranks (Ulysses
all-to-all, ring attention, or both) through ``ContextParallelConfig`` and ``enable_parallelism``,
but only for models that declare a ``_cp_plan`` whose attention goes through
``dispatch_attention_fn``. Of vidcache's three families only Wan does. This module supplies the
rest, without copying diffusers' model code:

* **The families' pieces** live in their adapters (``vidcache.models``): a ``_cp_plan`` for a
  model that has none (HunyuanVideo: split the video tokens, keep the text whole on every rank and
  rewrite the attention mask so each text key counts once, ``models/hunyuan_cp.py``), attention
  processors that reach diffusers' dispatcher and a split of the joint [text, video] sequence
  (CogVideoX, ``models/cogvideox_cp.py``), and the facts validation needs (whether the text is
  part of the split sequence, whether attention needs a mask). This module asks the adapter and
  never compares a family name.
* **CFG parallelism** (``--cfg-parallel``): half the ranks compute the conditional branch, half the
  unconditional, and they exchange the noise predictions. diffusers 0.42.1 has no CFG parallelism
  (a TODO in ``_modeling_parallel.py``), so ``CFGParallelHook`` does it from outside the model.

Caches: vidcache applies the cache *before* this module enables parallelism, so diffusers' split and
gather hooks wrap the cache hooks, and the CFG hook wraps everything. Every data-dependent cache
decision is all-reduced by ``caches.base.agreed_values`` over a decision group this module sets:
the ranks that see the same branch (all ranks, except under CFG parallelism on Wan, where cond and
uncond ranks decide separately, as one process would per branch).

Validation needs no weights: ``plan_parallel`` reads the model's ``transformer/config.json`` (or
the shipped model names' numbers, ``models.geometry``) and refuses bad splits with one line saying what would work.

CPU (gloo) is supported for testing: diffusers computes ``rank % torch.accelerator.device_count()``
while resolving the mesh, which divides by zero on a CPU-only torch; ``enable`` patches the count to
1 for that call only. Ring attention needs an attention backend that returns the log-sum-exp
(cuDNN or flash attention on a GPU); on CPU it is refused.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.utils.torch_utils import unwrap_module

from .errors import RankLost, UsageError
from .models import FamilyAdapter, adapter_named
from .models.adapter import CP_HOOK_PREFIX as HOOK_PREFIX
from .models.geometry import Geometry, model_geometry
from .models.layout import sample_of, with_sample

# How long a rank whose video failed waits for the others to reach the same point (seconds).
OUTCOME_WAIT_S = float(os.environ.get("VIDCACHE_RANK_WAIT_S", "60"))
# --attention values that return the log-sum-exp ring attention needs; auto / sdpa become cuDNN.
RING_BACKENDS = {"flash": "flash", "sage": "sage", "auto": "_native_cudnn", "sdpa": "_native_cudnn"}
CP_BACKENDS = {"auto", "sdpa", "flash", "sage"}  # diffusers backends with context parallel support


# --------------------------------------------------------------------------------------------
# What the user asked for, and what was planned
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelOptions:
    """``--ulysses``, ``--ring`` and ``--cfg-parallel`` as given (None: not given)."""

    ulysses: int | None = None
    ring: int | None = None
    cfg: bool = False


@dataclass(frozen=True)
class ParallelPlan:
    """How the ranks of a torchrun launch split the work: world = cfg x ring x ulysses."""

    world_size: int
    ulysses: int
    ring: int
    cfg: int
    family: str
    cfg_layout: str
    attention: str = "auto"

    @property
    def cp(self) -> int:
        """Ranks that share one sequence (one CFG branch)."""
        return self.ulysses * self.ring

    def report(self) -> dict[str, int]:
        return {"world_size": self.world_size, "ulysses": self.ulysses, "ring": self.ring, "cfg": self.cfg}


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    def num(key: str, default: int) -> int:
        try:
            return int(os.environ.get(key, default))
        except ValueError:
            return default

    return num("RANK", 0), num("WORLD_SIZE", 1), num("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this process prints and writes: rank 0, or the only process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_world()[0] == 0


# --------------------------------------------------------------------------------------------
# Validation, before any weight is read
# --------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0]


def _fits(p: int, ulysses: int, geo: Geometry | None, jobs: list[Any], family: FamilyAdapter) -> str | None:
    """Why sequence-parallel degree ``p`` (Ulysses part ``ulysses``) cannot run these jobs; None if it can."""
    if p == 1:
        return None
    if geo is not None and geo.heads and geo.heads % ulysses:
        return f"its {geo.heads} attention heads do not divide by Ulysses degree {ulysses}"
    for job in jobs:
        grid = geo.video_grid(job.frames, job.height, job.width) if geo else None
        if not grid:
            continue
        f, h, w = grid
        if family.cp_joint_sequence and (f * h * w + job.text_len) % p:  # the joint sequence is split
            return (f"job {job.name}: {job.text_len} text + {f}x{h}x{w} = {f * h * w} video tokens make "
                    f"{f * h * w + job.text_len}, not divisible by ulysses x ring = {p}")
        if not family.cp_joint_sequence and (f * h * w) % p:
            return (f"job {job.name}: {job.frames}x{job.height}x{job.width} makes {f}x{h}x{w} = {f * h * w} "
                    f"video tokens, not divisible by ulysses x ring = {p}")
    return None


def _options(world: int, cfg: int, geo: Geometry | None, jobs: list[Any], family: FamilyAdapter,
             cpu: bool) -> list[str]:
    options = []
    for c in ((2, 1) if cfg == 2 else (1,)):
        if world % c:
            continue
        p = world // c
        for ring in ([1] if cpu else _divisors(p) + [1]):
            u = p // ring
            if p % ring or _fits(p, u, geo, jobs, family):
                continue
            flags = [f"--ulysses {u}"] if u > 1 else []
            flags += [f"--ring {ring}"] if ring > 1 else []
            flags += ["--cfg-parallel"] if c == 2 else []
            options.append(" ".join(flags) or "no flags")
    return list(dict.fromkeys(options))


def _suggest(world: int, cfg: int, geo: Geometry | None, jobs: list[Any], family: FamilyAdapter, cpu: bool) -> str:
    """What would work with ``world`` processes, as flags; else which process counts would."""
    options = _options(world, cfg, geo, jobs, family, cpu)
    if options:
        return f"with {world} processes use {' or '.join(options[:4])}"
    counts = [n for n in range(2, max(world, 8) + 1) if _options(n, cfg, geo, jobs, family, cpu)]
    where = " (ring attention needs a GPU)" if cpu else ""
    if not counts:
        return f"no split of these jobs fits up to {max(world, 8)} processes{where}: change their frames or size"
    return f"no split of {world} processes fits{where}; launch {' or '.join(map(str, counts[:6]))} processes"


def plan_parallel(opts: ParallelOptions, model: Any, jobs: list[Any], device: str = "auto",
                  attention: str = "auto") -> ParallelPlan | None:
    """Check the split against the launch and the model; None for an ordinary single process.

    Everything here runs before the weights load, on every rank alike, so every rank refuses the
    same way with the same line.
    """
    _, world, _ = env_world()
    fam = model.family
    asked = (opts.ulysses or 1) > 1 or (opts.ring or 1) > 1 or opts.cfg
    for flag, value in (("--ulysses", opts.ulysses), ("--ring", opts.ring)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    if world <= 1:
        if asked:
            n = (opts.ulysses or 1) * (opts.ring or 1) * (2 if opts.cfg else 1)
            raise UsageError(f"parallel flags need {n} processes: launch with "
                             f"`torchrun --nproc_per_node={n} -m vidcache gen ...`")
        return None
    cfg = 2 if opts.cfg else 1
    if opts.cfg:
        if fam.cfg_layout not in ("separate", "batched"):
            raise UsageError(f"--cfg-parallel: {model.name} is guidance-distilled (one forward per step), there "
                             f"is no second branch to split; use --ulysses {world}")
        for job in jobs:
            if job.guidance <= 1 or (job.guidance_2 is not None and job.guidance_2 <= 1):
                raise UsageError(f"--cfg-parallel: job {job.name} has guidance <= 1, so there is no "
                                 "unconditional branch; drop --cfg-parallel or raise --guidance")
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    geo = model_geometry(model)
    ring, ulysses = opts.ring, opts.ulysses
    if ulysses is None and world % (cfg * (ring or 1)) == 0:
        ulysses = world // (cfg * (ring or 1))
    if ring is None and ulysses and world % (cfg * ulysses) == 0:
        ring = world // (cfg * ulysses)
    ulysses, ring = ulysses or 1, ring or 1
    hint = _suggest(world, cfg, geo, jobs, fam, cpu)
    if ulysses * ring * cfg != world:
        raise UsageError(f"world size {world} != ulysses {ulysses} x ring {ring} x cfg {cfg} = "
                         f"{ulysses * ring * cfg}; {hint}")
    if ring > 1 and cpu:
        raise UsageError("--ring: ring attention needs an attention backend that returns the log-sum-exp "
                         f"(cuDNN or flash attention on a GPU), not available on CPU; {hint}")
    if attention not in CP_BACKENDS:
        raise UsageError(f"--attention {attention}: diffusers has no context parallel support for it; "
                         "use sdpa, flash or sage")
    if ring > 1 and fam.needs_attention_mask and attention in ("flash", "sage"):
        raise UsageError(f"--attention {attention} takes no attention mask, which {fam.name} needs; "
                         "use --attention sdpa (cuDNN under ring attention)")
    why = _fits(ulysses * ring, ulysses, geo, jobs, fam)
    if why:
        raise UsageError(f"cannot split {model.name} {ulysses * ring} ways: {why}; {hint}")
    return ParallelPlan(world, ulysses, ring, cfg, fam.name, fam.cfg_layout, attention)


# --------------------------------------------------------------------------------------------
# Context parallel plans for the families diffusers lacks
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# CFG parallelism
# --------------------------------------------------------------------------------------------

class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class CFGParallelHook(ModelHook):
    """On the transformer, outermost: each CFG rank group computes one branch.

    ``separate`` (Wan: a "cond" then an "uncond" forward per step): the cond group (index 0)
    computes the cond forward, the uncond group the uncond forward. At the cond call the uncond
    group returns an empty tensor; at the uncond call the two predictions are all-gathered, the
    empty tensor is filled in place with the cond prediction and the uncond prediction returned.
    This relies on the pipeline reading the cond prediction only after the uncond forward, which is
    how ``WanPipeline`` combines them (``noise_uncond + scale * (noise_pred - noise_uncond)``).
    ``batched`` (CogVideoX: one forward on [uncond, cond]): each group computes its share of the
    batch and the shares are all-gathered.
    A call without CFG (guidance <= 1) runs whole on every rank, as one process would.
    """

    _is_stateful = True

    def __init__(self, transformer: torch.nn.Module, family: FamilyAdapter, group: Any, index: int,
                 cfg_active: Callable[[], bool | None]) -> None:
        super().__init__()
        self.layout, self.group, self.index, self.cfg_active = family.cfg_layout, group, index, cfg_active
        self.branch_of = family.branch_of  # the pipeline's names of its cond / uncond forwards
        self.batched_inputs = family.batched_inputs
        self.names = list(inspect.signature(type(unwrap_module(transformer)).forward).parameters)[1:]
        self.out_channels = getattr(transformer.config, "out_channels", None)
        self.contexts = StateManager(_NoState)  # diffusers sets the pipeline's cache_context on it
        self.pending: torch.Tensor | None = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.pending = None
        return module

    def _arg(self, name: str, args: tuple | list, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        i = self.names.index(name) if name in self.names else len(args)
        return args[i] if i < len(args) else None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        forward = self.fn_ref.original_forward
        if self.cfg_active() is False:
            return forward(*args, **kwargs)
        if self.layout == "batched":
            return self._batched(forward, args, kwargs)
        ctx = self.contexts._context
        name = self.branch_of(ctx.name) if ctx is not None else None
        if name not in ("cond", "uncond"):
            return forward(*args, **kwargs)
        return_dict = self._arg("return_dict", args, kwargs)
        return_dict = True if return_dict is None else bool(return_dict)
        if name == "cond":
            if self.index == 0:
                output = forward(*args, **kwargs)
                self.pending = sample_of(output)
                return output
            hidden = self._arg("hidden_states", args, kwargs)
            shape = list(hidden.shape)
            if self.out_channels is not None:
                shape[1] = self.out_channels
            self.pending = torch.empty(shape, dtype=hidden.dtype, device=hidden.device)
            return with_sample(None, self.pending, return_dict)
        output = None
        if self.index == 1:
            output = forward(*args, **kwargs)
            mine = sample_of(output)
        else:
            mine = self.pending
        if mine is None or self.pending is None:
            raise RuntimeError("--cfg-parallel: an uncond forward came without its cond forward")
        gathered = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(gathered, mine.contiguous(), group=self.group)
        if self.index == 1:
            self.pending.copy_(gathered[0])
        self.pending = None
        return with_sample(output, gathered[1], return_dict)

    def _batched(self, forward: Callable, args: tuple, kwargs: dict) -> Any:
        hidden = self._arg("hidden_states", args, kwargs)
        size = dist.get_world_size(self.group)
        if hidden is None or hidden.shape[0] % size:
            return forward(*args, **kwargs)
        args, kwargs = list(args), dict(kwargs)
        for name in self.batched_inputs:
            value = self._arg(name, args, kwargs)
            if not torch.is_tensor(value) or value.ndim == 0 or value.shape[0] != hidden.shape[0]:
                continue
            part = value.chunk(size, dim=0)[self.index]
            if name in kwargs or self.names.index(name) >= len(args):
                kwargs[name] = part
            else:
                args[self.names.index(name)] = part
        output = forward(*args, **kwargs)
        mine = sample_of(output).contiguous()
        gathered = [torch.empty_like(mine) for _ in range(size)]
        dist.all_gather(gathered, mine, group=self.group)
        return with_sample(output, torch.cat(gathered, dim=0), True)


# --------------------------------------------------------------------------------------------
# The running group
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _accelerator_count_on_cpu() -> Iterator[None]:
    """diffusers 0.42.1 resolves the parallel config with ``rank % torch.accelerator.device_count()``,
    a division by zero on a CPU-only torch. Present one device for that call only."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


class ParallelRun:
    """One torchrun process's view of the launch: its groups, and what it shares with the others."""

    def __init__(self, plan: ParallelPlan, device: str) -> None:
        self.plan = plan
        self.device = device
        local = env_world()[2]
        self.owns_group = False
        if not dist.is_initialized():
            if device == "cuda":
                torch.cuda.set_device(local)
                dist.init_process_group("nccl", device_id=torch.device("cuda", local))
            else:
                dist.init_process_group("gloo")
            self.owns_group = True
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\.hooks\.context_parallel")
        self.rank = dist.get_rank()
        # A CPU side channel with a short timeout, for the outcome of each video (``agree_outcome``):
        # the main group's timeout (NCCL's, minutes) is what a rank waits on when another has failed.
        self.control = dist.new_group(backend="gloo", timeout=timedelta(seconds=OUTCOME_WAIT_S))
        self.lost = False
        if dist.get_world_size() != plan.world_size:
            raise UsageError(f"the process group has {dist.get_world_size()} ranks, the plan {plan.world_size}")
        cp = plan.cp
        # Ranks are laid out cfg x ring x ulysses (Ulysses innermost, so torchrun's node-by-node
        # numbering keeps each all-to-all on one node). cp_group: the ranks of one CFG branch
        # (None = all); cfg_group: the ranks holding the same share of both branches.
        self.cfg_index, self.cp_index = divmod(self.rank, cp)
        self.cp_group = self.cfg_group = None
        if plan.cfg > 1:
            for c in range(plan.cfg):  # every rank creates every group, in the same order
                group = dist.new_group([c * cp + i for i in range(cp)])
                if c == self.cfg_index:
                    self.cp_group = group
            for i in range(cp):
                group = dist.new_group([c * cp + i for c in range(plan.cfg)])
                if i == self.cp_index:
                    self.cfg_group = group
        self.enabled = False
        self.mesh = None
        if cp > 1:
            self.mesh = dist.device_mesh.init_device_mesh(
                "cuda" if device == "cuda" else "cpu", (plan.cfg, plan.ring, plan.ulysses),
                mesh_dim_names=("cfg", "ring", "ulysses"),
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- enabling ---------------------------------------------------------------------------------
    def enable(self, pipe: Any, transformers: list[torch.nn.Module]) -> None:
        """Enable context (and CFG) parallelism on the loaded, already cached, transformers."""
        from diffusers import ContextParallelConfig

        from .caches import base as cache_base

        plan = self.plan
        if plan.cfg > 1:
            self._check_branch_local_caches(transformers)
        separate_cfg = plan.cfg > 1 and plan.cfg_layout == "separate"
        cache_base.set_decision_group(self.cp_group if separate_cfg else None)

        family = adapter_named(plan.family)

        def cfg_active() -> bool | None:
            return family.cfg_active(pipe)

        for tr in transformers:
            if plan.cp > 1:
                self._enable_cp(tr, ContextParallelConfig(ring_degree=plan.ring, ulysses_degree=plan.ulysses,
                                                          mesh=self.mesh))
            if plan.cfg > 1:
                hook = CFGParallelHook(tr, family, self.cfg_group, self.cfg_index, cfg_active)
                HookRegistry.check_if_exists_or_initialize(tr).register_hook(hook, HOOK_PREFIX + "cfg")
        self.enabled = True

    def _enable_cp(self, tr: torch.nn.Module, config: Any) -> None:
        """diffusers' context parallelism, with what the family's adapter adds around it (a plan for a
        model without one, its own attention processors, split and mask hooks)."""
        plan = self.plan
        family = adapter_named(plan.family)
        family.prepare_cp(tr)  # may put new attention processors in place: the backend is set after it
        if plan.ring > 1:
            tr.set_attention_backend(RING_BACKENDS[plan.attention])
        elif plan.attention not in ("auto", "sdpa"):
            from .loading import ATTENTION

            tr.set_attention_backend(ATTENTION[plan.attention][0])
        with _accelerator_count_on_cpu():
            tr.enable_parallelism(config=config, cp_plan=family.cp_plan())
        family.finish_cp(tr, plan, config)

    @staticmethod
    def _check_branch_local_caches(transformers: list[torch.nn.Module]) -> None:
        """Under CFG parallelism the branches live on different ranks: a cache that shares state
        between them (FasterCache's CFG-Cache) cannot work there."""
        from .caches import base as cache_base

        for tr in transformers:
            hook = cache_base.forward_hook(tr)
            if hook is None:
                continue
            cls = type(hook)
            # A method says so with a ``branch_local`` class attribute; without one, keeping state
            # outside the per-branch states (``reset_shared`` / ``shared_tensors``) counts as sharing.
            local = getattr(cls, "branch_local", None)
            if local is None:
                local = (cls.shared_tensors is cache_base.TransformerHook.shared_tensors
                         and cls.reset_shared is cache_base.TransformerHook.reset_shared)
            if not local:
                raise UsageError(f"--cfg-parallel: the {hook.method} cache shares state between the cond and "
                                 "uncond branches, which run on different ranks; drop --cfg-parallel "
                                 f"(use --ulysses {dist.get_world_size()}) or choose another cache")

    # -- sharing ----------------------------------------------------------------------------------
    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.device == "cuda" else torch.device("cpu")

    def agree_flags(self, flags: list[bool]) -> list[bool]:
        """Rank 0's flags on every rank (resume decisions: one disk, one answer)."""
        t = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=self._tensor_device())
        dist.broadcast(t, src=0)
        return [bool(v) for v in t.tolist()]

    def gather_json(self, obj: Any, group: Any = None) -> list[Any]:
        """Every rank's JSON-serialisable ``obj``, on every rank, in rank order (no pickle).
        ``group``: the control group (CPU tensors) instead of the main one."""
        dev = torch.device("cpu") if group is not None else self._tensor_device()
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=dev)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size, group=group)
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
        padded[: data.numel()] = data
        parts = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return [json.loads(bytes(p[: int(s.item())].tolist()).decode()) for p, s in zip(parts, sizes)]

    def agree_outcome(self, error: str | None) -> str | None:
        """After each video, every rank's outcome on every rank: None when all finished it, else the
        first failing rank's error (so rank 0 reports a failure that happened elsewhere).

        A rank whose video failed gets here early; the others get here only if they could leave the
        video too (every rank failed at the same point, or the failure came after the last
        collective). If they cannot (they wait inside the video for the failed rank), nothing can
        bring the launch back in step: after ``VIDCACHE_RANK_WAIT_S`` (60 s) this raises RankLost
        and the CLI ends the process, which makes torchrun stop the others.
        """
        try:
            errors = self.gather_json(error, group=self.control)
        except (RuntimeError, dist.DistError):  # timed out, or a peer is gone
            self.lost = True
            first = f"{error}; " if error else ""
            raise RankLost(
                f"rank {self.rank}: {first}the ranks could not agree on the video's outcome within "
                f"{OUTCOME_WAIT_S:g} s (a rank failed inside it while the others wait there for it, or a "
                "rank is gone); stopping the launch: run again to resume"
            ) from None
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if not failed:
            return None
        rank, first = failed[0]
        return first if len(failed) == len(errors) else f"rank {rank}: {first}"

    def merge_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The cache statistics one process would report.

        Ranks that share a branch record the same forwards; under CFG parallelism on Wan each
        branch's records live on its own ranks, so the cond and uncond leaders' records are merged,
        step by step (cond before uncond, as one process runs them), and the ratios recomputed.
        """
        if not (self.plan.cfg > 1 and self.plan.cfg_layout == "separate"):
            return stats
        everyone = self.gather_json(stats)
        leaders = [everyone[c * self.plan.cp] for c in range(self.plan.cfg)]
        return merge_branch_stats(leaders)

    def report(self, peak_bytes: int) -> dict[str, Any]:
        """The report's ``parallel`` entry; gathers every rank's peak memory (a collective)."""
        peaks = [int(p) for p in self.gather_json(int(peak_bytes))]
        return self.plan.report() | {"peak_bytes_per_rank": peaks}

    def close(self) -> None:
        from .caches import base as cache_base

        cache_base.set_decision_group(None)
        if self.lost:  # a peer may still sit in a collective: tearing the group down could wait on it
            return
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def merge_branch_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-branch cache statistics (Wan under CFG parallelism) into one process's view."""
    first = parts[0]
    if not any(p.get("per_step") for p in parts):
        return first
    per_step = sorted((e for p in parts for e in p.get("per_step", [])),
                      key=lambda e: (e["step"], e.get("expert", 0)))  # stable: cond before uncond
    blocks_run = sum(e["blocks"][0] for e in per_step)
    blocks_total = sum(e["blocks"][1] for e in per_step)
    attn = [v for e in per_step for v in e["attention"].values()]
    reused = sum(1 for e in per_step
                 if e["blocks"][0] < e["blocks"][1] or any(v[0] < v[1] for v in e["attention"].values()))
    warnings_ = list(dict.fromkeys(w for p in parts for w in p.get("warnings", [])))
    if reused:
        warnings_ = [w for w in warnings_ if "never reused" not in w]
    merged = dict(first)
    merged.update({
        "compute_ratio": blocks_run / blocks_total if blocks_total else 1.0,
        "attention_compute_ratio": (sum(v[0] for v in attn) / sum(v[1] for v in attn)
                                    if attn and sum(v[1] for v in attn) else 1.0),
        "steps_reused": reused,
        "forwards": len(per_step),
        "per_step": per_step,
        "memory_bytes": max(int(p.get("memory_bytes", 0)) for p in parts),
        "warnings": warnings_,
    })
    return merged

