"""A consumer batch's counter increments folded into one per key and field, before Redis.

Every output message makes some forty increments (each step, breakdown, bucket resolution and
channel field), and most of a batch's land on the same few hashes: the minute, hour and day
buckets its outputs share. Folding them here sends Redis one HINCRBY per key and field instead
of one per output, with the same result:

- `h` (HINCRBY): the amounts summed, as integers;
- `f` (HINCRBYFLOAT): the amounts summed exactly as decimals (`Decimal(str(amount))`, the digits
  each one would have been sent with), so the sum is the exact one;
- `p` (PFADD): the members united (a HyperLogLog's registers do not depend on order or grouping);
- `m` (keep the max): the largest amount;
- `l` (capped LPUSH): the entries in order, each run of one cap pushed together and trimmed once,
  keeping only the last `cap` entries of a run (the earlier ones would be trimmed anyway).

A field is written by one kind of increment (a counter is either summed or kept at its maximum),
so the kinds are applied one after another. It works at the level of `core.counters.Op`, so
whatever increments `increments` makes are folded alike. Which messages are folded (the fresh
ones, not those already applied) is the store's business: `redis_store`.

An output's increments come unstamped (`core.counters.Increments`, or `tally.Tallied`, which
writes them straight into the slots): the same fields under the finest bucket and each rollup.
They are folded once per key prefix and finest bucket (a slot), and only the folded sums are
stamped with each resolution's bucket (`wire`): a third of the work, and no `Op` built per
resolution. A slot keeps the fields incremented by one as a list, counted at each resolution by
`collections`' C counter. Sums, unions and the two other kinds do not depend on the grouping,
so the result is the same as folding the stamped list.
"""

from __future__ import annotations

from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from streams.core.measures.counters import COHORT_LEVELS, Increments, Item, Op, resolution_labels
from streams.counters.tally import Tallied

Slot = tuple[list[str], dict[str, int], dict[str, Decimal], dict[str, None]]
"""The folded items of one key prefix and finest bucket: the fields incremented by one (each
time, counted when stamped: `collections`' C counter), other sums, decimal sums, members."""


class BatchIncrements:
    """The increments of a batch, folded per key and field (see the module docstring)."""

    __slots__ = ("_stamped", "floats", "ints", "lists", "maxima", "members", "slots")

    def __init__(self) -> None:
        self.ints: dict[str, dict[str, int]] = {}
        self.floats: dict[str, dict[str, Decimal]] = {}
        self.maxima: dict[str, dict[str, int | float | str]] = {}
        self.members: dict[str, dict[str, None]] = {}
        self.lists: dict[str, list[tuple[int, list[str]]]] = {}
        # (key prefix, finest bucket start, bucket size, resolutions) -> its folded items, not
        # yet stamped (resolutions: how many, from the finest; 0 for all)
        self.slots: dict[tuple[str, int, int, int], Slot] = {}
        self._stamped = True

    def add(self, ops: Iterable[Op]) -> None:
        if type(ops) is Tallied:
            ops.fold_into(self)
            self._stamped = False
            return
        if type(ops) is Increments:
            self.add_increments(ops)
            return
        ints = self.ints
        for kind, key, name, amount in ops:
            if kind == "h":
                fields = ints.get(key)
                if fields is None:
                    fields = ints[key] = {}
                fields[name] = fields.get(name, 0) + (amount if type(amount) is int else int(amount))
            elif kind == "p":
                sketch = self.members.get(key)
                if sketch is None:
                    sketch = self.members[key] = {}
                sketch[name] = None
            elif kind == "f":
                sums = self.floats.setdefault(key, {})
                sums[name] = sums.get(name, Decimal(0)) + Decimal(str(amount))
            elif kind == "m":
                maxima = self.maxima.setdefault(key, {})
                held = maxima.get(name)
                if held is None or float(amount) > float(held):
                    maxima[name] = amount
            elif kind == "l":
                self.lists_add(key, name, int(amount))
            else:
                raise ValueError(f"unknown increment kind {kind!r}")

    def lists_add(self, key: str, entry: str, cap: int) -> None:
        """A capped LPUSH of `entry` onto `key`."""
        runs = self.lists.setdefault(key, [])
        if not runs or runs[-1][0] != cap:
            runs.append((cap, []))
        runs[-1][1].append(entry)

    def slot(self, prefix: str, at: int, size: int, levels: int) -> Slot:
        """The folded items of `prefix` at the finest bucket starting at `at` (`size` ms), kept at
        the first `levels` resolutions (0: all), to add to; stamped by `wire`."""
        slot = self.slots.get((prefix, at, size, levels))
        if slot is None:
            slot = self.slots[(prefix, at, size, levels)] = ([], {}, {}, {})
        return slot

    def add_increments(self, planned: Increments) -> None:
        """One output's increments, their groups folded under their finest bucket."""
        self.add(planned.head)
        size = planned.bucket_ms
        at = planned.at // size * size
        for prefix, items in planned.groups:
            self._fold(prefix, at, size, 0, items)
        for prefix, moment, items in planned.cohorts:
            self._fold(prefix, moment // size * size, size, COHORT_LEVELS, items)
        self._stamped = False

    def _fold(self, prefix: str, at: int, size: int, levels: int, items: list[Item]) -> None:
        ones, ints, floats, members = self.slot(prefix, at, size, levels)
        for kind, name, amount in items:
            if kind == "h":
                if amount == 1 and type(amount) is int:
                    ones.append(name)
                else:
                    ints[name] = ints.get(name, 0) + (amount if type(amount) is int else int(amount))
            elif kind == "p":
                members[name] = None
            elif kind == "f":
                floats[name] = floats.get(name, Decimal(0)) + Decimal(str(amount))
            else:
                # the groups hold sums and members only (`core.counters._bucket_increments`)
                raise ValueError(f"unexpected increment kind {kind!r} in a bucket group")

    def _stamp(self) -> None:
        """Stamp the folded groups with each resolution's bucket and fold them in."""
        if self._stamped:
            return
        for (prefix, at, size, levels), (ones, ints, floats, members) in self.slots.items():
            labels = resolution_labels(size)
            for resolution, label in labels[:levels] if levels else labels:
                key = f"{prefix}{label}{at // resolution * resolution}"
                if ones or ints:
                    held = self.ints.get(key)
                    if held is None:
                        held = self.ints[key] = ints.copy()
                    elif ints:
                        for name, amount in ints.items():
                            held[name] = held.get(name, 0) + amount
                    if ones:
                        _count_elements(held, ones)
                if floats:
                    sums = self.floats.setdefault(key, {})
                    for name, value in floats.items():
                        sums[name] = sums.get(name, Decimal(0)) + value
                if members:
                    self.members.setdefault(key, {}).update(members)
        self.slots = {}
        self._stamped = True

    def wire(self) -> dict[str, Any]:
        """The folded increments as the apply script reads them, so that Redis gets exactly these
        digits: `h`, `f`, `m`: key -> field -> amount; `p`: key -> members; `l`: key -> [[cap,
        entries oldest first], ...]. Amounts are strings, but a key's integer sums go as JSON
        numbers when a double holds each exactly (Redis's Lua writes those as their digits)."""
        self._stamp()
        return {
            "h": {key: _exact(fields) for key, fields in self.ints.items()},
            "f": {key: {f: _decimal(a) for f, a in fields.items()} for key, fields in self.floats.items()},
            "m": {key: {f: str(a) for f, a in fields.items()} for key, fields in self.maxima.items()},
            "p": {key: list(members) for key, members in self.members.items()},
            "l": {key: [[cap, entries[-cap:]] for cap, entries in runs] for key, runs in self.lists.items()},
        }

    def __len__(self) -> int:
        """How many increments Redis is sent: one per key and field, member or list run."""
        self._stamp()
        return (
            sum(map(len, self.ints.values()))
            + sum(map(len, self.floats.values()))
            + sum(map(len, self.maxima.values()))
            + sum(map(len, self.members.values()))
            + sum(map(len, self.lists.values()))
        )


def fold(batches: Iterable[Iterable[Op]]) -> BatchIncrements:
    """The increments of several messages, folded."""
    folded = BatchIncrements()
    for ops in batches:
        folded.add(ops)
    return folded


_EXACT = 2**53  # integers below this in magnitude survive cjson's doubles unchanged


def _exact(sums: dict[str, int]) -> dict[str, int] | dict[str, str]:
    """A key's integer sums as they are, or as strings where one is too large for a double."""
    if max(sums.values()) < _EXACT and min(sums.values()) > -_EXACT:
        return sums
    return {name: str(amount) for name, amount in sums.items()}


def _decimal(value: Decimal) -> str:
    """Plain digits (no exponent), as HINCRBYFLOAT is sent; a sum of zero is `0`."""
    text = format(value, "f")
    return text if value else "0"
