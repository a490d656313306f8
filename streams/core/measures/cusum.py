"""Page's one-sided Bernoulli CUSUM for a fall in a step's conversion, and its threshold.

A windowed test looked at every minute must pay for its looks, and at the volumes of deep steps
(tens of entries a week) no single window is then significant however long a drop lasts. The
CUSUM accumulates the evidence of every trial instead (one attempt that reached the step before:
success if it reaches the step in time, failure otherwise). Tuned to detect a fall from the
in-control rate p0 to p1 = (1 - relative_drop) * p0, each trial adds its log-likelihood ratio:

    failure: + log((1 - p1) / (1 - p0))        success: - log(p0 / p1)

and S = max(0, S + weight) alarms at S >= h (Page 1954; the Bernoulli form of Reynolds and
Stoumbos 1999).

The statistic is kept on an integer grid: the larger weight is `RESOLUTION` units and the other
is rounded to whole units (at least one). The Markov chain of Brook and Evans (1972) over the
states 0..h-1 (a success moves down `down` units, floored at 0; a failure up `up` units; h or
more absorbs) is then the statistic itself, not a discretization of it, and its average run
length (ARL) is exact for what the evaluator runs. `arl` solves the chain's linear system
(I - P) L = 1, which is banded (a state reaches `down` states below and `up` above), by Gaussian
elimination without pivoting (I - P is an M-matrix, so that is stable) in O(h * up * down).
The R `surveillance` package's `arlCusum` computes the same chain for its binomial CUSUM, and its
`findH` searches h the same way.

`design` picks the smallest h whose ARL from the fast-initial-response start (h / 2, where the
statistic starts and restarts after every resolution: Lucas and Crosier 1982) reaches the number
of in-control trials between false alarms the rule promises: calibrating from h / 2, not from 0,
makes the promise hold for every cycle of alarm, resolution and restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

RESOLUTION = 20
"""Grid units in the larger of the two weights (the smaller is rounded to whole units)."""
MAX_THRESHOLD = 100_000
"""Grid units; the ARL grows exponentially with h, so no rule gets near it."""
P0_STEP = 0.001
"""The lowest and (1 minus) the highest baseline rate a design is computed for."""


@dataclass(frozen=True)
class Design:
    """A calibrated CUSUM: weights and threshold in grid units."""

    p0: float
    p1: float
    up: int
    """Units a failure adds."""
    down: int
    """Units a success takes away (the statistic never goes below 0)."""
    unit: float
    """Nats (log-likelihood ratio) per grid unit."""
    threshold: int
    """h: the statistic alarms at h or more."""
    start: int
    """h // 2: the fast initial response's start, and the restart after a resolution."""
    arl0: float
    """In-control trials from `start` to a false alarm (exact for the grid statistic)."""
    target: float
    """The in-control trials between false alarms the design was asked for."""

    def update(self, statistic: int, successes: int, failures: int) -> int:
        """The statistic after a batch of trials (one minute's: their order within a minute is
        not known, so the batch moves it by its total)."""
        return max(0, statistic + failures * self.up - successes * self.down)

    def to_state(self) -> list[Any]:
        """Plain data for a state file (`from_state` reads it back); an ARL too large for a
        float is saved as None."""
        arl0 = self.arl0 if math.isfinite(self.arl0) else None
        return [
            self.p0,
            self.p1,
            self.up,
            self.down,
            self.unit,
            self.threshold,
            self.start,
            arl0,
            self.target,
        ]

    @classmethod
    def from_state(cls, data: list[Any]) -> Design:
        p0, p1, up, down, unit, threshold, start, arl0, target = data
        return cls(
            float(p0),
            float(p1),
            int(up),
            int(down),
            float(unit),
            int(threshold),
            int(start),
            math.inf if arl0 is None else float(arl0),
            float(target),
        )


def weights(p0: float, p1: float) -> tuple[int, int, float]:
    """(up, down, nats per unit) for a fall from p0 to p1 (0 < p1 < p0 < 1)."""
    fail = math.log((1 - p1) / (1 - p0))
    succeed = math.log(p0 / p1)
    unit = max(fail, succeed) / RESOLUTION
    return max(1, round(fail / unit)), max(1, round(succeed / unit)), unit


def arl(p: float, up: int, down: int, threshold: int, start: int) -> float:
    """Average number of trials, each a success with probability p, until the grid statistic
    reaches `threshold` from `start` (Brook and Evans' chain, solved exactly)."""
    h = threshold
    if start >= h:
        return 0.0
    q = 1.0 - p
    lo, hi = down, up
    rows = [[0.0] * (lo + hi + 1) for _ in range(h)]  # rows[i][c]: column i - lo + c
    rhs = [1.0] * h
    for i, row in enumerate(rows):
        row[lo] += 1.0
        row[max(0, i - down) - i + lo] -= p
        if i + up < h:
            row[lo + up] -= q
    for k in range(h):
        pivot_row = rows[k]
        pivot = pivot_row[lo]
        for i in range(k + 1, min(h, k + lo + 1)):
            row = rows[i]
            at = k - i + lo  # where column k sits in row i
            factor = row[at] / pivot
            if factor == 0.0:
                continue
            for c in range(hi + 1):
                row[at + c] -= factor * pivot_row[lo + c]
            rhs[i] -= factor * rhs[k]
    solution = [0.0] * h
    for i in range(h - 1, -1, -1):
        row = rows[i]
        total = rhs[i]
        for c in range(1, min(hi, h - 1 - i) + 1):
            total -= row[lo + c] * solution[i + c]
        solution[i] = total / row[lo]
    return solution[start]


def design(p0: float, relative_drop: float, target_trials: float) -> Design:
    """The smallest threshold whose in-control ARL from h / 2 is at least `target_trials`."""
    rounded = min(1 - P0_STEP, max(P0_STEP, _two_digits(p0, math.floor)))
    return _design(rounded, relative_drop, _two_digits(max(1.0, target_trials), math.ceil))


def _two_digits(value: float, direction: Callable[[float], int]) -> float:
    """Two significant digits, so a drifting rate or volume reuses its designs; rates are
    rounded down and targets up, each the cautious way (a lower p0 is a rarer false alarm)."""
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return float(round(direction(value / scale + 1e-9 * (direction is math.floor)) * scale, 12))


@lru_cache(maxsize=512)
def _design(p0: float, relative_drop: float, target: float) -> Design:
    p1 = (1 - relative_drop) * p0
    up, down, unit = weights(p0, p1)

    lengths: dict[int, float] = {}

    def run_length(h: int) -> float:
        """The ARL of threshold h (each computed once: the search ends on one it has tried)."""
        if h not in lengths:
            lengths[h] = arl(p0, up, down, h, h // 2)
        return lengths[h]

    low, high = 1, max(up, down) * 2
    while run_length(high) < target:
        low, high = high, high * 2
        if high > MAX_THRESHOLD:
            high = MAX_THRESHOLD
            break
    while low < high:  # the ARL grows with h
        middle = (low + high) // 2
        if run_length(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return Design(p0, p1, up, down, unit, high, high // 2, run_length(high), target)
