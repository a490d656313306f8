"""The RocksDB journeys store (rocksdict, on disk under `CONVERSIONS_DATA_DIR`): the production
option, which a restarted worker reads back from its own disk."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP

from streams.pipeline.stores.base import ReadsItsChangelog


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
