"""What the dashboard's analysis panels compute from counter sums: time-to-convert distributions,
in-progress attempts with a projected conversion rate, the channels table and the alert overlay
of a step's trend. Pure functions over plain numbers (the stores read, `web.views` serves).

**Time to convert** of step k is, per attempt that reached it, the time from the attempt's
opening (its first step-1 event) to step k. The counters keep it as a histogram per step by the
time the step was reached (`core.counters.TIME_TO_CONVERT_S`); medians and percentiles are read
from it by interpolation inside the bucket (geometric between the bounds, linear in the first),
so they are exact to the bucket and close within it.

**Projection.** An attempt still open at step k may yet reach k+1. Counted by the moment their
attempts opened (cohorts), per step: entered = reached the next + dropped + in progress. The
projected rate p of k -> k+1 is the maximum-likelihood estimate of a mixture "cure" model: each
attempt at k eventually reaches k+1 with probability p, after a time T from its opening drawn
from F, the time-to-convert curve of step k+1 measured live over the lookback (by step time,
which in steady traffic does not favour short times as a young cohort would). An attempt that
reached k+1 counts as a conversion, one that dropped as none, and one still open at age a as
"not yet": it converts later with probability p (1 - F(a)) / (1 - p F(a)). The estimate solves
p = (converted + sum over open attempts of that probability) / entered by fixed-point
iteration (the EM algorithm; it increases monotonically from the observed rate). Open attempts
older than anything on the curve count as lost; a curve measured over a stream younger than the
funnel's window misses the slow conversions, so the projection is then a lower bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.core.config.model import AlertRule
from streams.core.measures.alerts import RESOLVE_ABSOLUTE, RESOLVE_RELATIVE
from streams.core.measures.counters import TIME_TO_CONVERT_S

EM_ITERATIONS = 200
EM_TOLERANCE = 1e-9


# ---- time to convert --------------------------------------------------------------------


def histogram(fields: Mapping[str, float], step: int, of: str = "t") -> list[tuple[int | None, int]]:
    """The step's time-to-convert histogram as (upper bound in ms or None for infinity, count):
    from the attempt's opening (`of` t), or from the step before (`of` g)."""
    out: list[tuple[int | None, int]] = [
        (le * 1000, int(fields.get(f"{of}:{step}:{le}", 0))) for le in TIME_TO_CONVERT_S
    ]
    out.append((None, int(fields.get(f"{of}:{step}:inf", 0))))
    return out


def quantile(buckets: Sequence[tuple[int | None, int]], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of a histogram, interpolated inside its bucket: linearly in the
    first (from 0), geometrically in the others; the open last bucket answers its lower bound."""
    total = sum(count for _, count in buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0
    for upper, count in buckets:
        if count and seen + count >= rank:
            if upper is None:
                return float(lower)
            share = (rank - seen) / count
            if lower == 0:
                return upper * share
            return float(lower * (upper / lower) ** share)
        seen += count
        lower = upper if upper is not None else lower
    return float(lower)


def cdf(buckets: Sequence[tuple[int | None, int]]) -> Callable[[float], float]:
    """F(t): the share of conversions that took at most t ms, interpolated as `quantile` does
    (piecewise linear in the first bucket, in log time in the others; 1 past the last bound)."""
    total = sum(count for _, count in buckets)
    points: list[tuple[float, float]] = []
    seen = 0
    for upper, count in buckets:
        seen += count
        if upper is not None:
            points.append((float(upper), seen / total if total else 0.0))

    def at(t: float) -> float:
        if total == 0:
            return 1.0
        lower, below = 0.0, 0.0
        for upper, share in points:
            if t <= upper:
                if lower == 0:
                    return below + (share - below) * max(0.0, t) / upper
                part = math.log(t / lower) / math.log(upper / lower)
                return below + (share - below) * part
            lower, below = upper, share
        return 1.0 if t > lower else below

    return at


def time_to_convert(fields: Mapping[str, float], steps: Sequence[str]) -> list[dict[str, Any]]:
    """Per step after the first: conversions, mean, median, p90 and the histogram."""
    out = []
    for k in range(1, len(steps)):
        buckets = histogram(fields, k)
        count = sum(c for _, c in buckets)
        out.append(
            {
                "step": steps[k],
                "index": k,
                "conversions": count,
                "mean_ms": fields.get(f"ts:{k}", 0) / count if count else None,
                "median_ms": quantile(buckets, 0.5),
                "p90_ms": quantile(buckets, 0.9),
                "beyond_last_bucket": buckets[-1][1],
                "histogram": [{"le_ms": upper, "count": c} for upper, c in buckets],
            }
        )
    return out


# ---- in progress, dropped, projected --------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    rate: float | None
    """The projected eventual rate k -> k+1."""
    converted: float
    """Attempts projected to reach k+1: those that did, plus the expected share of the open."""
    iterations: int


def project(
    entered: int, converted: int, open_by_age: Sequence[tuple[float, int]], curve: Callable[[float], float]
) -> Projection:
    """The EM estimate of the eventual rate (module docstring). `open_by_age`: (age in ms, count)
    of attempts still open at the step; `curve`: F, the time-to-convert CDF of the next step."""
    if entered <= 0:
        return Projection(None, 0.0, 0)
    ages = [(curve(age), count) for age, count in open_by_age if count > 0]
    p = min(1.0, converted / entered)
    expected = 0.0
    for iteration in range(1, EM_ITERATIONS + 1):
        expected = sum(count * _later(p, f) for f, count in ages)
        updated = min(1.0, (converted + expected) / entered)
        if abs(updated - p) < EM_TOLERANCE:
            return Projection(updated, converted + expected, iteration)
        p = updated
    return Projection(p, converted + expected, EM_ITERATIONS)


def _later(p: float, f: float) -> float:
    """P(converts later | not converted by an age where the curve is at f)."""
    if f >= 1.0:
        return 0.0
    return p * (1.0 - f) / (1.0 - p * f)


def _waiting(
    waiting: Mapping[int, Mapping[str, float]], waiting_ms: int, as_of_ms: int, k: int
) -> tuple[int, int, list[tuple[float, int]]]:
    """Attempts that reached step k in the cohorts `waiting` (r: fields): how many, how many went
    on, and the open ones by how long they have waited at k."""
    entered = went_on = 0
    open_by_age: list[tuple[float, int]] = []
    for start, fields in waiting.items():
        e, n, d = (int(fields.get(f"{name}:{k}", 0)) for name in ("e", "n", "d"))
        entered, went_on = entered + e, went_on + n
        if e - n - d > 0:
            open_by_age.append((max(0.0, as_of_ms - (start + waiting_ms / 2)), e - n - d))
    return entered, went_on, open_by_age


def progress(
    cohorts: Mapping[int, Mapping[str, float]],
    cohort_ms: int,
    as_of_ms: int,
    steps: Sequence[str],
    curves: Mapping[int, Callable[[float], float]],
    waiting: Mapping[int, Mapping[str, float]] | None = None,
    waiting_ms: int = 0,
) -> list[dict[str, Any]]:
    """Per step, over the attempts that opened in the cohorts given (start of bucket -> fields
    e:<k>, d:<k>, d:<k>:<reason>, ci:<k>, co:<k>): entered, reached the next step, dropped (by
    reason), still in progress, the observed rates and the projection.

    An attempt carried over from an earlier funnel version (docs/howto/changing-funnels.md)
    enters the new version's cohort at every step it had reached (`ci:<k>`: counted as entered
    and, below its step, as reached next) and leaves the old version's at its step (`co:<k>`:
    no longer in progress there, nor dropped).

    Without `waiting`, the projection ages the open attempts from their opening, with
    `curves[k + 1]` the time from opening to step k+1. With `waiting` (cohorts by the time each
    attempt reached its step, `r:` fields), it ages them from reaching step k, with `curves[k + 1]`
    the time from step k to k+1: the share of the waiting attempts that the model expects to go
    on is applied to this window's open attempts (a cart left an hour ago is judged by how carts
    left an hour ago fare, not by how long ago its visitor first looked)."""
    out = []
    last = len(steps) - 1
    for k, name in enumerate(steps):
        entered = reached = dropped = carried_in = carried_out = 0
        reasons: dict[str, int] = {}
        open_by_age: list[tuple[float, int]] = []
        for start, fields in cohorts.items():
            came = int(fields.get(f"ci:{k}", 0))
            e = int(fields.get(f"e:{k}", 0)) + came
            nxt = int(fields.get(f"e:{k + 1}", 0) + fields.get(f"ci:{k + 1}", 0)) if k < last else 0
            d = int(fields.get(f"d:{k}", 0))
            went = int(fields.get(f"co:{k}", 0))
            entered, reached, dropped = entered + e, reached + nxt, dropped + d
            carried_in, carried_out = carried_in + came, carried_out + went
            for key, value in fields.items():
                if key.startswith(f"d:{k}:"):
                    reason = key.split(":", 2)[2]
                    reasons[reason] = reasons.get(reason, 0) + int(value)
            if k < last and e - nxt - d - went > 0:
                age = max(0.0, as_of_ms - (start + cohort_ms / 2))
                open_by_age.append((age, e - nxt - d - went))
        in_progress = sum(count for _, count in open_by_age)
        row: dict[str, Any] = {
            "step": name,
            "index": k,
            "entered": entered,
            "dropped": dropped,
            "dropped_by_reason": dict(sorted(reasons.items())),
            "in_progress": in_progress,
            "carried_in": carried_in,
            "carried_out": carried_out,
        }
        if k < last:
            curve = curves.get(k + 1, lambda _: 1.0)
            if waiting is None:
                projection = project(entered, reached, open_by_age, curve)
                projected = projection.converted
            else:
                w_entered, w_on, w_open = _waiting(waiting, waiting_ms, as_of_ms, k)
                w_projection = project(w_entered, w_on, w_open, curve)
                w_count = sum(count for _, count in w_open)
                later = (w_projection.converted - w_on) / w_count if w_count else 0.0
                projected = reached + in_progress * later
            row |= {
                "reached_next": reached,
                "rate_observed": reached / entered if entered else None,
                "rate_of_closed": reached / (reached + dropped) if reached + dropped else None,
                "rate_projected": projected / entered if entered else None,
                "projected_reached_next": round(projected, 1),
            }
        else:
            row["completed"] = entered
        out.append(row)
    return out


# ---- channels and landing pages -------------------------------------------------------------

CHANNEL_COLUMNS = (
    "sessions",
    "converting_sessions",
    "conversion_rate",
    "conversions",
    "value",
    "avg_decision_time_ms",
    "microconversions",
    "micro_macro_ratio",
    "avg_session_duration_ms",
    "pages_per_session",
    "bounce_rate",
)
CHANNEL_BASES = {
    "closed sessions (journeys.sessions)": [
        "sessions",
        "converting_sessions",
        "conversion_rate",
        "microconversions",
        "micro_macro_ratio",
        "avg_session_duration_ms",
        "pages_per_session",
        "bounce_rate",
    ],
    "macroconversions as they happen, in sessions still open too (conversions.macro)": [
        "conversions",
        "value",
        "avg_decision_time_ms",
    ],
}
"""What each column counts: a session is counted when it closes (30 minutes after its last event),
a conversion when it happens, so a row can show more conversions than converting sessions while
its sessions are open; `conversion_rate` stays on one basis (closed sessions)."""


def channel_rows(
    fields: Mapping[str, float], dim: str, goal: str, split: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The channels table (`core.counters` c: fields): a row per value of `dim` (and visitor type
    with `split`), and the totals (per visitor type when split)."""
    marker = f"|{dim}="
    groups: dict[tuple[str, str | None], dict[str, float]] = {}
    totals: dict[tuple[str, str | None], dict[str, float]] = {}
    total: dict[str, Any]
    for key, amount in fields.items():
        metric, _, rest = key.partition("|")
        if f"|{rest}".startswith(marker):
            value, _, visitor = rest[len(marker) - 1 :].partition("|visitor_type=")
            if bool(visitor) != split:
                continue
            groups.setdefault((value, visitor or None), {})[metric] = amount
        elif rest.startswith("visitor_type="):
            visitor = rest.split("=", 1)[1]
            totals.setdefault(("", visitor), {})[metric] = amount
    rows = [
        _row(metrics, goal) | {dim: value, **_visitor(visitor)}
        for (value, visitor), metrics in groups.items()
    ]
    if split:
        total = {
            visitor or "": _row(metrics, goal) for (_, visitor), metrics in sorted(totals.items(), key=_key)
        }
    else:
        merged: dict[str, float] = {}
        for metrics in totals.values():
            for metric, amount in metrics.items():
                merged[metric] = merged.get(metric, 0) + amount
        total = {"all": _row(merged, goal)}
    return rows, total


def _key(item: tuple[tuple[str, str | None], Any]) -> str:
    return item[0][1] or ""


def _visitor(visitor: str | None) -> dict[str, str]:
    return {} if visitor is None else {"visitor_type": visitor}


def _row(metrics: Mapping[str, float], goal: str) -> dict[str, Any]:
    sessions = int(metrics.get("s", 0))
    converting = int(metrics.get(f"cs:{goal}", 0))
    conversions = int(metrics.get(f"n:{goal}", 0))
    in_sessions = int(metrics.get("cv", 0))
    micro = int(metrics.get("mi", 0))
    return {
        "sessions": sessions,
        "converting_sessions": converting,
        "conversion_rate": converting / sessions if sessions else None,
        "conversions": conversions,
        "value": round(metrics.get(f"v:{goal}", 0.0), 2),
        "avg_decision_time_ms": metrics.get(f"dt:{goal}", 0) / conversions if conversions else None,
        "microconversions": micro,
        "micro_macro_ratio": micro / in_sessions if in_sessions else None,
        "avg_session_duration_ms": metrics.get("dur", 0) / sessions if sessions else None,
        "pages_per_session": metrics.get("pv", 0) / sessions if sessions else None,
        "bounce_rate": metrics.get("b", 0) / sessions if sessions else None,
    }


# ---- a step's trend and its alert ----------------------------------------------------------


def thresholds(rule: AlertRule, baseline_rate: float | None) -> tuple[float | None, float | None]:
    """The rates under which the rule fires and above which it resolves (core.alerts.judge), for
    a baseline rate; None where neither condition applies."""
    fire: list[float] = []
    resolve: list[float] = []
    if rule.relative_drop is not None and baseline_rate is not None:
        fire.append((1 - rule.relative_drop) * baseline_rate)
        resolve.append((1 - rule.relative_drop * RESOLVE_RELATIVE) * baseline_rate)
    if rule.drop_below is not None:
        fire.append(rule.drop_below)
        resolve.append(rule.drop_below * RESOLVE_ABSOLUTE)
    return (max(fire) if fire else None, max(resolve) if resolve else None)


Grid = tuple[int, int, int]
"""(start of the first bucket, number of buckets, bucket size), in ms."""


def sliding_grids(first_end: int, count: int, size: int, lo: int, hi: int) -> list[Grid]:
    """What to read for the sums over [p_i + lo, p_i + hi), p_i = first_end + i * size, i < count
    (lo < hi, multiples of size). When the spans of the first and last points overlap, their
    common part is read once as one span (rollups serve it) and only the two edges bucket by
    bucket; otherwise the whole stretch bucket by bucket. `sliding_sums` combines the reads."""
    span = (hi - lo) // size
    if count - 1 < span:
        last = first_end + (count - 1) * size
        return [
            (last + lo, 1, first_end + hi - (last + lo)),
            (first_end + lo, count - 1, size),
            (first_end + hi, count - 1, size),
        ]
    return [(first_end + lo, count - 1 + span, size)]


def sliding_sums(
    grids: Sequence[Sequence[Sequence[float]]], count: int, size: int, lo: int, hi: int
) -> list[list[float]]:
    """The sums per point from the reads `sliding_grids` planned (one list of field sums per point)."""
    if len(grids) == 3:
        (common,), left, right = grids
        after = _prefix(left, len(common))  # left[i:] = after[-1] - after[i]
        before = _prefix(right, len(common))  # right[:i] = before[i]
        return [
            [common[j] + after[-1][j] - after[i][j] + before[i][j] for j in range(len(common))]
            for i in range(count)
        ]
    (whole,) = grids
    span = (hi - lo) // size
    prefix = _prefix(whole, len(whole[0]) if whole else 0)
    return [[b - a for a, b in zip(prefix[i], prefix[i + span], strict=True)] for i in range(count)]


def _prefix(buckets: Sequence[Sequence[float]], width: int) -> list[list[float]]:
    out = [[0.0] * width]
    for bucket in buckets:
        out.append([a + b for a, b in zip(out[-1], bucket, strict=True)])
    return out
