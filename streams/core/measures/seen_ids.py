"""The ids of the microconversions an evaluator has counted, per minute of event time.

Delivery is at least once: a repeated output must not count twice in an alert rule or an
experiment. Ids are kept only for the minutes not yet judged (a later copy of an older one is
ignored as late anyway), and forgotten when event time passes them; the oldest minute kept is
known, so an `advance` that forgets nothing does not look at them."""

from __future__ import annotations

from typing import Any, Final

_NONE: Final = (1 << 62) - 1
"""The oldest minute when none is kept: later than any, and a machine integer (compiled, `int |
None` is a boxed object compared per call: `forget_before` runs after every line)."""


class SeenIds:
    __slots__ = ("_by_minute", "_oldest")

    def __init__(self) -> None:
        self._by_minute: dict[int, set[str]] = {}
        self._oldest: int = _NONE

    def first(self, identifier: str, minute: int) -> bool:
        """Whether this is the id's first time in `minute` (it is remembered then)."""
        seen = self._by_minute.get(minute)
        if seen is None:
            seen = self._by_minute[minute] = set()
            self._oldest = min(self._oldest, minute)
        elif identifier in seen:
            return False
        seen.add(identifier)
        return True

    def forget_before(self, t: int) -> None:
        if self._oldest < t:
            for minute in [m for m in self._by_minute if m < t]:
                del self._by_minute[minute]
            self._oldest = min(self._by_minute, default=_NONE)

    def to_state(self) -> list[list[Any]]:
        return [[minute, sorted(ids)] for minute, ids in self._by_minute.items()]

    @classmethod
    def from_state(cls, data: list[list[Any]]) -> SeenIds:
        seen = cls()
        seen._by_minute = {int(minute): {str(i) for i in ids} for minute, ids in data}
        seen._oldest = min(seen._by_minute, default=_NONE)
        return seen
