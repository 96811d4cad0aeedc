"""How a method's step-counted parameters follow the run's step count: one rule, used by every method.

Why: a preset is tuned at one step count (the model's default), and users change ``--steps``. Two
kinds of parameters meet the schedule:

* **Windows are timesteps** (``lo < t < hi``; FasterCache's ``cfg_t0``). A scheduler set to more or
  fewer steps samples the same timestep curve more or less densely, so a timestep window covers the
  same part of the trajectory at any step count: nothing to rescale. MixCache's ``start`` is a
  fraction of the steps already.
* **Counts and thresholds decide how long a run of reuse lasts**, in steps: PAB's ranges,
  FasterCache's ``attention_range`` / ``cfg_range``, MixCache's ``max_streak``, TaylorSeer's interval,
  MagCache's ``max_skip_steps``; and thresholds on a change that accumulates while reusing
  (TeaCache's ``thresh``, FBCache's and MagCache's ``threshold``, MixCache's budgets). These are stated
  for ``schedule_steps`` steps (a preset's ``[defaults] steps``: the runner fills it in when a table
  does not say; absent in a bare ``apply_cache`` without a preset: used as given).

The rule: at ``N = k * schedule_steps`` steps a run of reuse lasts ``k ** GAMMA`` times as many steps,
``GAMMA = 0.58``. Why not ``k`` (the same share of the trajectory) nor 1 (the same count): measured on
the tiny model, the same count of reused steps gains quality as the steps grow and a threshold on an
accumulated change (the same share of the trajectory) loses it: FBCache at its preset threshold went
from 86.7 dB (it hardly fired) at 15 steps to 37.2 dB at 40; 0.58 is the exponent AdaCache's paper
uses between its 30- and 100-step codebooks (reuse lengths ``(N/30)^0.58``), and with it the largest
spread of a default preset's PSNR over 15, 25 and 40 steps (the methods here; AdaCache has its own
rule) fell from 49.6 dB to 6.3 dB (docs/benchmarks.md has the table).

How each kind follows it (``k`` the stretch, ``r = k ** GAMMA``):

* reuse **periods** ``max(1, p r)``, fractional: a module computes on its in-window call ``c`` iff
  ``floor(c / p) > floor((c - 1) / p)`` (``due``), which for an integer ``p`` is ``c % p == 0``, the
  rule as stated; for ``p = 1.2`` it computes 5 calls of 6;
* **caps** on a run of reuse (``max_streak``, ``max_skip_steps``, ``cache_interval``)
  ``max(1, round(n r))``;
* **thresholds** on a change that grows like ``m^a / N^b`` over a run of ``m`` reused steps (TeaCache's
  accumulated distance and FBCache's change since the last compute: ``m / N``; MixCache's accumulated
  error ``~ m^2 / N^2``; MagCache's accumulated ratio error ``~ m^2 / N``): times ``k^(GAMMA a - b)``,
  so that the run they allow lasts ``r`` times as many steps;
* **forced computes** (protected steps at the ends: TeaCache's first / last steps, MixCache's
  ``last_steps``, TaylorSeer's warm-up) ``ceil(n k)``: the same share of the trajectory, never less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

EPS = 1e-9
GAMMA = 0.58  # a run of reuse lasts (N / schedule_steps) ** GAMMA times as many steps


def check_schedule_steps(value: Any) -> int | None:
    """``schedule_steps``: None (counts used as given) or the step count they are stated for."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'schedule_steps' must be an integer >= 1 (the step count the counts are stated for), "
                         f"got {value!r}")
    return value


def check_period(name: str, value: Any) -> float | int:
    """A reuse period: a number >= 1 (fractional periods are allowed: see ``due``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1 or math.isinf(value):
        raise ValueError(f"'{name}' must be a number >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class StepScale:
    """The stretch from ``stated`` steps to a run's steps (``stated`` None: no stretch)."""

    stated: int | None

    def factor(self, steps: int | None) -> float:
        if self.stated is None or not steps:
            return 1.0
        return steps / self.stated

    def runs(self, steps: int | None) -> float:
        """How many times as many steps a run of reuse lasts at ``steps``: ``k ** GAMMA``."""
        return self.factor(steps) ** GAMMA

    def period(self, value: float, steps: int | None) -> float:
        """A reuse period for this run: ``max(1, value * r)`` (fractional)."""
        return value if value <= 1 else max(1.0, value * self.runs(steps))

    def threshold(self, value: float, steps: int | None, a: int = 1, b: int = 1) -> float:
        """A threshold on a change growing like ``m^a / N^b`` over ``m`` reused steps: ``value * k^(GAMMA a - b)``."""
        k = self.factor(steps)
        return value if k == 1.0 else value * k ** (GAMMA * a - b)

    def forced(self, n: int, steps: int | None) -> int:
        """A count of protected (always computed) steps: ``ceil(n * k)``."""
        return n if n <= 0 else math.ceil(n * self.factor(steps) - EPS)

    def cap(self, n: int, steps: int | None) -> int:
        """A count of whole steps that bounds a run of reuse: ``max(1, round(n * r))`` (0 stays 0)."""
        return n if n <= 0 else max(1, math.floor(n * self.runs(steps) + 0.5))


def due(calls: int, period: float) -> bool:
    """Whether in-window call ``calls`` (0 = the first) computes, for a reuse ``period`` >= 1."""
    if calls <= 0 or period <= 1:
        return True
    return math.floor(calls / period + EPS) > math.floor((calls - 1) / period + EPS)
