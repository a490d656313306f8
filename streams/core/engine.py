"""Many journeys at once: a state store, per-partition watermarks and a deadline index.

This is what both the Kafka worker and offline mode drive. Events of one identity always
land in the same partition (`partition_for`), every partition keeps its own watermark (the
latest event time seen there, less the late tolerance) and a heap of the journeys' next
deadlines, so timeouts fire for journeys that receive no new event without scanning them all.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from zlib import crc32

from streams.core.events import ClickEvent
from streams.core.journey import Journey, JourneyMachine, Outputs
from streams.core.matching import CompiledConfig


def partition_for(identity: str, partitions: int) -> int:
    """The partition that owns an identity's journey; stable across processes and restarts."""
    return crc32(identity.encode()) % partitions


@dataclass(slots=True)
class _PartitionClock:
    max_event_ts: int | None = None
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(self, config: CompiledConfig, store: MutableMapping[str, bytes], partitions: int) -> None:
        self.machine = JourneyMachine(config)
        self.config = config
        self.store = store
        self.partitions = partitions
        self._clocks: dict[int, _PartitionClock] = {}

    def partition_of(self, identity: str) -> int:
        return partition_for(identity, self.partitions)

    def watermark(self, partition: int) -> int | None:
        clock = self._clocks.get(partition)
        if clock is None or clock.max_event_ts is None:
            return None
        return clock.max_event_ts - self.config.late_tolerance

    def load(self, identity: str) -> Journey | None:
        raw = self.store.get(identity)
        return Journey.loads(raw) if raw is not None else None

    def process(self, event: ClickEvent, partition: int | None = None) -> Outputs:
        """Apply one event, then fire whatever the partition's new watermark makes due."""
        if partition is None:
            partition = self.partition_of(event.identity)
        clock = self._clocks.setdefault(partition, _PartitionClock())
        journey, out = self.machine.apply(self.load(event.identity), event)
        self._save(clock, journey)
        if clock.max_event_ts is None or event.ts_ms > clock.max_event_ts:
            clock.max_event_ts = event.ts_ms
        out.extend(self._fire_due(partition, clock))
        return out

    def advance_partition(self, partition: int, event_time: int) -> Outputs:
        """Move a partition's clock forward with no event (idle partitions, end of a replay)."""
        clock = self._clocks.setdefault(partition, _PartitionClock())
        if clock.max_event_ts is None or event_time > clock.max_event_ts:
            clock.max_event_ts = event_time
        return self._fire_due(partition, clock)

    def rebuild_deadlines(self, partition: int, identities: Iterable[str]) -> int:
        """Index the deadlines of journeys already in the store (after recovery or assignment)."""
        clock = self._clocks.setdefault(partition, _PartitionClock())
        count = 0
        for identity in identities:
            journey = self.load(identity)
            if journey is not None:
                clock.max_event_ts = max(clock.max_event_ts or journey.last_ts, journey.last_ts)
                self._schedule(clock, journey)
                count += 1
        return count

    def forget_partition(self, partition: int) -> None:
        self._clocks.pop(partition, None)

    def pending_deadlines(self, partition: int) -> int:
        clock = self._clocks.get(partition)
        return len(clock.scheduled) if clock else 0

    def _save(self, clock: _PartitionClock, journey: Journey) -> None:
        self.store[journey.identity] = journey.dumps()
        self._schedule(clock, journey)

    def _schedule(self, clock: _PartitionClock, journey: Journey) -> None:
        deadline = self.machine.next_deadline(journey)
        if deadline is None:
            return
        known = clock.scheduled.get(journey.identity)
        if known is None or deadline < known:
            clock.scheduled[journey.identity] = deadline
            heapq.heappush(clock.heap, (deadline, journey.identity))

    def _fire_due(self, partition: int, clock: _PartitionClock) -> Outputs:
        watermark = self.watermark(partition)
        out: Outputs = []
        if watermark is None:
            return out
        heap = clock.heap
        while heap and heap[0][0] < watermark:
            deadline, identity = heapq.heappop(heap)
            if clock.scheduled.get(identity) != deadline:
                continue
            del clock.scheduled[identity]
            journey = self.load(identity)
            if journey is None:
                continue
            fired = self.machine.advance(journey, watermark)
            if fired:
                out.extend(fired)
                self.store[identity] = journey.dumps()
            self._schedule(clock, journey)
        return out
