"""MixCache (our design on arXiv 2508.12691's three ideas): reuse at step, CFG and block granularity,
behind a context-aware trigger, with a choice per step that weighs expected error against compute
saved.

Only MixCache's abstract is public (METHODS.md §5); everything below is ours.

Granularities, and what each reuses
-----------------------------------
* **step**: skip the whole block stack of every branch; each branch adds its own cached stack
  residual (TeaCache-style; CogVideoX: both streams, HunyuanVideo: the image tokens). Saves the
  whole step: ``S = 1``.
* **cfg** (Wan; CogVideoX's batched halves; never HunyuanVideo, which is guidance-distilled): run
  the cond branch fully and rebuild uncond as ``cond + D``, ``D`` the cached ``uncond - cond``
  difference of the transformer outputs (fp32). On Wan the uncond forward is not run at all; on
  CogVideoX only the cond half of the batch runs. Saves one of two branches: ``S = 1/2``.
* **block**: run the stack but skip the ``n`` chosen blocks, each adding its own cached residual
  (both streams where the block has two). Saves ``S = n / L``. Only "candidate" blocks are cached
  (``block_window``, fractions of the depth; default the middle half, which also bounds memory).

Each reused quantity ``q`` (a branch's stack residual, a branch's block residual, ``D``) is refreshed
only by an exact computation of it: stack and block residuals on forwards where the branch runs
every block (full steps, and the cond branch of a cfg step on Wan), ``D`` on full steps.

Redundancy score of each granularity: expected error from measured drift rates
------------------------------------------------------------------------------
Whenever ``q`` is refreshed we measure how fast it moved since its previous refresh, per unit of
normalised time ``tau = t / 1000`` (the timestep the transformer receives):

    rate(q) = ||q_new - q_old||_1 / ||ref||_1 / (tau_old - tau_new)

with ``ref`` the stack output (video tokens) for stack and block residuals (so block errors add up
in the same unit as a step's), and the uncond output for ``D``. A quantity's rate is the larger of
its last two measurements (single-step measurements zigzag; the larger is the safe side). Per unit
of ``tau`` rather than per step: Wan's and HunyuanVideo's flow shift makes steps very uneven in
``t``, and features move with ``t``, not with the step index.

Reusing ``q`` at step ``k`` (timestep ``tau_k``, step length ``dtau_k = tau_k - tau_{k+1}``, from the
scheduler's schedule) puts an error of about ``rate(q) * (tau_refresh - tau_k)`` into the model's
output (its drift since the refresh), and the sampler moves the latent by output x ``dtau_k``; so
the step contributes ``e_k(q) = rate(q) * (tau_refresh - tau_k) * dtau_k`` to the latent, and the
score of reusing ``q`` now is the contributions accumulated since its refresh, this step included:
``E(q) = sum of e_j(q)``. Reuse is therefore cheap where steps are short (early, under flow shift)
and soon after a refresh, and expensive late in the trajectory where steps are long. All host
numbers: no device read at decision time.

* step: ``E_step = max over branches of E(stack residual)``
* cfg: ``E_cfg = E(D)``; its budget is in units of the uncond output, and the guided prediction
  ``u + g (c - u)`` carries ``(g - 1)`` times that error, so presets set
  ``cfg_budget = step_budget / (g - 1)`` for the model's default guidance ``g``.
* block: blocks sorted by ``E = max over branches of E(block residual)``; the cheapest are taken
  greedily while the running sum stays within the budget, the count within ``block_fraction * L``,
  and each block pays for itself (``1/L > weight * E / block_budget``); ``E_block`` = their sum.

The budgets ``step_budget``, ``cfg_budget``, ``block_budget`` make the three comparable:
``rho_g = E_g / budget_g`` is the share of its error budget a granularity would use. A granularity
is admissible when ``rho_g <= 1``. An exact refresh resets the accumulated error of what it
refreshed.

The choice
----------
Each step (decided once, on its first forward: Wan's cond; CogVideoX's and HunyuanVideo's only one):

    score_g = S_g - weight * rho_g     for every admissible, allowed granularity
    use the best score if it is > 0, else compute fully (score 0)

so a granularity is used only when the compute it saves outweighs ``weight`` times the share of its
error budget it consumes; ``weight`` > 1 leans to quality. **Streaks**: a granularity used
``max_streak`` steps in a row is not admissible on the next step (another granularity or a full
step comes in between); and since nothing refreshes the quantity being reused, its ``rho`` grows
every step until a full step refreshes it.

Step counts. ``start`` is a fraction of the steps; ``last_steps``, ``max_streak`` and the budgets are
stated for ``schedule_steps`` steps and follow the run's (``caches/steps.py``): the protected last
steps cover the same share, a streak and a run of reuse last ``k^0.58`` times as many steps, so the
budgets (an error that grows like ``m^2 / N^2`` over ``m`` reused steps) are scaled by
``k^(2 * 0.58 - 2)``.

The trigger (context-aware start)
---------------------------------
No reuse at all until (a) ``start * N`` steps have passed and (b) the trajectory has calmed down:
the stack-residual drift rate of every branch has fallen below ``trigger`` times the highest rate
seen so far in this video (scale-free, so one value fits every model). Once met, the trigger stays
on for the rest of the video; ``trigger = 0`` never meets it (every step computed). The last
``last_steps`` steps are always computed fully.

Device reads and ranks
----------------------
Decisions read host numbers only. Each exact forward reads its measurements (a few L1 sums) in one
``base.agreed_values`` call at its end, summed over ranks under context parallelism, so every rank
holds the same rates and takes the same decisions; the schedule is read to the host once per video.
Skipped forwards read nothing.

Memory: per branch one stack residual and one residual per candidate block (both streams where
there are two); plus ``D``. Wan-1.3B 480p with the default window: about
15 x 2 x 0.094 GiB in bf16; narrow ``block_window`` (or drop "block") on big models.

Statistics: every forward's record carries ``granularity`` (``full``, ``step``, ``cfg``, ``block``),
``rho`` and, on block steps, ``blocks_reused``; ``compute_ratio`` counts the blocks that really ran
(a block step's reused blocks, and their attention modules, count as not run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import base
from ._partial import block_attention_kinds, mark_partial
from .steps import StepScale, check_schedule_steps
from .teacache import check_forecast, forecast, stored

GRANULARITIES = ("step", "cfg", "block")


@dataclass
class MixCacheConfig:
    granularities: list = field(default_factory=lambda: list(GRANULARITIES))
    start: float = 0.1
    trigger: float = 0.9
    last_steps: int = 2
    step_budget: float = 0.005
    cfg_budget: float = 0.00125
    block_budget: float = 0.0025
    weight: float = 1.0
    max_streak: int = 3
    block_window: tuple[float, float] = (0.25, 0.75)
    block_fraction: float = 0.5
    forecast: str = "residual"
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        g = self.granularities
        if not isinstance(g, (list, tuple)) or any(x not in GRANULARITIES for x in g):
            raise ValueError(f"'granularities' must be a list of {', '.join(GRANULARITIES)}; got {g!r}")
        self.granularities = list(dict.fromkeys(g))
        for name in ("start", "trigger", "step_budget", "cfg_budget", "block_budget", "weight"):
            value = base.check_float(name, getattr(self, name))
            if value < 0:
                raise ValueError(f"'{name}' must be >= 0, got {value}")
            setattr(self, name, value)
        base.check_int("last_steps", self.last_steps, 0)
        base.check_int("max_streak", self.max_streak, 1)
        w = self.block_window
        if (
            not isinstance(w, (list, tuple))
            or len(w) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
            or not 0 <= w[0] <= w[1] <= 1
        ):
            raise ValueError(f"'block_window' must be two depth fractions [lo, hi], 0 <= lo <= hi <= 1; got {w!r}")
        self.block_window = (float(w[0]), float(w[1]))
        check_forecast(self.forecast)
        self.block_fraction = base.check_float("block_fraction", self.block_fraction)
        if not 0 < self.block_fraction <= 1:
            raise ValueError("'block_fraction' must be in (0, 1]")


# ---------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Plan:
    granularity: str  # "full", "step", "cfg" or "block"
    rho: float = 0.0
    skip: frozenset = frozenset()  # block indices reused on a block step
    reason: str | None = None  # why a full step was forced


FULL = Plan("full")


class Rate:
    """A drift rate: the larger of its last two measurements (single-step ones zigzag)."""

    __slots__ = ("last", "prev")

    def __init__(self) -> None:
        self.last: float | None = None
        self.prev: float | None = None

    def add(self, value: float) -> None:
        self.prev, self.last = self.last, value

    def value(self) -> float | None:
        if self.last is None:
            return None
        return self.last if self.prev is None else max(self.last, self.prev)


@dataclass
class _Branch:
    """Host numbers of one branch: when its residuals were last exact, how fast they drift, and
    the error their reuse has accumulated since."""

    tau: float | None = None  # tau of the last exact forward
    rate_step: Rate = field(default_factory=Rate)
    rate_block: dict[int, Rate] = field(default_factory=dict)
    acc_step: float = 0.0
    acc_block: dict[int, float] = field(default_factory=dict)

    def refreshed(self, tau: float) -> None:
        self.tau, self.acc_step, self.acc_block = tau, 0.0, {}


class _Shared:
    """What the decision needs across branches; reset with every video."""

    def __init__(self) -> None:
        self.branches: dict[str, _Branch] = {}
        self.plan: Plan = FULL
        self.plan_step: int | None = None
        self.triggered = False
        self.peak_rate = 0.0
        self.last_granularity: str | None = None
        self.streak = 0
        self.delta: torch.Tensor | None = None  # D = uncond - cond (fp32), per CFG layout
        self.delta_tau: float | None = None
        self.rate_cfg = Rate()
        self.acc_cfg = 0.0
        self.cond_out: torch.Tensor | None = None  # Wan: cond's output of the current step
        self.cond_step: int | None = None
        self.taus: list[float] | None = None  # the video's schedule, tau per step
        self.taus_key: Any = None

    def tensors(self):
        return base.iter_tensors((self.delta, self.cond_out))


def choose(
    config: MixCacheConfig,
    shared: _Shared,
    step: int,
    num_steps: int | None,
    tau: float,
    dtau: float,
    cfg_possible: bool,
    candidates: list[int],
    n_blocks: int,
) -> Plan:
    """The plan for one step (module docstring); host numbers only. ``dtau``: this step's length.
    Accounts the chosen plan's errors into the accumulators."""
    scale = StepScale(config.schedule_steps)
    if num_steps is not None and step >= num_steps - scale.forced(config.last_steps, num_steps):
        return Plan("full", reason="last steps")
    max_streak = scale.cap(config.max_streak, num_steps)
    step_budget, cfg_budget, block_budget = (scale.threshold(b, num_steps, 2, 2)
                                             for b in (config.step_budget, config.cfg_budget, config.block_budget))
    start = math.ceil(config.start * num_steps) if num_steps else 1
    branches = list(shared.branches.values())
    if not shared.triggered:
        rates = [b.rate_step.value() for b in branches]
        if step >= start and rates and None not in rates and max(rates) < config.trigger * shared.peak_rate:
            shared.triggered = True
        else:
            return Plan("full", reason="trigger not met")
    if not branches or any(b.tau is None for b in branches):
        return Plan("full", reason="nothing cached")

    def allowed(g: str) -> bool:
        return g in config.granularities and not (
            g == shared.last_granularity and shared.streak >= max_streak
        )

    def ratio(err: float, budget: float) -> float:
        return err / budget if budget > 0 else math.inf

    options: list[tuple[float, Plan, Any]] = []
    if allowed("step") and all(b.rate_step.value() is not None for b in branches):
        add = [b.rate_step.value() * max(0.0, b.tau - tau) * dtau for b in branches]
        rho = ratio(max(b.acc_step + a for b, a in zip(branches, add)), step_budget)
        if rho <= 1:
            options.append((1.0 - config.weight * rho, Plan("step", rho), add))
    rate_cfg = shared.rate_cfg.value()
    if allowed("cfg") and cfg_possible and shared.delta is not None and rate_cfg is not None:
        add = rate_cfg * max(0.0, shared.delta_tau - tau) * dtau
        rho = ratio(shared.acc_cfg + add, cfg_budget)
        if rho <= 1:
            options.append((0.5 - config.weight * rho, Plan("cfg", rho), add))
    if allowed("block") and block_budget > 0:
        errors = []
        for k in candidates:
            rates = [b.rate_block[k].value() if k in b.rate_block else None for b in branches]
            if None not in rates:
                adds = [r * max(0.0, b.tau - tau) * dtau for r, b in zip(rates, branches)]
                errors.append((max(b.acc_block.get(k, 0.0) + a for b, a in zip(branches, adds)), k, adds))
        chosen, total = [], 0.0
        limit = max(1, math.floor(config.block_fraction * n_blocks))
        for e, k, adds in sorted(errors, key=lambda x: x[0]):
            if len(chosen) >= limit or total + e > block_budget:
                break
            if 1.0 / n_blocks <= config.weight * e / block_budget:  # does not pay for itself
                break
            chosen.append((k, adds))
            total += e
        if chosen:
            rho = total / block_budget
            plan = Plan("block", rho, frozenset(k for k, _ in chosen))
            options.append((len(chosen) / n_blocks - config.weight * rho, plan, chosen))
    best = max(options, key=lambda o: o[0], default=None)
    if best is None or best[0] <= 0:
        return Plan("full", reason="no granularity pays for its error")
    _, plan, add = best
    if plan.granularity == "step":
        for b, a in zip(branches, add):
            b.acc_step += a
    elif plan.granularity == "cfg":
        shared.acc_cfg += add
    else:
        for k, adds in add:
            for b, a in zip(branches, adds):
                b.acc_block[k] = b.acc_block.get(k, 0.0) + a
    return plan


# ---------------------------------------------------------------------------- hooks


class MixState(base.BranchState):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "full"  # this forward: "full" (exact, refresh), "pass", "block", "step"
        self.skip: frozenset = frozenset()
        self.stack: tuple[torch.Tensor, torch.Tensor | None] | None = None  # stack residual
        self.stack_step: int | None = None
        self.stack_prev: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the one before (forecast 1)
        self.stack_prev_step: int | None = None
        self.blocks: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.stack_in: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.pending: list[tuple[str, Any, torch.Tensor]] = []  # measurements to read at the end

    def tensors(self):
        yield from base.iter_tensors((self.stack, self.stack_prev, list(self.blocks.values()), self.stack_in))


class MixBlockHook(base.BranchHook):
    """On every block: skip per the branch's mode, store residuals on exact forwards."""

    def __init__(
        self,
        states: base.BranchStates,
        key: str,
        index: int,
        *,
        head: bool,
        tail: bool,
        candidate: bool,
        text_residual: bool,
        forecast: str = "residual",
    ) -> None:
        super().__init__(states, key)
        self.index, self.head, self.tail, self.candidate = index, head, tail, candidate
        self.text_residual = text_residual
        self.forecast = forecast
        self.meta = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.meta = base.block_metadata(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: MixState = self.states.get_state()
        mode = state.mode
        hidden, enc = base.block_inputs(self.meta, args, kwargs)
        if mode == "step":
            if not self.head:
                return base.pack_block_output(self.meta, hidden, enc)
            out = forecast(self.forecast, state.stack, state.stack_step, state.stack_prev, state.stack_prev_step,
                           state.info.step, (hidden, enc))
            return base.pack_block_output(self.meta, *out)
        if mode == "block" and self.index in state.skip:
            res_h, res_e = state.blocks[self.index]
            enc_out = enc if res_e is None or enc is None else enc + res_e
            return base.pack_block_output(self.meta, hidden + res_h, enc_out)
        if self.head and mode == "full":
            state.stack_in = (hidden, enc)
        out = self.fn_ref.original_forward(*args, **kwargs)
        if mode != "full":
            return out
        out_h, out_e = base.block_outputs(self.meta, out)
        if self.candidate:
            new = (out_h - hidden, None if out_e is None or enc is None else out_e - enc)
            old = state.blocks.get(self.index)
            if old is not None and old[0].shape == new[0].shape:
                state.pending.append(("block", self.index, base.l1(new[0], old[0])))
            state.blocks[self.index] = new
        if self.tail:  # the step's drift is measured on what is kept (the residual; the output with output1)
            new = stored(self.forecast, state.stack_in, out_h, out_e, self.text_residual)
            old = state.stack
            if old is not None and old[0].shape == new[0].shape:
                state.pending.append(("step", None, base.l1(new[0], old[0])))
            state.pending.append(("ref", None, base.l1(out_h)))
            if self.forecast != "residual":
                state.stack_prev, state.stack_prev_step = state.stack, state.stack_step
            state.stack, state.stack_step, state.stack_in = new, state.info.step, None
        return out


class MixForwardHook(base.TransformerHook):
    """Decides each step's plan, runs CFG-level reuse, reads the measurements, records."""

    def __init__(
        self,
        *args: Any,
        config: MixCacheConfig,
        candidates: list[int],
        block_kinds: list[list[str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.candidates = candidates
        self.block_kinds = block_kinds
        self.shared = _Shared()

    def reset_shared(self) -> None:
        self.shared = _Shared()

    def shared_tensors(self):
        return self.shared.tensors()

    def never_fired_hint(self) -> str:
        p = self.params
        return (
            f"the trigger (drift rate < {p['trigger']} x its peak, after {p['start']:.0%} of the steps) "
            "was never met, "
            "or no granularity's expected error fit its budget"
        )

    # -- helpers ---------------------------------------------------------------------------
    def _taus(self) -> list[float] | None:
        """The video's schedule as tau per step, read to the host once per video."""
        sh, ts = self.shared, self.link.timesteps()
        if not torch.is_tensor(ts):
            return None
        if ts is not sh.taus_key:
            sh.taus, sh.taus_key = [float(t) / 1000.0 for t in ts.flatten().tolist()], ts
        return sh.taus

    def _tau(self, info: base.StepInfo) -> tuple[float, float]:
        """(tau now, this step's length in tau): from the schedule, else from the step count."""
        n = info.num_steps or 1
        taus = self._taus()
        if taus is not None and info.step < len(taus):
            tau = info.t / 1000.0 if info.t is not None else taus[info.step]
            nxt = taus[info.step + 1] if info.step + 1 < len(taus) else 0.0
            return tau, max(0.0, taus[info.step] - nxt)
        tau = info.t / 1000.0 if info.t is not None else 1.0 - info.step / n
        return tau, 1.0 / n

    def _cfg_possible(self, record: base.ForwardRecord) -> bool:
        if "cfg" not in self.config.granularities:  # nothing of the CFG-level reuse is kept then
            return False
        if self.layout.cfg_layout == "separate":
            return self.link.cfg_active() is True
        return self.layout.cfg_layout == "batched" and record.branches == 2

    # -- the forward -----------------------------------------------------------------------
    def run(self, module: torch.nn.Module, state: MixState, args: tuple, kwargs: dict) -> Any:
        info, record, sh = state.info, state.record, self.shared
        tau, dtau = self._tau(info)
        cfg_possible = self._cfg_possible(record)
        if sh.plan_step != info.step:  # the first forward of this step decides for all of it
            plan = choose(
                self.config, sh, info.step, info.num_steps, tau, dtau, cfg_possible, self.candidates,
                self.n_blocks,
            )
            if plan.granularity == sh.last_granularity:
                sh.streak += 1
            else:
                sh.last_granularity, sh.streak = plan.granularity, 1
            sh.plan, sh.plan_step = plan, info.step
        plan = sh.plan
        branch = sh.branches.setdefault(info.branch, _Branch())
        # a branch without what the plan reuses computes (first forward of a branch or expert)
        g = plan.granularity
        if (g == "step" and state.stack is None) or (
            g == "block" and not all(k in state.blocks for k in plan.skip)
        ):
            g = "full"
        record.detail = {"granularity": g, "rho": round(plan.rho, 4)}
        if plan.reason and g == "full":
            record.detail["reason"] = plan.reason
        state.pending = []
        state.skip = frozenset()

        if g == "cfg" and self.layout.cfg_layout == "separate":
            if info.branch == "uncond" and sh.cond_step == info.step and sh.cond_out is not None:
                record.branches_run = 0
                record.action = "cfg: uncond synthesised"
                uncond = (sh.cond_out.float() + sh.delta).to(sh.cond_out.dtype)
                sh.cond_out = None
                return base.with_sample(None, uncond, self.arg("return_dict", args, kwargs, True))
            if info.branch != "cond":
                record.detail["granularity"] = g = "full"
        if g == "cfg" and self.layout.cfg_layout == "batched":
            state.mode = "pass"
            record.branches_run = 1
            record.action = "cfg: cond only, uncond synthesised"
            args, kwargs = self.cond_half(args, kwargs)
            out = self.fn_ref.original_forward(*args, **kwargs)
            cond = base.sample_of(out)
            uncond = (cond.float() + sh.delta).to(cond.dtype)
            return base.with_sample(out, torch.cat([uncond, cond]))

        if g == "step":
            state.mode = "step"
            record.blocks_skipped = True
            record.action = "step: blocks skipped"
        elif g == "block":
            state.mode, state.skip = "block", plan.skip
            mark_partial(record, len(plan.skip), [self.block_kinds[k] for k in plan.skip])
            record.action = f"block: {len(plan.skip)}/{self.n_blocks} blocks reused"
            record.detail["blocks_reused"] = sorted(plan.skip)
        else:  # full, or the cond branch of a cfg step (exact for cond)
            state.mode = "full"
            if g == "cfg":
                record.action = "cfg: cond computed"
        out = self.fn_ref.original_forward(*args, **kwargs)
        if state.mode == "full":
            self._measure(state, branch, tau, base.sample_of(out), cfg_possible)
        return out

    def _measure(
        self, state: MixState, branch: _Branch, tau: float, sample: torch.Tensor, cfg_possible: bool
    ) -> None:
        """After an exact forward: refresh rates (one device read) and the CFG delta."""
        info, sh = state.info, self.shared
        pending = state.pending
        delta = None
        if cfg_possible and self.layout.cfg_layout == "separate":
            if info.branch == "cond":
                sh.cond_out, sh.cond_step = sample, info.step
            elif info.branch == "uncond" and sh.cond_step == info.step and sh.cond_out is not None:
                delta = sample.float() - sh.cond_out.float()
                uncond = sample
                sh.cond_out = None
        elif cfg_possible and self.layout.cfg_layout == "batched":
            uncond, cond = sample.float().chunk(2)
            delta = uncond - cond
        if delta is not None:
            if sh.delta is not None and sh.delta.shape == delta.shape:
                pending.append(("cfg", None, base.l1(delta, sh.delta)))
                pending.append(("cfg_ref", None, base.l1(uncond)))
        values = base.agreed_values(torch.stack([p[2] for p in pending])) if pending else []
        got = {(kind, key): v for (kind, key, _), v in zip(pending, values)}
        ref = got.get(("ref", None), 0.0)
        if branch.tau is not None and branch.tau > tau and ref > 0:
            span = branch.tau - tau
            if ("step", None) in got:
                branch.rate_step.add(got[("step", None)] / ref / span)
                sh.peak_rate = max(sh.peak_rate, branch.rate_step.value())
            for (kind, key), v in got.items():
                if kind == "block":
                    branch.rate_block.setdefault(key, Rate()).add(v / ref / span)
        branch.refreshed(tau)
        if delta is not None:
            cfg_ref = got.get(("cfg_ref", None), 0.0)
            if ("cfg", None) in got and sh.delta_tau is not None and sh.delta_tau > tau and cfg_ref > 0:
                sh.rate_cfg.add(got[("cfg", None)] / cfg_ref / (sh.delta_tau - tau))
            sh.delta, sh.delta_tau, sh.acc_cfg = delta, tau, 0.0
        state.pending = []
        if branch.rate_step.value() is not None:
            state.record.detail["rate_step"] = round(branch.rate_step.value(), 5)


def apply_mixcache(
    transformer: torch.nn.Module,
    config: MixCacheConfig,
    *,
    pipeline: base.PipelineLink | None = None,
) -> None:
    """Attach MixCache to ``transformer``: a hook on every block and one on the transformer."""
    layout = base.layout_of(transformer)
    blocks = layout.blocks(transformer)
    n = len(blocks)
    lo, hi = config.block_window
    candidates = [i for i in range(n) if lo <= i / n <= hi] if "block" in config.granularities else []
    states = base.BranchStates(MixState)
    for i, (key, block) in enumerate(blocks):
        hook = MixBlockHook(
            states,
            key,
            i,
            head=i == 0,
            tail=i == n - 1,
            candidate=i in candidates,
            text_residual=layout.text_residual,
            forecast=config.forecast,
        )
        base.register(block, hook, "mixcache")
    params = base.config_params(config)
    params["block_candidates"] = candidates
    if layout.cfg_layout == "distilled":  # one branch: CFG-level reuse cannot apply (by design)
        params["granularities"] = [g for g in config.granularities if g != "cfg"]
    top = MixForwardHook(
        "mixcache", states, layout, transformer, params, pipeline,
        needs_timestep=True, config=config, candidates=candidates,
        block_kinds=block_attention_kinds(layout, transformer),
    )
    base.attach(transformer, top)
