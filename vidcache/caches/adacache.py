"""AdaCache with MoReg (Meta, arXiv 2411.02397): reuse the whole block stack for a number of steps
that adapts to how fast the content changes, measured on one "metric" block.

In the paper every block skips on the same steps and a skipped block only adds its cached residual,
so the whole thing equals caching one stack residual per branch (cache context) plus the previous
output of the metric block's attention. That is what we do, with TeaCache's machinery
(``TeaCacheBlockHook``: the head block decides, skips by adding the stack residual, later blocks pass
through, the tail stores ``output - input`` of the stack; CogVideoX keeps both streams' residuals);
only the decision differs.

Schedule, one for all CFG branches of a transformer, steps counted from 0 out of ``N``:

* compute on step 0, on the last two steps (``i >= N - 2``), when no residual is cached yet (the
  first forward of a branch, or of Wan 2.2's second expert), and when ``i >= last + rate``;
  otherwise skip the stack (each branch adds its own cached residual).
* one schedule for both branches, as in the official code, which decides once for its batched
  [cond, uncond] forward from norms over the whole batch: the L1 sums below are summed over the
  branches (CogVideoX's batch holds both; Wan's separate forwards each add theirs and the step's
  uncond forward decides). It matters: the guided prediction ``u + g (c - u)`` carries a
  mismatch between a reused branch and a computed one ``g`` times, while errors of two branches
  reused together largely cancel; per-branch schedules cost 1.6 dB at equal compute on the tiny
  model. Under ``--cfg-parallel`` (the branches on two ranks) it is refused.
* on a computed step: ``c = ||r_i - r_last||_1 / ||r_last||_1`` divided by the reuse length in
  force (``rate``, 1 before the first measurement): the official ``cache_diff / prev_rate``, which on
  the forced last steps differs from the steps since the last compute. With MoReg,
  ``c *= m + |mograd_mul * (m - m_prev) / rate|`` where, inside the MoReg window,
  ``m = (||r[:, S:] - r[:, :-S]||_1 / (||r[:, S:]||_1 + ||r[:, :-S]||_1) / 0.385) ** 8``
  (``S`` = tokens per latent frame: how much the signal differs from one frame to the next) and
  ``m = 1`` outside it; ``m_prev`` starts at 1 and is updated on every computed step (official code).
  The next reuse length is ``rate = codebook(c)``: the rate of the first threshold ``c`` falls
  below, else the last entry's. Without a previous measurement, ``rate = 1``.

The signal ``r``: the official code measures the metric block's temporal-attention residual
(``gate_msa * attn``, ``cache_res = 't-attn'``, block 13 of Open-Sora's STDiT3) for the distance and
MoReg alike, and its codebooks were tuned on that signal. Wan, CogVideoX and HunyuanVideo have no
temporal attention; the nearest signal is the metric block's self-attention output (video tokens),
read by a hook on the adapter's "spatial" attention module of that block (Wan / CogVideoX ``attn1``,
HunyuanVideo ``attn``), before its gate: the gate is a per-channel scale that follows the timestep
and would add the timestep's own change to a measure of the content's change.

The codebook is a list of ``[threshold, steps]`` pairs in ascending thresholds. Paper codebooks:
100 steps ``[[0.03, 12], [0.05, 10], [0.07, 8], [0.09, 6], [0.11, 4], [1.0, 3]]``; 30 steps "fast"
``[[0.08, 6], [0.16, 5], [0.24, 4], [0.32, 3], [0.40, 2], [1.0, 1]]`` and "slow"
``[[0.08, 3], [0.16, 2], [0.24, 1], [0.32, 1], [0.40, 1], [1.0, 1]]``. MoReg windows: steps 4..26
of 30 and 10..90 of 100, counted from 1; here 0-based, ``[3, 25]`` and ``[9, 89]``.

How codebooks follow the step count (the paper gives the two books only; the rule is read from
them). A codebook is stated for ``codebook_steps`` steps; for a run of ``N`` steps, with
``k = N / codebook_steps``:

* thresholds ``threshold / k``: ``c`` is a change *per step*, and per-step changes shrink as ``1/N``
  when the same trajectory is cut into more steps. The books agree: the 100-step thresholds are
  2.7-3.6 times smaller than the 30-step ones (0.08/0.03 ... 0.40/0.11), about 100/30 = 3.3.
* reuse lengths ``max(1, floor(steps * k ** p))`` with ``p = ln 2 / ln(100/30) = 0.576``: from 30 to
  100 steps the books' five adaptive entries exactly double (6, 5, 4, 3, 2 -> 12, 10, 8, 6, 4) while
  the step count grows 3.33 times, so a reuse length grows as ``k ** p``, not as ``k`` (a reuse
  of the same *fraction* of the trajectory would be 20, 16, 13, 10, 6 at 100 steps: the authors
  reused less, since the metric is noisier per step at fine steps and an error compounds over
  more reused steps). floor: never longer than the books' rule, the quality side, except that an
  entry that reuses (2 steps or more) keeps reusing at fewer steps (2 at least: a codebook whose
  longest reuse is 2 would otherwise never reuse below its stated step count). The catch-all entry
  (1 -> 3) is the one the power does not match (it gives 2).
* the MoReg window ``round(lo * k), round(hi * k)`` (a fraction of the trajectory, as in the books).

The presets state codebooks already scaled this way from the 30-step codebooks for each model's
default step count, so ``codebook_steps`` equals the preset's ``steps``; a run with another step
count rescales them again and the report's ``cache.params`` says so (``codebook_scaled_for_steps``,
``codebook_used``, ``moreg_window_used``).

Rank agreement: the only device read is on computed steps with a previous measurement: the two
(four with MoReg) L1 sums go through ``base.agreed_values`` in one call, so under context
parallelism every rank sums the same global numbers and picks the same rate. Sequence shards are
contiguous, so ``r[:, S:] - r[:, :-S]`` per shard misses only the pairs across a shard boundary;
each rank also receives the first ``S`` tokens of every shard (one small all-gather, where the
official code gathers the whole signal) and adds its boundary pairs: the sums equal one process's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.geometry import patch_sizes
from . import base
from .teacache import TeaCacheBlockHook, TeaCacheConfig, TeaCacheState, check_forecast

FAST_30 = [[0.08, 6], [0.16, 5], [0.24, 4], [0.32, 3], [0.40, 2], [1.0, 1]]
SLOW_30 = [[0.08, 3], [0.16, 2], [0.24, 1], [0.32, 1], [0.40, 1], [1.0, 1]]
PAPER_100 = [[0.03, 12], [0.05, 10], [0.07, 8], [0.09, 6], [0.11, 4], [1.0, 3]]
# reuse lengths grow as (N / N0) ** REUSE_EXPONENT: the paper's books double them from 30 to 100 steps
REUSE_EXPONENT = math.log(2) / math.log(100 / 30)


def _check_codebook(value: Any) -> list[list[float | int]]:
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    out: list[list[float | int]] = []
    for pair in value if ok else ():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            ok = False
            break
        th, rate = pair
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th) or th <= 0:
            ok = False
            break
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            ok = False
            break
        out.append([float(th), rate])
    if not ok or any(a[0] >= b[0] for a, b in zip(out, out[1:])):
        raise ValueError(
            "'codebook' must be [threshold, steps] pairs with ascending positive thresholds and "
            f"integer steps >= 1, e.g. [[0.08, 6], [1.0, 1]]; got {value!r}"
        )
    return out


@dataclass
class AdaCacheConfig:
    """``metric_block``: index into the block stack (absent = the middle block, ``L // 2``)."""

    codebook: list = field(default_factory=lambda: [list(p) for p in FAST_30])
    codebook_steps: int = 30
    metric_block: int | None = None
    moreg: bool = False
    moreg_window: tuple[int, int] = (3, 25)
    moreg_norm: float = 0.385
    moreg_power: float = 8.0
    mograd_mul: float = 10.0
    forecast: str = "residual"

    def __post_init__(self) -> None:
        self.codebook = _check_codebook(self.codebook)
        check_forecast(self.forecast)
        base.check_int("codebook_steps", self.codebook_steps, 1)
        if self.metric_block is not None:
            base.check_int("metric_block", self.metric_block, 0)
        base.check_bool("moreg", self.moreg)
        w = self.moreg_window
        if not (isinstance(w, (list, tuple)) and len(w) == 2) or w[0] > w[1]:
            raise ValueError(f"'moreg_window' must be two step indices [lo, hi] with lo <= hi, got {w!r}")
        self.moreg_window = (base.check_int("moreg_window", w[0], 0), base.check_int("moreg_window", w[1], 0))
        self.moreg_norm = base.check_float("moreg_norm", self.moreg_norm)
        if self.moreg_norm <= 0:
            raise ValueError("'moreg_norm' must be > 0")
        self.moreg_power = base.check_float("moreg_power", self.moreg_power)
        self.mograd_mul = base.check_float("mograd_mul", self.mograd_mul)


# ---------------------------------------------------------------------------- the rule


def scale_codebook(codebook: list, from_steps: int, to_steps: int) -> list[list[float | int]]:
    """The codebook for ``to_steps`` steps, from one stated for ``from_steps`` (module docstring)."""
    if from_steps == to_steps:
        return [list(p) for p in codebook]
    k = to_steps / from_steps
    grow = k**REUSE_EXPONENT
    # floor (the quality side), but a reuse entry stays one: at fewer steps than stated a length of 2
    # would floor to 1 and the codebook would never reuse (the tiny preset at 15 of its 25 steps)
    return [[round(th / k, 6), max(min(rate, 2), math.floor(rate * grow + 1e-9))] for th, rate in codebook]


def scale_window(window: tuple[int, int], from_steps: int, to_steps: int) -> tuple[int, int]:
    k = to_steps / from_steps
    return round(window[0] * k), round(window[1] * k)


def lookup(codebook: list, c: float) -> int:
    """The reuse length of the first threshold ``c`` falls below, else the last entry's."""
    for th, rate in codebook:
        if c < th:
            return int(rate)
    return int(codebook[-1][1])


def motion_factor(m: float, m_prev: float, rate: int, config: AdaCacheConfig) -> float:
    """MoReg's multiplier ``m + |mograd_mul * (m - m_prev) / rate|`` (``m`` already normalised;
    ``rate``: the reuse length in force)."""
    return m + abs(config.mograd_mul * (m - m_prev) / rate)


def normalise_motion(raw: float, config: AdaCacheConfig) -> float:
    return (raw / config.moreg_norm) ** config.moreg_power


@dataclass(frozen=True)
class Schedule:
    """The codebook and MoReg window in force for a run of ``steps`` steps."""

    steps: int | None
    codebook: list
    moreg_window: tuple[int, int]


def schedule_for(config: AdaCacheConfig, steps: int | None) -> Schedule:
    if steps is None or steps == config.codebook_steps:
        return Schedule(steps, config.codebook, config.moreg_window)
    return Schedule(
        steps,
        scale_codebook(config.codebook, config.codebook_steps, steps),
        scale_window(config.moreg_window, config.codebook_steps, steps),
    )


def motion_sums(r: torch.Tensor, S: int) -> list[torch.Tensor]:
    """``[sum|r[:, S:] - r[:, :-S]|, sum|r[:, S:]| + sum|r[:, :-S]|]`` (``r``: [batch, tokens, dim]).

    Under context parallelism ``r`` is this rank's contiguous share of the sequence (shares may
    differ in length: CogVideoX's joint split). The pairs inside the share are summed here; for the
    pairs that cross into later shares every rank receives the first ``S`` tokens (zero-padded) and
    the length of every share, so that the sums over ranks equal one process's sums exactly."""
    a, b = r[:, S:], r[:, :-S]
    diff, mag = (a - b).abs().sum(), a.abs().sum() + b.abs().sum()
    dist = torch.distributed
    group = base._decision_group
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
        return [diff, mag]
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = r.shape[1]
    lengths = [torch.zeros(1, dtype=torch.int64, device=r.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([n], dtype=torch.int64, device=r.device), group=group)
    head = torch.zeros(r.shape[0], S, *r.shape[2:], dtype=r.dtype, device=r.device)
    head[:, : min(n, S)] = r[:, :S]
    heads = [torch.empty_like(head) for _ in range(world)]
    dist.all_gather(heads, head, group=group)
    sizes = [int(x.item()) for x in lengths]
    following = torch.cat([h[:, : min(size, S)] for h, size in zip(heads[rank + 1:], sizes[rank + 1:])] or
                          [r[:, :0]], dim=1)[:, :S]
    m = min(n, S)  # my last m tokens pair with following[:, S - m + t]
    pairs = max(0, following.shape[1] - (S - m))
    if pairs > 0:
        tail, partner = r[:, n - m: n - m + pairs], following[:, S - m: S - m + pairs]
        diff = diff + (partner - tail).abs().sum()
        mag = mag + partner.abs().sum() + tail.abs().sum()
    return [diff, mag]


# ---------------------------------------------------------------------------- hooks


class AdaCacheState(TeaCacheState):
    def __init__(self) -> None:
        super().__init__()
        self.attention: torch.Tensor | None = None  # this forward's metric attention output
        self.metric: torch.Tensor | None = None  # this branch's metric attention output at the last compute
        self.frame_tokens: int | None = None  # S, this forward's tokens per latent frame
        self.frames = 0  # latent frames after temporal patching

    def tensors(self):
        yield from super().tensors()
        yield from base.iter_tensors(self.metric)


class Joint:
    """The one schedule every CFG branch of a transformer follows (module docstring): the official
    code decides once for its batched [cond, uncond] forward, from norms over the whole batch; with
    separate CFG forwards (Wan) each branch's L1 sums are pooled here and the step's last branch
    decides. Host numbers only."""

    def __init__(self) -> None:
        self.last_compute: int | None = None
        self.next_compute = 0
        self.rate = 1  # the reuse length in force (the official initial ``attn_cache_rate``)
        self.m_prev = 1.0
        self.pool: list[float] | None = None  # this step's summed L1 sums so far

    def add(self, values: list[float]) -> None:
        self.pool = values if self.pool is None else [a + b for a, b in zip(self.pool, values)]

    def decide(self, step: int, codebook: list, moreg: bool, config: AdaCacheConfig) -> dict[str, Any]:
        """The next reuse length from the pooled sums (``rate = 1`` without a measurement)."""
        detail: dict[str, Any] = {}
        rate, pool = 1, self.pool
        if pool is not None:
            c = (pool[0] / pool[1] if pool[1] > 0 else float("inf")) / self.rate
            detail["distance"] = c
            if config.moreg:
                m = normalise_motion(pool[2] / pool[3], config) if moreg and len(pool) > 2 and pool[3] > 0 else 1.0
                factor = motion_factor(m, self.m_prev, self.rate, config)
                self.m_prev = m
                c *= factor
                detail.update(motion=m, moreg_factor=factor)
            rate = lookup(codebook, c)
        self.last_compute, self.rate, self.next_compute, self.pool = step, rate, step + rate, None
        return {**detail, "rate": rate, "next_compute": self.next_compute}


class AdaCacheBlockHook(TeaCacheBlockHook):
    """TeaCache's stack skip with AdaCache's decision; the metric block also measures."""

    def __init__(self, *args: Any, ada: AdaCacheConfig, top: AdaCacheForwardHook, metric: bool, **kw: Any):
        super().__init__(*args, **kw)
        self.ada, self.top, self.metric = ada, top, metric

    def _decide(self, module, state: AdaCacheState, args, kwargs, hidden) -> bool:
        info, joint = state.info, self.top.joint
        n = info.num_steps
        forced = state.residual is None or info.step == 0 or (n is not None and info.step >= n - 2)
        compute = forced or info.step >= joint.next_compute
        if not compute:
            state.record.detail = {"next_compute": joint.next_compute}
        return compute

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.metric:
            return super().new_forward(module, *args, **kwargs)
        state = self.states.get_state()
        state.attention = None
        out = super().new_forward(module, *args, **kwargs)
        if not state.skipping:
            if state.attention is None:
                raise RuntimeError("adacache: the metric block's attention did not run in a computed forward")
            self._measure(state, state.attention)
            state.attention = None
        return out

    def _measure(self, state: AdaCacheState, r: torch.Tensor) -> None:
        """On a computed forward: this branch's L1 sums into the step's pool (one rank-agreed read);
        the step's last branch then picks the next reuse length for all of them."""
        info, config, joint = state.info, self.ada, self.top.joint
        sched = self.top.schedule(info.num_steps)
        r = base.compact(r.detach())  # the video tokens only, in the model's dtype; sums accumulate in fp32
        prev = state.metric
        lo, hi = sched.moreg_window
        # rank-independent: the global frame count, never this rank's share of the sequence
        in_window = config.moreg and lo <= info.step <= hi and state.frame_tokens is not None and state.frames > 1
        if prev is not None and prev.shape == r.shape and joint.last_compute is not None:
            sums = [base.l1(r, prev), base.l1(prev)]
            if in_window:
                sums += motion_sums(r, state.frame_tokens)
            joint.add(base.agreed_values(torch.stack(sums)))
        state.metric = r
        if self.top.decides(info):
            state.record.detail = joint.decide(info.step, sched.codebook, in_window, config)


class MetricAttentionHook(base.BranchHook):
    """On the metric block's self-attention module: hands its output (the video tokens) to the
    block's decision; it only runs when the block computes."""

    _is_stateful = False

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.states.has_context:
            self.states.get_state().attention = out[0] if isinstance(out, tuple) else out
        return out


class AdaCacheForwardHook(base.TransformerHook):
    """Clock and statistics (base), tokens per frame for MoReg, the step-count rescaling."""

    # one schedule for both CFG branches: under --cfg-parallel they live on different ranks
    branch_local = False

    def __init__(self, *args: Any, config: AdaCacheConfig, patch: tuple[int, int, int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config, self.patch = config, patch  # (t, h, w)
        self._schedule = schedule_for(config, None)
        self.joint = Joint()

    def reset_shared(self) -> None:
        self.joint = Joint()

    def decides(self, info: base.StepInfo) -> bool:
        """This forward is its step's last branch: Wan's uncond when CFG runs, else the only one."""
        if self.layout.cfg_layout == "separate" and self.link.cfg_active():
            return info.branch == "uncond"
        return True

    def schedule(self, steps: int | None) -> Schedule:
        if steps != self._schedule.steps:
            self._schedule = schedule_for(self.config, steps)
            for key in ("codebook_scaled_for_steps", "codebook_used", "moreg_window_used"):
                self.params.pop(key, None)
            if steps is not None and steps != self.config.codebook_steps:
                self.params.update(
                    codebook_scaled_for_steps=steps,
                    codebook_used=self._schedule.codebook,
                    moreg_window_used=list(self._schedule.moreg_window),
                )
        return self._schedule

    def run(self, module: torch.nn.Module, state: AdaCacheState, args: tuple, kwargs: dict) -> Any:
        self.schedule(state.info.num_steps)  # params show the codebook in force from step 0 on
        hidden = self.arg("hidden_states", args, kwargs)
        state.frame_tokens, state.frames = None, 0
        if torch.is_tensor(hidden) and hidden.ndim == 5:  # [B, C, F, H, W], or as the adapter says
            frames = hidden.shape[self.layout.frame_dim]
            state.frames = math.ceil(frames / self.patch[0])
            state.frame_tokens = (hidden.shape[-2] // self.patch[1]) * (hidden.shape[-1] // self.patch[2])
        return self.fn_ref.original_forward(*args, **kwargs)

    def never_fired_hint(self) -> str:
        return "every measured distance fell in a codebook entry of 1 step, or the run is too short"


def apply_adacache(
    transformer: torch.nn.Module,
    config: AdaCacheConfig,
    *,
    pipeline: base.PipelineLink | None = None,
) -> None:
    """Attach AdaCache to ``transformer``: a hook on every block and one on the transformer."""
    layout = base.layout_of(transformer)
    blocks = layout.blocks(transformer)
    metric = len(blocks) // 2 if config.metric_block is None else config.metric_block
    if metric >= len(blocks):
        raise base.CacheError(
            f"adacache: metric_block {metric} is out of range (this transformer has {len(blocks)} blocks)"
        )
    states = base.BranchStates(AdaCacheState)
    params = base.config_params(config)
    params["metric_block"] = metric
    top = AdaCacheForwardHook(
        "adacache", states, layout, transformer, params, pipeline,
        config=config, patch=patch_sizes(transformer.config),
    )
    block_key = blocks[metric][0]
    attention = [m for key, m, kind in layout.attention_modules(transformer)
                 if kind == "spatial" and key.rpartition(".")[0] == block_key]
    if not attention:
        raise base.CacheError(f"adacache: metric block {metric} has no self-attention module to measure")
    base.register(attention[0], MetricAttentionHook(states, block_key), "adacache.metric")
    never = TeaCacheConfig(thresh=0.0)  # TeaCache's own rule is not used; only its skip machinery
    for i, (key, block) in enumerate(blocks):
        hook = AdaCacheBlockHook(
            states,
            key,
            never,
            head=i == 0,
            tail=i == len(blocks) - 1,
            text_residual=layout.text_residual,
            indicator_from_norm1=False,
            ada=config,
            top=top,
            metric=i == metric,
            forecast=config.forecast,
        )
        base.register(block, hook, "adacache")
    base.attach(transformer, top)
