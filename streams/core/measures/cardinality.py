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

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

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
