"""The memory store for the journeys table, which recovery cannot roll back.

Faust's memory store reports no changelog position, so at every rebalance Faust reads the
whole changelog of every partition this worker keeps, up to the highwater it sees, and writes
it over the live state. Our latest writes can be acknowledged yet above that highwater (seen
on Tansu), so recovery undid them while the journey engine's clocks stayed ahead, and the
replay that followed judged events against a watermark the state had not seen (the
two-worker test found sessions summarized twice with different contents).

Tansu also reports a partition's end as the start of its last batch plus one, so Faust's
recovery stops short of the last batch, and it reads a few thousand records a second here. So
before Faust's recovery runs, the store reads every assigned changelog partition itself, to
its true end, with a plain consumer (`reader`, set by the app: `Journeys.read_changelog`), and
tells Faust to go on from the end the broker reports.

This store skips, in recovery, every record at or below the last offset this worker wrote and
had acknowledged in that partition (those values are here already, or newer), applies what
other workers wrote, and tells Faust how far it has read. A partition handed to another
worker is forgotten (`forget_partition`), so it is read in full if it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP, EventT

from streams.pipeline.stores.base import ReadsItsChangelog


class JourneyMemoryStore(ReadsItsChangelog, MemoryStore):  # type: ignore[type-arg]
    def __post_init__(self) -> None:
        super().__post_init__()
        self._read: dict[TP, int] = {}
        self._reported: dict[TP, int] = {}
        self._written: dict[TP, int] = {}

    def _fresh(self, tp: TP, offset: int) -> bool:
        """Record `offset` as read; whether its record still has to be applied (not read before,
        and not one of our own acknowledged writes)."""
        if offset <= self._read.get(tp, -1):
            return False
        self._read[tp] = offset
        return offset > self._written.get(tp, -1)

    def position(self, tp: TP) -> int:
        return self._read.get(tp, -1)

    def persisted_offset(self, tp: TP) -> int | None:
        """Where Faust's recovery should go on from: what we read, but never past the end the
        broker reports (Tansu reports less than it has, and Faust refuses a position past it)."""
        if tp not in self._read:
            return None
        return min(self._read[tp], self._reported.get(tp, self._read[tp]))

    def note_written(self, tp: TP, offset: int) -> None:
        """One of our own changelog writes was acknowledged at `offset`."""
        self._written[tp] = max(offset, self._written.get(tp, -1))

    def apply_read(self, tp: TP, records: Iterable[tuple[str, bytes | None, int]], reported_end: int) -> int:
        """Apply changelog records read from `position(tp) + 1` on; returns how many changed
        the state. Our own writes, up to the last acknowledged one, are here already (or newer)."""
        applied = 0
        for key, value, offset in records:
            if not self._fresh(tp, offset):
                continue
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            applied += 1
        self._reported[tp] = reported_end - 1
        return applied

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """Faust's recovery (standby partitions, or anything our read did not cover)."""
        fresh = [event for event in batch if self._fresh(event.message.tp, event.message.offset)]
        super().apply_changelog_batch(fresh, to_key, to_value)

    def forget_partition(self, partition: int) -> None:
        for offsets in (self._read, self._reported, self._written):
            for tp in [tp for tp in offsets if tp.partition == partition]:
                del offsets[tp]
