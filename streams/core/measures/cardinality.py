"""How many distinct values of a client-chosen field are kept apart (`CONVERSIONS_BREAKDOWN_CAP`).

Breakdown values, alert `by` values and experiment variants come from the events, so a client
can send as many as it likes: 10,000 campaign sources would make a 10,000-row answer, a
10,000-option selector, 10,000 Prometheus series and 10,000 alert states. Everywhere such values
are answered or kept, at most `cap` of them stay apart and the rest are summed as one:

- in answers (`top_values`, `fold_by_dimension`): the `cap` largest, ties by name, then
  `(other)`, the sum of the rest;
- in state and metric labels, where values arrive one by one (`Admitted`): the first `cap`
  distinct values, then `other` (a fixed label set: a Prometheus series never changes meaning).

A value that is literally `(other)` is summed with them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

BREAKDOWN_CAP = 50
"""The default of `CONVERSIONS_BREAKDOWN_CAP`."""
OTHER = "(other)"
"""The row, option or `by` value that sums the values past the cap."""
OTHER_LABEL = "other"
"""The Prometheus label value past the cap (label values are plain words by convention)."""

K = TypeVar("K", bound=Hashable)


def top_values(counts: Mapping[str, float], cap: int) -> tuple[list[str], list[str]]:
    """The values kept (the `cap` largest, ties by name) and those summed as `(other)`."""
    ranked = sorted(counts, key=lambda value: (-counts[value], value))
    return ranked[:cap], ranked[cap:]


def fold_fields(fields: Mapping[str, float], dim: str, folded: set[str]) -> dict[str, float]:
    """The counter fields `<field>|<dim>=<value>` of the `folded` values, summed into
    `<field>|<dim>=(other)` (what a report of `(other)` reads)."""
    marker = f"|{dim}="
    out: dict[str, float] = {}
    for key, count in fields.items():
        head, found, value = key.partition(marker)
        if found and value in folded:
            name = f"{head}{marker}{OTHER}"
            out[name] = out.get(name, 0.0) + count
    return out


def fold_by_dimension(counts: Mapping[str, int], cap: int) -> dict[str, int]:
    """Counts keyed `<dim>=<value>` with at most `cap` values per dimension, the rest summed
    as `<dim>=(other)`."""
    by_dim: dict[str, dict[str, int]] = {}
    for key, count in counts.items():
        dim, _, value = key.partition("=")
        by_dim.setdefault(dim, {})[value] = count
    out: dict[str, int] = {}
    for dim, values in by_dim.items():
        kept, folded = top_values(values, cap)
        out.update({f"{dim}={value}": values[value] for value in kept})
        if folded:
            out[f"{dim}={OTHER}"] = sum(values[value] for value in folded)
    return out


class Admitted(Generic[K]):
    """The first `cap` distinct values offered are kept as they are; any later one becomes
    `other`. Bounded: it remembers at most `cap` values."""

    def __init__(self, cap: int, other: K) -> None:
        self.cap = cap
        self.other = other
        self._seen: set[K] = set()

    def __call__(self, value: K) -> K:
        if value in self._seen:
            return value
        if len(self._seen) < self.cap:
            self._seen.add(value)
            return value
        return self.other

    def __len__(self) -> int:
        return len(self._seen)

    def values(self) -> list[K]:
        """The values admitted so far (for a state file), in a stable order."""
        return sorted(self._seen, key=repr)

    def load(self, values: Iterable[K]) -> None:
        """Admitted values saved by `values` (a resumed run admits the same ones)."""
        self._seen = set(values)


# ---- the counters: values admitted per dimension and day --------------------------------------
#
# In the counters (`measures.counters.increments`) every breakdown value (funnel breakdowns,
# channel, landing page, audience fields) passes `capped_output`: the first `cap` values of a
# dimension each UTC day of the output's event time keep their own fields, later ones count as
# `(other)`, so browser version times country cannot multiply the counter fields without bound.
# The admitted values live in the counting process: a restart, or a second counting process, may
# admit up to `cap` more the same day, which still bounds the fields.

DAY_MS = 86_400_000
KEPT_DAYS = 3
"""Days whose admitted values are remembered: late outputs of the day before still find theirs."""


def cap_values(values: Mapping[str, float], cap: int) -> dict[str, float]:
    """The `cap` largest values of a breakdown, the rest summed as `(other)` (`top_values`)."""
    kept, folded = top_values(dict(values), cap)
    out = {value: values[value] for value in kept}
    if folded:
        out[OTHER] = out.get(OTHER, 0) + sum(values[value] for value in folded)
    return out


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
