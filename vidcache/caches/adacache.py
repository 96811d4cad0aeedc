"""AdaCache with MoReg (Meta, arXiv 2411.02397): reuse the whole block stack for a number of steps
that adapts to how fast the content changes, measured on one "metric" block.

In the paper every block skips on the same steps and a skipped block only adds its cached residual,
so the whole thing equals caching one stack residual per branch (cache context) plus the previous
residual of the metric block. That is what we do, with TeaCache's machinery (``TeaCacheBlockHook``:
the head block decides, skips by adding the stack residual, later blocks pass through, the tail
stores ``output - input`` of the stack; CogVideoX keeps both streams' residuals); only the decision
differs.

Schedule, per branch (cache context), steps counted from 0 out of ``N``:

* compute on step 0, on the last two steps (``i >= N - 2``), when no residual is cached yet (the
  first forward of a branch, or of Wan 2.2's second expert), and when ``i >= last + rate``;
  otherwise skip the stack (add the cached residual).
* on a computed step, after the metric block ran: ``c = ||r_i - r_last||_1 / ||r_last||_1`` for the
  metric block's residual ``r`` (video tokens, fp32), divided by ``i - last`` (steps since the last
  compute); with MoReg, ``c *= m + |mograd_mul * (m - m_prev) / (i - last)|`` where, inside the
  MoReg window, ``m = (||r[:, S:] - r[:, :-S]||_1 / (||r[:, S:]||_1 + ||r[:, :-S]||_1) / 0.385) ** 8``
  (``S`` = tokens per latent frame: how much the residual differs from one frame to the next) and
  ``m = 1`` outside it; ``m_prev`` starts at 1 and is updated on every computed step (official code).
  The next reuse length is ``rate = codebook(c)``: the rate of the first threshold ``c`` falls
  below, else the last entry's. Without a previous metric residual, ``rate = 1``.

The codebook is a list of ``[threshold, steps]`` pairs in ascending thresholds. Paper codebooks:
100 steps ``[[0.03, 12], [0.05, 10], [0.07, 8], [0.09, 6], [0.11, 4], [1.0, 3]]``; 30 steps "fast"
``[[0.08, 6], [0.16, 5], [0.24, 4], [0.32, 3], [0.40, 2], [1.0, 1]]`` and "slow"
``[[0.08, 3], [0.16, 2], [0.24, 1], [0.32, 1], [0.40, 1], [1.0, 1]]``. MoReg windows: steps 4..26
of 30 and 10..90 of 100, counted from 1; here 0-based, ``[3, 25]`` and ``[9, 89]``.

How codebooks follow the step count (ours; the paper gives the two sets only). A codebook is stated
for ``codebook_steps`` steps. For a run of ``N`` steps it is rescaled by ``k = N / codebook_steps``:

* reuse lengths ``max(1, floor(steps * k))``: a reuse covers the same fraction of the trajectory
  (floor: never longer than the reference fraction, the quality side);
* thresholds ``threshold / k``: ``c`` is a change *per step*, and per-step changes shrink as ``1/N``
  when the same trajectory is cut into more steps (the paper's two codebooks agree: its 100-step
  thresholds are ~1/3 of its 30-step ones);
* the MoReg window ``round(lo * k), round(hi * k)``.

The presets state codebooks already scaled this way from the 30-step codebooks for each model's
default step count (nearest reference in log-steps: 30 for 20..54 steps), so ``codebook_steps``
equals the preset's ``steps``; a run with another step count rescales them again and the report's
``cache.params`` says so (``codebook_scaled_for_steps``, ``codebook_used``, ``moreg_window_used``).

Rank agreement: the only device read is on computed steps with a previous metric residual: the two
(four with MoReg) L1 sums go through ``base.agreed_values`` in one call, so under context
parallelism every rank sums the same global numbers and picks the same rate. Sequence shards are
contiguous, so ``r[:, S:] - r[:, :-S]`` per shard misses only the pairs across a shard boundary;
each rank also receives the first ``S`` tokens of every shard (one small all-gather, where the
official code gathers the whole residual) and adds its boundary pairs: the sums equal one
process's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.geometry import patch_sizes
from . import base
from .teacache import TeaCacheBlockHook, TeaCacheConfig, TeaCacheState

FAST_30 = [[0.08, 6], [0.16, 5], [0.24, 4], [0.32, 3], [0.40, 2], [1.0, 1]]
SLOW_30 = [[0.08, 3], [0.16, 2], [0.24, 1], [0.32, 1], [0.40, 1], [1.0, 1]]
PAPER_100 = [[0.03, 12], [0.05, 10], [0.07, 8], [0.09, 6], [0.11, 4], [1.0, 3]]


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

    def __post_init__(self) -> None:
        self.codebook = _check_codebook(self.codebook)
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
    return [[round(th / k, 6), max(1, math.floor(rate * k + 1e-9))] for th, rate in codebook]


def scale_window(window: tuple[int, int], from_steps: int, to_steps: int) -> tuple[int, int]:
    k = to_steps / from_steps
    return round(window[0] * k), round(window[1] * k)


def lookup(codebook: list, c: float) -> int:
    """The reuse length of the first threshold ``c`` falls below, else the last entry's."""
    for th, rate in codebook:
        if c < th:
            return int(rate)
    return int(codebook[-1][1])


def motion_factor(m: float, m_prev: float, since: int, config: AdaCacheConfig) -> float:
    """MoReg's multiplier ``m + |mograd_mul * (m - m_prev) / since|`` (``m`` already normalised)."""
    return m + abs(config.mograd_mul * (m - m_prev) / since)


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
        self.last_compute: int | None = None
        self.next_compute = 0
        self.metric: torch.Tensor | None = None  # metric block's residual at the last compute
        self.m_prev = 1.0
        self.frame_tokens: int | None = None  # S, this forward's tokens per latent frame
        self.frames = 0  # latent frames after temporal patching

    def tensors(self):
        yield from super().tensors()
        yield from base.iter_tensors(self.metric)


class AdaCacheBlockHook(TeaCacheBlockHook):
    """TeaCache's stack skip with AdaCache's decision; the metric block also measures."""

    def __init__(self, *args: Any, ada: AdaCacheConfig, top: AdaCacheForwardHook, metric: bool, **kw: Any):
        super().__init__(*args, **kw)
        self.ada, self.top, self.metric = ada, top, metric

    def _decide(self, module, state: AdaCacheState, args, kwargs, hidden) -> bool:
        info = state.info
        n = info.num_steps
        forced = state.residual is None or info.step == 0 or (n is not None and info.step >= n - 2)
        compute = forced or info.step >= state.next_compute
        if not compute:
            state.record.detail = {"next_compute": state.next_compute}
        return compute

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.metric:
            return super().new_forward(module, *args, **kwargs)
        state = self.states.get_state()
        hidden_in = base.block_inputs(self.meta, args, kwargs)[0]
        out = super().new_forward(module, *args, **kwargs)
        if not state.skipping:
            hidden_out = base.block_outputs(self.meta, out)[0]
            self._measure(state, hidden_out - hidden_in)
        return out

    def _measure(self, state: AdaCacheState, r: torch.Tensor) -> None:
        """On a computed step: the distance, MoReg and the next reuse length."""
        info, config = state.info, self.ada
        sched = self.top.schedule(info.num_steps)
        kept, r = r.detach(), r.detach().float()  # kept in the model's dtype, measured in fp32
        detail: dict[str, Any] = {}
        if state.metric is None or state.last_compute is None or state.metric.shape != r.shape:
            rate = 1
        else:
            since = max(1, info.step - state.last_compute)
            prev = state.metric.float()
            sums = [(r - prev).abs().sum(), prev.abs().sum()]
            S = state.frame_tokens
            lo, hi = sched.moreg_window
            # rank-independent: the global frame count, never this rank's share of the sequence
            in_window = config.moreg and lo <= info.step <= hi and S is not None and state.frames > 1
            if in_window:
                sums += motion_sums(r, S)
            values = base.agreed_values(torch.stack(sums))
            c = (values[0] / values[1] if values[1] > 0 else float("inf")) / since
            detail["distance"] = c
            if config.moreg:
                m = normalise_motion(values[2] / values[3], config) if in_window and values[3] > 0 else 1.0
                factor = motion_factor(m, state.m_prev, since, config)
                state.m_prev = m
                c *= factor
                detail.update(motion=m, moreg_factor=factor)
            rate = lookup(sched.codebook, c)
        state.metric = kept
        state.last_compute = info.step
        state.next_compute = info.step + rate
        state.record.detail = {**detail, "rate": rate, "next_compute": state.next_compute}


class AdaCacheForwardHook(base.TransformerHook):
    """Clock and statistics (base), tokens per frame for MoReg, the step-count rescaling."""

    def __init__(self, *args: Any, config: AdaCacheConfig, patch: tuple[int, int, int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config, self.patch = config, patch  # (t, h, w)
        self._schedule = schedule_for(config, None)

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
        )
        base.register(block, hook, "adacache")
    base.attach(transformer, top)
