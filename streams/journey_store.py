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
its true end, with a plain consumer (`reader`, set by the app), and tells Faust to go on from
the end the broker reports.

This store skips, in recovery, every record at or below the last offset this worker wrote and
had acknowledged in that partition (those values are here already, or newer), applies what
other workers wrote, and tells Faust how far it has read. A partition handed to another
worker is forgotten (`forget_partition`), so it is read in full if it comes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from faust import stores
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP, EventT

SCHEME = "journeys-memory"


ChangelogReader = Callable[[Any, list[int]], Awaitable[None]]


class ReadsItsChangelog:
    """Before Faust's recovery, the app's `reader` reads every assigned changelog partition of
    the store to its true end with a plain consumer (many times faster than Faust's recovery
    here) and hands the records to the store's `apply_read`."""

    reader: ChangelogReader | None = None
    partitions_of: Callable[[set[TP]], list[int]] = staticmethod(lambda assigned: [])
    key_partition: Callable[[str], int] | None = None
    """The changelog partition of a table key (set by the app, as `reader` is)."""

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)  # type: ignore[misc]
        if self.reader is not None:
            await self.reader(self, self.partitions_of(assigned))


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


class JourneyRocksStore(ReadsItsChangelog, RocksStore):
    """The RocksDB store, read to the changelog's true end before Faust's recovery (the same
    reader as the memory store): Faust alone would stop at Tansu's short end offset and write
    older values over the last batch's keys.

    Faust records a partition's changelog position on disk only when it applies changelog
    records; this store also records each of its own acknowledged writes, in the same database
    and after the value it wrote, so a restarted worker reads only what was written after its
    last acknowledged write instead of the whole changelog."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._reported: dict[TP, int] = {}
        self._written: dict[int, int] = {}

    def _partition_of(self, key: bytes) -> int:
        assert self.key_partition is not None, "the app sets key_partition"
        return self.key_partition(orjson.loads(key))

    def _set(self, key: bytes, value: bytes | None) -> None:
        # Faust's version takes the partition from the event being processed, and the agents
        # work on runs of events, not one at a time
        partition = self._partition_of(key)
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db_for_partition(self._partition_of(key)).get(key)
        return value

    def note_written(self, tp: TP, offset: int) -> None:
        """One of our own changelog writes was acknowledged at `offset`."""
        if offset > self._written.get(tp.partition, -1) and tp.partition in self._dbs:
            self._written[tp.partition] = offset
            self.set_persisted_offset(tp, offset)

    def forget_partition(self, partition: int) -> None:
        """Its keys are about to be evicted: read it in full if it comes back. (A partition
        Faust revoked is closed, and its database on disk stays whole with its position.)"""
        self._written.pop(partition, None)
        db = self._dbs.get(partition)
        if db is not None:
            db.delete(self.offset_key)

    def position(self, tp: TP) -> int:
        stored = super().persisted_offset(tp)
        return -1 if stored is None else int(stored)

    def persisted_offset(self, tp: TP) -> int | None:
        stored = super().persisted_offset(tp)
        if stored is None or tp not in self._reported:
            return stored
        return min(int(stored), self._reported[tp])

    def apply_read(
        self, tp: TP, records: Iterable[tuple[bytes, bytes | None, int]], reported_end: int
    ) -> int:
        db = self._db_for_partition(tp.partition)
        applied, last = 0, None
        for key, value, offset in records:
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
            applied, last = applied + 1, offset
        if last is not None:
            self.set_persisted_offset(tp, last)
            self._written[tp.partition] = max(last, self._written.get(tp.partition, -1))
        self._reported[tp] = reported_end - 1
        return applied


ROCKS_SCHEME = "journeys-rocksdb"


def register(table_store: str) -> str:
    """Make our stores known to Faust; returns the URL to use for `table_store`."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:JourneyMemoryStore"
    stores.STORES.aliases[ROCKS_SCHEME] = f"{__name__}:JourneyRocksStore"
    if table_store.startswith("memory:"):
        return f"{SCHEME}://"
    if table_store.startswith("rocksdb:"):
        return ROCKS_SCHEME + table_store[len("rocksdb") :]
    return table_store
