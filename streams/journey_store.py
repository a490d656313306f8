"""The memory store for the journeys table, which recovery cannot roll back.

Faust's memory store reports no changelog position, so at every rebalance Faust reads the
whole changelog of every partition this worker keeps, up to the highwater it sees, and writes
it over the live state. Our latest writes can be acknowledged yet above that highwater (seen
on Tansu), so recovery undid them while the journey engine's clocks stayed ahead, and the
replay that followed judged events against a watermark the state had not seen (the
two-worker test found sessions summarized twice with different contents).

Tansu also reports a partition's end as the start of its last batch plus one, so recovery
stops short of the last batch; the app reads that tail itself (`apply_tail`).

This store skips, in recovery, every record at or below the last offset this worker wrote and
had acknowledged in that partition (those values are here already, or newer), applies what
other workers wrote, and tells Faust how far it has read. A partition handed to another
worker is forgotten (`forget_partition`), so it is read in full if it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust import stores
from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

SCHEME = "journeys-memory"


class JourneyMemoryStore(MemoryStore):  # type: ignore[type-arg]
    def __post_init__(self) -> None:
        super().__post_init__()
        self._read: dict[TP, int] = {}
        self._written: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        """How far recovery has read: Faust goes on from there."""
        return self._read.get(tp)

    def note_written(self, tp: TP, offset: int) -> None:
        """One of our own changelog writes was acknowledged at `offset`."""
        self._written[tp] = max(offset, self._written.get(tp, -1))

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Apply what others wrote; our own writes, up to the last acknowledged one, are
        already here, and newer than what the broker may show of them yet."""
        fresh = []
        for event in batch:
            tp, offset = event.message.tp, event.message.offset
            self._read[tp] = max(offset, self._read.get(tp, -1))
            if offset > self._written.get(tp, -1):
                fresh.append(event)
        super().apply_changelog_batch(fresh, to_key, to_value)

    def apply_tail(self, tp: TP, records: Iterable[tuple[str, bytes | None, int]]) -> int:
        """Apply changelog records read past the end the broker reported; returns how many."""
        applied = 0
        for key, value, offset in records:
            if offset <= self._read.get(tp, -1):
                continue
            self._read[tp] = offset
            if offset <= self._written.get(tp, -1):
                continue
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            applied += 1
        return applied

    def forget_partition(self, partition: int) -> None:
        for offsets in (self._read, self._written):
            for tp in [tp for tp in offsets if tp.partition == partition]:
                del offsets[tp]


def register() -> str:
    """Make `journeys-memory://` a store URL Faust knows; returns the URL."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:JourneyMemoryStore"
    return f"{SCHEME}://"
