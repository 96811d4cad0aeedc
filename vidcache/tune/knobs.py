"""Each method's knob for ``vidcache tune``: one number ``x`` in [0, 1], 0 the gentlest setting and 1
the most aggressive, on one or a few lines (a small grid of what the number does not move).

The knob is the parameter through which the method reads redundancy, scaled from the model's preset
(or from the uncached references) so that the same range fits any model:

* **TeaCache** skips while the accumulated (rescaled) indicator change stays under ``thresh``: its
  decisions are a step function of ``thresh``, so the knob runs over the distinct skip schedules that
  thresholds from the smallest per-step change seen in the references to a whole video's accumulated
  change give (TeaCache's own rule simulated on the recorded changes), gentlest first, which fits any
  coefficients and model; lines: the preset's forced first steps, and the first 10 % and 20 % of the
  steps computed (an early skip can cost more than all later ones: the official retention mode forces
  the first 5 of 50). Coefficients: the official set where the model has one, else a
  degree-4 fit (``calibrate.fit``) to the indicator / output changes recorded while the references
  were generated, else the preset's (``--set coefficients=...`` always wins).
* **AdaCache** maps a measured distance to a reuse length through its codebook: the knob multiplies
  every threshold by ``2^(8x - 4)`` (1/16 .. 16): larger thresholds, longer reuse.
* **MixCache** weighs expected error against error budgets: the knob multiplies the three budgets by
  ``2^(10x - 5)``; lines: the preset's trigger, and an eager one (reuse from step 0, only the last
  step forced, streaks of 5), which is what its aggressive end needs.
* **PAB** reuses attention inside a window every so many calls: the knob sets the reuse period as it
  runs at this step count, 1.1 .. 8 log-spaced, for the lead kind (spatial), the others keeping the
  preset's pyramid proportions; lines: the preset's windows and a wide one (10 % to 90 % of the steps
  of this run's real schedule).
* **FasterCache**: the same over ``attention_range`` and ``cfg_range`` (the preset's proportion); lines:
  the preset's windows, wide windows (from 10 % of the steps), and the preset's windows with half the
  attention extrapolation weight (a damped extrapolation, for features that do not drift linearly).
* **diffusers' FBCache / MagCache**: their threshold, log-spaced over 0.002 .. 0.5; MagCache's
  magnitude ratios are calibrated once beforehand (one uncached-like video) and written into the
  table. **TaylorSeer**: its full-compute interval, 1 .. a third of the steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..caches.steps import StepScale


@dataclass(frozen=True)
class Line:
    """One line of the grid: parameters fixed over the knob's range."""

    label: str
    fixed: dict[str, Any]


@dataclass
class Knob:
    """``move(params, x)`` -> (parameters at ``x``, the value in words)."""

    method: str
    name: str
    base: dict[str, Any]
    move: Callable[[dict[str, Any], float], tuple[dict[str, Any], str]]
    lines: list[Line] = field(default_factory=lambda: [Line("preset", {})])
    notes: list[str] = field(default_factory=list)
    positions: int | None = None  # a knob over this many discrete settings (None: continuous)

    def at(self, line: Line, x: float) -> tuple[dict[str, Any], str]:
        return self.move({**self.base, **line.fixed}, x)


@dataclass
class Context:
    """What a knob may look at: the method's table, the run, the references."""

    method: str
    base: dict[str, Any]
    steps: int
    timesteps: list[float]
    refs: list[Any]  # store.Reference
    transformer: Any
    layout: Any
    user_keys: set[str]  # parameters the user set with --set (never overridden)
    calibrate_magcache: Callable[[dict[str, Any]], list[float]] | None = None

    @property
    def layout_kinds(self) -> tuple[str, ...]:
        """The attention kinds this family has (PAB: a range for a kind it lacks moves nothing)."""
        return tuple(dict.fromkeys(self.layout.attention_attrs.values()))


def geometric(lo: float, hi: float, x: float) -> float:
    return lo * (hi / lo) ** x


def sig(v: float, digits: int = 4) -> float:
    return float(f"{v:.{digits}g}")


def window_between(timesteps: list[float], first: int, last: int) -> list[float]:
    """A timestep window ``[lo, hi]`` holding exactly steps ``first..last`` of a descending schedule,
    each edge halfway between neighbouring steps' timesteps."""
    ts = timesteps
    hi = (ts[first - 1] + ts[first]) / 2 if first > 0 else ts[0] + 1.0
    lo = (ts[last] + ts[last + 1]) / 2 if last + 1 < len(ts) else -1.0
    return [round(lo, 1), round(hi, 1)]


# ---------------------------------------------------------------------------- TeaCache


def teacache(ctx: Context) -> Knob:
    from .. import calibrate
    from ..caches.teacache import TeaCacheConfig, rescale

    base, notes = dict(ctx.base), []
    retention = bool(base.get("retention", False))
    official, _ = ctx.layout.teacache_coefficients(ctx.transformer.config, retention)
    xs = [x for r in ctx.refs for x in r.tea_x]
    ys = [y for r in ctx.refs for y in r.tea_y]
    if "coefficients" in ctx.user_keys:
        notes.append("coefficients as set")
    elif official is not None:
        base["coefficients"] = official
        notes.append(f"official coefficients '{official}'")
    elif not retention:
        fitted, why = fit_coefficients(xs, ys)
        if fitted is None:
            notes.append(f"coefficients from the preset ({why})")
        else:
            cal = calibrate.Calibration(ctx.layout.name, False, fitted, xs, ys, len(ctx.refs))
            base["coefficients"] = [float(f"{c:.10e}") for c in fitted]
            base["schedule_steps"] = ctx.steps  # a fit holds for the per-step changes it was fitted on
            notes.append(f"coefficients fitted on the references ({len(xs)} pairs, mean relative error "
                         f"{cal.mean_rel_error:.3f})")
    if not base.get("coefficients"):  # what TeaCache itself would fall back to
        base["coefficients"] = official or ctx.layout.teacache_coefficients(ctx.transformer.config, retention)[1]
    poly = TeaCacheConfig(coefficients=base["coefficients"]).poly()
    scale = StepScale(base.get("schedule_steps"))
    k = scale.factor(ctx.steps)
    unit = scale.threshold(1.0, ctx.steps)  # TeaCache compares the accumulator with thresh * unit
    values = [rescale(poly, k * x) / k for x in xs]
    positive = [v for v in values if v > 0]
    per_video = sum(values) / max(1, sum(r.branches for r in ctx.refs)) if values else 1.0
    hi = max(per_video, 1e-6)
    lo = min(positive) if positive else hi / 1000
    lo, hi = min(lo, hi / 4), max(hi, lo * 4)
    grid = [geometric(lo, hi, i / 399) / unit for i in range(400)]
    found: dict[Any, list[float]] = {}

    def threshes(params: dict[str, Any]) -> list[float]:  # the schedules of a line (its forced steps)
        key = params.get("first_steps")
        if key not in found:
            found[key] = schedules(ctx, params, grid)
        return found[key]

    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        ts = threshes(params)
        i = round(x * (len(ts) - 1))
        return {**params, "thresh": ts[i]}, f"thresh {ts[i]:g} (schedule {i + 1}/{len(ts)})"

    # lines: the early steps carry the layout of the video, and one skipped there can cost more than
    # all the later ones (the reason for the official retention mode's 5 forced steps of 50)
    stated = base.get("schedule_steps") or ctx.steps
    first = base.get("first_steps") or (5 if retention else 1)
    lines = [Line("preset", {})]
    if "first_steps" not in ctx.user_keys:
        lines += [Line(f"first {f} steps computed", {"first_steps": f})
                  for f in sorted({math.ceil(0.1 * stated), math.ceil(0.2 * stated)}) if f > first]
    n = len(threshes(base))
    return Knob("teacache", "thresh", base, move, lines,
                notes=notes + [f"{n} distinct skip schedules for thresh {threshes(base)[0]:.3g} .. "
                               f"{threshes(base)[-1]:.3g}"], positions=n)


def schedules(ctx: Context, base: dict[str, Any], grid: list[float]) -> list[float]:
    """One threshold per distinct skip schedule over ``grid`` (ascending), each the geometric middle of
    the thresholds that give it. TeaCache's decisions are a step function of ``thresh``: simulated here
    with its own ``decide`` on the indicator changes recorded in the references (on Wan and CogVideoX
    they depend on the timesteps only, so the simulation is exact; on HunyuanVideo it is the uncached
    run's), a knob over schedules moves by one schedule where a knob over thresholds skips or repeats."""
    from dataclasses import replace as dc_replace

    from ..caches.teacache import TeaCacheConfig, decide, resolve

    config, _ = resolve(TeaCacheConfig(**{k: v for k, v in base.items() if k != "thresh"}), ctx.transformer,
                        ctx.layout)
    n = ctx.steps
    runs = [r.tea_x[b::r.branches] for r in ctx.refs for b in range(r.branches)]
    if not runs or any(len(seq) != n - 1 for seq in runs):  # not one change per step (two experts): a grid
        return list(dict.fromkeys(sig(t) for t in grid[::20]))

    def schedule(thresh: float) -> tuple:
        cfg, out = dc_replace(config, thresh=thresh), []
        for seq in runs:
            acc = 0.0
            for step in range(n):
                compute, acc, _ = decide(cfg, acc, step, n, step > 0, lambda s=step, q=seq: q[s - 1])
                out.append(compute)
        return tuple(out)

    groups: dict[tuple, list[float]] = {}
    for t in grid:
        groups.setdefault(schedule(t), []).append(t)
    picked = sorted(sig((min(ts) * max(ts)) ** 0.5) for ts in groups.values())
    return list(dict.fromkeys(picked))


def fit_coefficients(xs: list[float], ys: list[float]) -> tuple[list[float] | None, str]:
    """``calibrate.fit``, kept only where it can be trusted as a rescale: at least three distinct
    indicator changes per coefficient (a degree-4 curve through fewer swings between them), and a
    curve that is positive and does not fall over the fitted range (a larger change of the indicator
    must never predict a smaller change of the output). (coefficients or None, why not)."""
    import numpy as np

    from .. import calibrate

    distinct = len({round(x, 9) for x in xs})
    if distinct < 3 * (calibrate.DEGREE + 1):
        return None, f"{distinct} distinct indicator changes are too few to fit {calibrate.DEGREE + 1} coefficients"
    fitted = calibrate.fit(xs, ys)
    grid = np.linspace(min(xs), max(xs), 200)
    curve = np.polyval(fitted, grid)
    if curve.min() <= 0 or np.diff(curve).min() < -1e-12 * max(1.0, abs(curve).max()):
        return None, "the fitted curve is not a positive, rising rescale over the recorded changes"
    return fitted, ""


# ---------------------------------------------------------------------------- AdaCache, MixCache


def adacache(ctx: Context) -> Knob:
    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        s = 2 ** (8 * x - 4)
        book = [[sig(th * s, 6), rate] for th, rate in params["codebook"]]
        return {**params, "codebook": book}, f"codebook thresholds x{s:.3g}"

    from ..caches.adacache import AdaCacheConfig

    base = {"codebook": AdaCacheConfig().codebook, **ctx.base}
    return Knob("adacache", "codebook scale", base, move)


def mixcache(ctx: Context) -> Knob:
    from ..caches.mixcache import MixCacheConfig

    defaults = MixCacheConfig()
    base = {k: ctx.base.get(k, getattr(defaults, k)) for k in ("step_budget", "cfg_budget", "block_budget")}
    base = {**ctx.base, **base}

    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        b = 2 ** (10 * x - 5)
        out = {**params, **{k: sig(params[k] * b) for k in ("step_budget", "cfg_budget", "block_budget")}}
        return out, f"budgets x{b:.3g}"

    eager = {"start": 0.0, "trigger": 1.0, "last_steps": 1, "max_streak": 5}
    lines = [Line("preset", {})]
    if any(ctx.base.get(k, getattr(defaults, k)) != v for k, v in eager.items()):
        lines.append(Line("eager", {k: v for k, v in eager.items() if k not in ctx.user_keys}))
    return Knob("mixcache", "budget scale", base, move, lines)


# ---------------------------------------------------------------------------- PAB, FasterCache


PERIODS = (1.1, 8.0)  # the lead reuse period at this run's steps, gentle .. aggressive


def _periods(ctx: Context, base: dict[str, Any], keys: tuple[str, ...]):
    """A move over reuse periods, in periods *as they run at this step count* (``steps.py`` stretches
    what a table states): the lead period (the first key that reuses, in the preset) runs over
    ``PERIODS`` log-spaced, the others keep the preset's proportion to it (PAB's pyramid), a kind the
    preset never reuses (range 1) stays off. Written as stated for this run's step count
    (``schedule_steps``: the periods are the method's only step counts), so a gentle period stays
    expressible when the preset's step count is lower than the run's."""
    lead = next((k for k in keys if base[k] > 1), keys[0])
    ratio = {k: (base[k] - 1) / (base[lead] - 1) if base[lead] > 1 else float(k == lead) for k in keys}

    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        p = geometric(*PERIODS, x)
        running = {k: round(1 + ratio[k] * (p - 1), 4) for k in keys}
        out = {**params, **running, "schedule_steps": ctx.steps}
        return out, "periods " + "/".join(f"{running[k]:.3g}" for k in keys)

    return move


def _steps_window(ctx: Context, lo_frac: float, hi_frac: float | None) -> list[float]:
    n = len(ctx.timesteps)
    first = math.ceil(lo_frac * n)
    last = n - 1 if hi_frac is None else math.floor(hi_frac * (n - 1))
    return window_between(ctx.timesteps, min(first, n - 1), max(last, first))


def pab(ctx: Context) -> Knob:
    from ..caches.pab import PABConfig

    defaults = PABConfig()
    keys = tuple(f"{kind}_range" for kind in ctx.layout_kinds)
    base = {**{k: getattr(defaults, k) for k in keys}, **ctx.base}
    move = _periods(ctx, base, keys)

    wide = _steps_window(ctx, 0.1, 0.9)
    windows = {f"{kind}_window": wide for kind in ("spatial", "temporal", "cross")
               if f"{kind}_window" not in ctx.user_keys}
    lines = [Line("preset", {})]
    if any(list(ctx.base.get(k, [])) != v for k, v in windows.items()):
        lines.append(Line(f"window {wide[0]:g}-{wide[1]:g}", windows))
    return Knob("pab", "reuse period", base, move, lines)


def fastercache(ctx: Context) -> Knob:
    from ..caches.fastercache import FasterCacheConfig

    defaults = FasterCacheConfig()
    keys = ("attention_range", "cfg_range") if ctx.layout.cfg_layout != "distilled" else ("attention_range",)
    base = {**{k: getattr(defaults, k) for k in (*keys, "attention_weight")}, **ctx.base}
    move = _periods(ctx, base, keys)

    wide = _steps_window(ctx, 0.1, None)
    windows = {k: wide for k in ("attention_window", "cfg_window") if k not in ctx.user_keys}
    lines = [Line("preset", {})]
    if any(list(ctx.base.get(k, [])) != v for k, v in windows.items()):
        lines.append(Line(f"windows to {wide[1]:g}", windows))
    if "attention_weight" not in ctx.user_keys:
        lines.append(Line("half weight", {"attention_weight": sig(base["attention_weight"] / 2)}))
    return Knob("fastercache", "reuse period", base, move, lines)


# ---------------------------------------------------------------------------- diffusers' baselines


def _threshold(method: str, base: dict[str, Any], hi: float = 0.5) -> Knob:
    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        t = sig(geometric(0.002, hi, x))
        return {**params, "threshold": t}, f"threshold {t:g}"

    return Knob(method, "threshold", base, move)


def fbcache(ctx: Context) -> Knob:
    return _threshold("fbcache", dict(ctx.base))


def seacache(ctx: Context) -> Knob:
    """SeaCache's budget on its accumulated spectral distance (diffusers' default 0.25): up to 1."""
    return _threshold("seacache", dict(ctx.base), hi=1.0)


def magcache(ctx: Context) -> Knob:
    base = dict(ctx.base)
    notes = []
    if base.get("mag_ratios") is None and ctx.calibrate_magcache is not None:
        base["mag_ratios"] = ctx.calibrate_magcache(base)
        notes.append("magnitude ratios calibrated on one video")
    knob = _threshold("magcache", base)
    knob.notes = notes
    return knob


def taylorseer(ctx: Context) -> Knob:
    stated = ctx.base.get("schedule_steps") or ctx.steps
    top = max(2, stated // 3)

    def move(params: dict[str, Any], x: float) -> tuple[dict[str, Any], str]:
        interval = 1 + round(x * (top - 1))
        return {**params, "cache_interval": interval}, f"cache_interval {interval}"

    return Knob("taylorseer", "cache interval", dict(ctx.base), move, positions=top)


BUILDERS: dict[str, Callable[[Context], Knob]] = {
    "teacache": teacache, "adacache": adacache, "mixcache": mixcache, "pab": pab, "fastercache": fastercache,
    "fbcache": fbcache, "magcache": magcache, "taylorseer": taylorseer, "seacache": seacache,
}


def lines_of(method: str) -> int:
    """The most lines a method's knob has (for the budget estimate)."""
    return {"pab": 2, "fastercache": 3, "mixcache": 2, "teacache": 3}.get(method, 1)
