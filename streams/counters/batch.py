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
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from streams.core.measures.counters import Op


class BatchIncrements:
    """The increments of a batch, folded per key and field (see the module docstring)."""

    __slots__ = ("floats", "ints", "lists", "maxima", "members")

    def __init__(self) -> None:
        self.ints: dict[str, dict[str, int]] = {}
        self.floats: dict[str, dict[str, Decimal]] = {}
        self.maxima: dict[str, dict[str, int | float | str]] = {}
        self.members: dict[str, dict[str, None]] = {}
        self.lists: dict[str, list[tuple[int, list[str]]]] = {}

    def add(self, ops: Iterable[Op]) -> None:
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
                cap = int(amount)
                runs = self.lists.setdefault(key, [])
                if not runs or runs[-1][0] != cap:
                    runs.append((cap, []))
                runs[-1][1].append(name)
            else:
                raise ValueError(f"unknown increment kind {kind!r}")

    def wire(self) -> dict[str, Any]:
        """The folded increments as the apply script reads them (amounts as strings, so Redis
        gets exactly these digits): `h`, `f`, `m`: key -> field -> amount; `p`: key -> members;
        `l`: key -> [[cap, entries oldest first], ...]."""
        return {
            "h": {key: {f: str(a) for f, a in fields.items()} for key, fields in self.ints.items()},
            "f": {key: {f: _decimal(a) for f, a in fields.items()} for key, fields in self.floats.items()},
            "m": {key: {f: str(a) for f, a in fields.items()} for key, fields in self.maxima.items()},
            "p": {key: list(members) for key, members in self.members.items()},
            "l": {key: [[cap, entries[-cap:]] for cap, entries in runs] for key, runs in self.lists.items()},
        }

    def __len__(self) -> int:
        """How many increments Redis is sent: one per key and field, member or list run."""
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


def _decimal(value: Decimal) -> str:
    """Plain digits (no exponent), as HINCRBYFLOAT is sent; a sum of zero is `0`."""
    text = format(value, "f")
    return text if value else "0"
