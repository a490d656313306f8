"""A bound on how many values of one breakdown dimension the counters keep: the first `cap` values
seen each day, then `(other)` (GA4 and Amplitude fold the long tail the same way).

Without it, a dimension such as browser version times country, or a free-text property, adds
counter fields without bound: every value multiplies the fields of each step, goal and table.
Values are admitted first come, per UTC day of the output's event time, so the values of a day
that come first (the frequent ones, almost always) keep their own counts. The sets live in the
process that counts: a restart, or a second counting process, may admit up to `cap` more in the
same day, which bounds the fields still (cap times the processes and restarts of a day).

The same setting (`breakdown_cap`, `CONVERSIONS_BREAKDOWN_CAP`) caps the values /live and the
Prometheus labels show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OTHER = "(other)"
DAY_MS = 86_400_000
KEPT_DAYS = 3
"""Days whose admitted values are remembered: late outputs of the day before still find theirs."""


def cap_values(values: Mapping[str, int | float], cap: int) -> dict[str, int | float]:
    """The `cap` largest values of a breakdown (by their number), the rest summed as `(other)`:
    how a table of counts is shown when more values were counted than it should list."""
    ranked = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    kept: dict[str, int | float] = dict(ranked[:cap])
    rest = ranked[cap:]
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + sum(count for _, count in rest)
    return kept


class ValueCap:
    """Admits at most `cap` distinct values per dimension and day; later ones become `(other)`."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the breakdown cap must be at least 1")
        self.cap = cap
        self._admitted: dict[int, dict[str, set[str]]] = {}

    def admit(self, day: int, dim: str, value: Any) -> Any:
        """`value` if it is (or can still be) one of the day's kept values of `dim`, else `(other)`.
        None (no value) is never capped."""
        if value is None:
            return None
        days = self._admitted.get(day)
        if days is None:
            days = self._admitted[day] = {}
            for old in sorted(self._admitted)[:-KEPT_DAYS]:
                del self._admitted[old]
        seen = days.get(dim)
        if seen is None:
            seen = days[dim] = set()
        text = str(value)
        if text in seen:
            return value
        if len(seen) < self.cap:
            seen.add(text)
            return value
        return OTHER

    def admitted(self, day: int, dim: str) -> int:
        return len(self._admitted.get(day, {}).get(dim, ()))


def capped_output(output: Mapping[str, Any], cap: ValueCap, at_ms: int) -> dict[str, Any]:
    """The output with every value the counters break down by capped: its breakdowns, its channel
    and landing page, and its audience fields."""
    day = at_ms // DAY_MS
    out = dict(output)
    breakdowns = output.get("breakdowns")
    if breakdowns:
        out["breakdowns"] = {dim: cap.admit(day, dim, value) for dim, value in breakdowns.items()}
    for dim in ("channel", "landing_page"):
        if output.get(dim) is not None:
            out[dim] = cap.admit(day, dim, output[dim])
    audience = output.get("audience")
    if audience:
        out["audience"] = {
            name: cap.admit(day, f"audience.{name}", value) for name, value in audience.items()
        }
    return out
