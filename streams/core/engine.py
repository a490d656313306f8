"""Many journeys at once: a state store, per-partition watermarks and a deadline index.

This is what both the Kafka worker and offline mode drive. Events of one identity always
land in the same partition (`partition_for`). Each partition keeps a heap of its journeys'
next deadlines, so timeouts fire for journeys that receive no new event without scanning
them all, and a watermark aligned over its sources: every source (a partition of an input
topic) reports how far its event time has got, and the partition's watermark is the
slowest source's, less the late tolerance. A fast source therefore cannot fire a deadline
before a slow source has delivered the event that would have kept it open, which makes
the outputs independent of how Kafka interleaves the sources.
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
    sources: dict[str, int] = field(default_factory=dict)
    waiting_for: set[str] = field(default_factory=set)
    """Expected sources not heard from yet: until each reports (or idles), no deadline fires."""
    floor: int | None = None
    """The watermark reached so far: it never goes back, even when every source goes idle."""
    idle_reached: int | None = None
    """How far the sources that went idle had got: once no source is active, event time gets
    there, since nothing earlier is coming (whichever order they went idle in)."""
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        config: CompiledConfig,
        store: MutableMapping[str, bytes],
        partitions: int,
        expected_sources: Iterable[str] = (),
    ) -> None:
        self.machine = JourneyMachine(config)
        self.config = config
        self.store = store
        self.partitions = partitions
        self.expected_sources = frozenset(expected_sources)
        self._clocks: dict[int, _PartitionClock] = {}

    def _clock(self, partition: int) -> _PartitionClock:
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = _PartitionClock(waiting_for=set(self.expected_sources))
        return clock

    def partition_of(self, identity: str) -> int:
        return partition_for(identity, self.partitions)

    def watermark(self, partition: int) -> int | None:
        clock = self._clocks.get(partition)
        if clock is None or clock.waiting_for:
            return None
        reached = min(clock.sources.values()) if clock.sources else clock.idle_reached
        if reached is not None:
            current = reached - self.config.late_tolerance
            if clock.floor is None or current > clock.floor:
                clock.floor = current
        return clock.floor

    def load(self, identity: str) -> Journey | None:
        raw = self.store.get(identity)
        return Journey.loads(raw) if raw is not None else None

    def process(self, event: ClickEvent, partition: int | None = None) -> Outputs:
        """Apply one event to its journey. Deadlines fire in `observe`, when sources move on."""
        if partition is None:
            partition = self.partition_of(event.identity)
        clock = self._clock(partition)
        journey, out = self.machine.apply(self.load(event.identity), event)
        self._save(clock, journey)
        return out

    def observe(self, partition: int, source: str, event_time: int) -> Outputs:
        """A source has delivered everything up to `event_time`: fire what that makes due."""
        clock = self._clock(partition)
        clock.waiting_for.discard(source)
        if event_time > clock.sources.get(source, event_time - 1):
            clock.sources[source] = event_time
        return self._fire_due(partition, clock)

    def forget_source(self, partition: int, source: str) -> Outputs:
        """Stop waiting for a source (gone idle, or moved to another worker)."""
        clock = self._clock(partition)
        was_waiting = source in clock.waiting_for
        clock.waiting_for.discard(source)
        reached = clock.sources.pop(source, None)
        if reached is not None:
            clock.idle_reached = max(reached, clock.idle_reached or reached)
        elif not was_waiting:
            return []
        return self._fire_due(partition, clock)

    def rebuild_deadlines(self, partition: int, identities: Iterable[str]) -> int:
        """Index the deadlines of journeys already in the store (after recovery or assignment)."""
        clock = self._clock(partition)
        count = 0
        for identity in identities:
            journey = self.load(identity)
            if journey is not None:
                self._schedule(clock, journey)
                count += 1
        return count

    def release_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the deadlines and clocks of partitions another worker now owns."""
        for partition in partitions:
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
