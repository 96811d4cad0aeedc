"""The search of ``vidcache tune``: for each method, the fastest setting whose mean PSNR against the
uncached run meets the target (or the best PSNR at a target speedup), from cheap to confirmed.

Per method and per line of its knob (``knobs.py``; ``x`` in [0, 1], gentle to aggressive):

1. **bracket** on the first ``BRACKET`` tuning prompts: the two ends, ``x = 0`` and ``x = 1``. If the
   aggressive end already meets the target, it is the candidate; if the gentle end does not, the line
   cannot meet it;
2. **bisect** ``ITERATIONS`` times between the last ``x`` that met the target and the first that did not,
   on the same prompts (PSNR falls as ``x`` grows; a point is measured once: equal parameters, equal
   point); a discrete knob (TeaCache's skip schedules, TaylorSeer's interval) is bisected until the two
   sides are neighbouring settings;
3. the line whose candidate is fastest (``auto.speed_key``: compute ratio, attention compute ratio,
   then measured speedup) is **confirmed** on all tuning prompts, where the mean *less its standard
   error* must meet the target; on a miss, the line's next settings that met it on the bracket are
   confirmed, fastest first (at most ``BACKOFFS`` more), and the first that meets it is refined by a
   bisection on all the prompts towards the setting that missed; if none meets it, the line is bisected
   again on all the prompts between its gentle end and the gentlest setting that missed; the next
   line's candidate is confirmed too while it could still be faster than what is confirmed.

For a speedup target the roles swap: the least aggressive ``x`` whose median speedup reaches the
target (the best PSNR at that speed). Speedup is the uncached denoising time of this session (the
median of two uncached videos after a warm-up; on a CPU the process's CPU time) over the cached
video's; compute ratios are exact counts.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from .auto import speed_key
from .knobs import Knob, Line

BRACKET = 2
ITERATIONS = 5
BACKOFFS = 2


@dataclass
class Target:
    psnr: float | None = None
    speedup: float | None = None

    def passes(self, summary: dict[str, Any], confirm: bool = True) -> bool:
        """PSNR: the mean over the prompts reaches the target, on confirmation (all the tuning prompts)
        less its standard error, so that a setting carried over the line by one easy prompt is not
        taken (the target is about prompts like these, of which the tuning prompts are a sample; on the
        two bracket prompts the error estimate is too rough to use). Speed: the median speedup does."""
        if self.psnr is not None:
            return summary["psnr"] - (summary["psnr_se"] if confirm else 0.0) >= self.psnr
        return summary["speedup"] >= self.speedup

    def met(self, summary: dict[str, Any], confirm: bool = True) -> bool:
        """Passes, and reuses something: a setting that reused nothing is no setting of the method."""
        return reuses(summary) and self.passes(summary, confirm)

    @property
    def gentle_side_ok(self) -> bool:
        """Whether the gentle end of a knob is where the target is met (PSNR) or missed (speed)."""
        return self.psnr is not None

    def words(self) -> str:
        return f"PSNR >= {self.psnr:g} dB" if self.psnr is not None else f"speedup >= {self.speedup:g}x"



@dataclass
class Point:
    """One setting of one method, measured on some of the tuning prompts."""

    method: str
    line: str
    x: float
    params: dict[str, Any]
    label: str
    per_prompt: dict[int, dict[str, Any]] = field(default_factory=dict)  # job index -> measurement

    def summary(self, indices: list[int] | None = None) -> dict[str, Any]:
        rows = [self.per_prompt[i] for i in (indices or sorted(self.per_prompt))]
        mean = statistics.fmean
        psnr = [r["psnr"] for r in rows]
        out = {
            "psnr": mean(psnr),
            "psnr_se": statistics.stdev(psnr) / math.sqrt(len(psnr)) if len(psnr) > 1 else 0.0,
            "psnr_min": min(psnr),
            "ssim": mean(r["ssim"] for r in rows),
            "compute_ratio": mean(r["compute_ratio"] for r in rows),
            "attention_compute_ratio": mean(r["attention_compute_ratio"] for r in rows),
            "speedup": statistics.median(r["speedup"] for r in rows),
            "prompts": len(rows),
        }
        adherent = [r["adherent"] for r in rows if "adherent" in r]
        if adherent:
            out["adherence"] = mean(float(a) for a in adherent)
        return out


@dataclass
class MethodResult:
    method: str
    knob: Knob
    chosen: Point | None  # confirmed on all tuning prompts (None: the target was not met)
    points: list[Point]
    notes: list[str]

    def best(self, key: str) -> Point | None:
        """The measured point with the highest ``key`` ("psnr", "speedup") among those that reused
        something (for the line that says how close the search came)."""
        full = [p for p in self.points if p.per_prompt and reuses(p.summary())]
        return max(full, key=lambda p: p.summary()[key], default=None)


class Search:
    """Runs the search of one method with ``measure(point, indices)`` (which measures what is missing)."""

    def __init__(self, target: Target, measure, indices: list[int], status=None) -> None:
        self.target = target
        self.measure = measure
        self.all = indices
        self.bracket = indices[:BRACKET]
        self.status = status or (lambda text: None)
        self.points: dict[str, Point] = {}
        self.best: Point | None = None  # the fastest that met the target on the prompts it was measured on

    def say(self, text: str) -> None:
        """What is being tried, and the best so far."""
        best = "" if self.best is None else f" | best so far: {self.best.label}, {describe(self.best.summary())}"
        self.status(text + best)

    def point(self, knob: Knob, line: Line, x: float) -> Point:
        params, label = knob.at(line, x)
        key = repr(sorted(params.items()))
        if key not in self.points:
            self.points[key] = Point(knob.method, line.label, x, params, label)
        return self.points[key]

    def ok(self, p: Point, indices: list[int]) -> bool:
        """Whether ``p`` is on the target's side (bisection: a gentle end that reuses nothing is)."""
        self.measure(p, indices)
        s, confirm = p.summary(indices), len(indices) == len(self.all)
        if self.target.met(s, confirm) and (self.best is None or self.rank(p) < self.rank(self.best)):
            self.best = p
        return self.target.passes(s, confirm)

    def result(self, p: Point, indices: list[int]) -> Point | None:
        return p if self.target.met(p.summary(indices), len(indices) == len(self.all)) else None

    def line(self, knob: Knob, line: Line) -> Point | None:
        """The candidate of this line on the bracket prompts (None: no setting of it meets the target)."""
        psnr_mode = self.target.gentle_side_ok
        gentle, wild = self.point(knob, line, 0.0), self.point(knob, line, 1.0)
        self.say(f"{knob.method} [{line.label}]: the two ends")
        if psnr_mode and self.ok(wild, self.bracket):
            return self.result(wild, self.bracket)
        if not psnr_mode and self.ok(gentle, self.bracket) and self.result(gentle, self.bracket):
            return gentle
        if psnr_mode and not self.ok(gentle, self.bracket):
            return None
        if not psnr_mode and not self.ok(wild, self.bracket):
            return None
        good, bad = (0.0, 1.0) if psnr_mode else (1.0, 0.0)
        for _ in range(iterations(knob)):
            mid = (good + bad) / 2
            p = self.point(knob, line, mid)
            if p is self.point(knob, line, good) or p is self.point(knob, line, bad):
                break  # a discrete knob: the two sides are neighbours
            self.say(f"{knob.method} [{line.label}]: {p.label}")
            if self.ok(p, self.bracket):
                good = mid
            else:
                bad = mid
        return self.result(self.point(knob, line, good), self.bracket)

    def rank(self, p: Point, every: bool = False) -> tuple:
        """Smaller is better: speed (PSNR target) or PSNR (speed target), on the bracket prompts or all."""
        s = p.summary(None if every or not all(i in p.per_prompt for i in self.bracket) else self.bracket)
        return speed_key(s) if self.target.psnr is not None else (-s["psnr"],)

    def run(self, knob: Knob) -> MethodResult:
        candidates = []
        for line in knob.lines:
            p = self.line(knob, line)
            if p is not None:
                candidates.append((p, line))
        confirmed: list[Point] = []
        for p, line in sorted(candidates, key=lambda c: self.rank(c[0])):
            if confirmed and self.rank(confirmed[0], every=True) <= self.rank(p):
                break  # what is confirmed is already faster than this line's candidate
            q = self.confirm(knob, line)
            if q is not None:
                confirmed = sorted([*confirmed, q], key=lambda c: self.rank(c, every=True))
        chosen = confirmed[0] if confirmed else None
        return MethodResult(knob.method, knob, chosen, list(self.points.values()), list(knob.notes))

    def confirm(self, knob: Knob, line: Line) -> Point | None:
        """The line's candidate on all the prompts; on a miss, the line's next settings that met the
        target on the bracket prompts, fastest first (PSNR is not monotone in every knob: TeaCache's
        schedules, AdaCache's adaptive lengths), then a bisection on all the prompts between the
        gentle end and the gentlest setting that missed."""
        passed = [p for p in self.points.values()
                  if p.line == line.label and set(self.bracket) <= set(p.per_prompt)
                  and self.target.met(p.summary(self.bracket), confirm=False)]
        missed = None
        for q in sorted(passed, key=self.rank)[:BACKOFFS + 1]:
            self.say(f"{knob.method} [{line.label}]: confirm {q.label} on {len(self.all)} prompts")
            if self.ok(q, self.all) and self.result(q, self.all):
                return q if missed is None else self.refine(knob, line, q.x, missed.x)
            missed = q
        if not passed:
            return None
        return self.refine(knob, line, 0.0 if self.target.psnr is not None else 1.0, missed.x)

    def refine(self, knob: Knob, line: Line, good: float, bad: float) -> Point | None:
        """Bisect on all the prompts between a setting that met the target there (``good``; or the
        gentle end) and one that missed (``bad``): a backed-off setting may be far gentler than needed
        (AdaCache at 35 dB on the tiny model: x1 met it at 0.79 compute, x4 missed, x2 lies between)."""
        for _ in range(iterations(knob)):
            p = self.point(knob, line, (good + bad) / 2)
            if p is self.point(knob, line, good) or p is self.point(knob, line, bad):
                break
            self.say(f"{knob.method} [{line.label}]: {p.label} on {len(self.all)} prompts")
            if self.ok(p, self.all):
                good = p.x
            else:
                bad = p.x
        return self.result(self.point(knob, line, good), self.all)


def iterations(knob: Knob) -> int:
    """Bisection steps: ``ITERATIONS``, or enough to tell neighbouring settings of a discrete knob apart
    (at most 8)."""
    if knob.positions is None:
        return ITERATIONS
    return min(8, max(1, math.ceil(math.log2(max(2, knob.positions)))))


def reuses(s: dict[str, Any]) -> bool:
    return s["compute_ratio"] < 1 or s["attention_compute_ratio"] < 1


def describe(s: dict[str, Any]) -> str:
    se = f" +- {s['psnr_se']:.2f}" if s.get("psnr_se") else ""
    return (f"{s['psnr']:.2f}{se} dB, compute {s['compute_ratio']:.3f}"
            + (f" / attention {s['attention_compute_ratio']:.3f}" if s["compute_ratio"] >= 1 else "")
            + f", {s['speedup']:.2f}x")
