"""Event-time alignment of the clickstream partitions one ingest consumer holds.

A replay reads hours of history at once, and nothing keeps the input partitions at the same
event time: a fetch that comes back late, or a partition whose messages each hold more events,
lets one run hours ahead of another. With unkeyed input (one person's events spread over the
partitions) the journey then gets the later events first and refuses the earlier ones past the
late tolerance (`late_event`), or counts them in another order than `conversions process` would.
Whether the input is keyed cannot be known before the first runs are sent, and event time that
runs ahead also holds back every watermark behind it, so the partitions are aligned whatever
the keys. After every run:

- a partition *holds* event time back while it has records the consumer has not read yet (its
  position short of the broker's end, or records fetched and not handed over) and it has not
  been silent for `source_idle_s` with them (a stuck fetch, an open transaction): a partition at
  its end, caught up with the live head, holds nothing back, nor one whose messages held no
  event so far (`Ingest.held_at`: garbage on one partition must not stop the others);
- ingest sends no message whose earliest event is later than where every holding partition has
  been read to (`Ingest.repartition`'s `holding`); what lies beyond is carried to a later run;
- a partition read more than `bound_ms` (half the late tolerance) past the slowest holding one
  is paused (aiokafka `pause`: not fetched), so that what is carried stays small, and resumed
  once the slowest has caught up with it or has reached its end.

The slowest holding partition is never paused, so a run always moves on. At the live head every
partition is at its end after its run, and nothing is carried or paused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from aiokafka import TopicPartition

from streams.core.input.repartition import source_name

log = logging.getLogger(__name__)


class Alignment:
    """Which partitions hold event time back, and which to pause, after each run."""

    def __init__(self, bound_ms: int, idle_s: float, read_committed: bool) -> None:
        self.bound_ms = bound_ms
        self.idle_s = idle_s
        self.read_committed = read_committed
        self._silent_since: dict[TopicPartition, float] = {}  # holding, and nothing read since

    async def holding(self, consumer: Any, run: Mapping[TopicPartition, list[Any]]) -> set[TopicPartition]:
        """The assigned partitions with records still to read, after this run."""
        now, paused = time.monotonic(), consumer.paused()
        found: set[TopicPartition] = set()
        for tp in consumer.assignment():
            if not await self._has_more(consumer, tp):
                self._silent_since.pop(tp, None)
                continue
            if run.get(tp) or tp in paused:
                self._silent_since.pop(tp, None)
            elif now - self._silent_since.setdefault(tp, now) >= self.idle_s:
                continue  # more is there, and nothing came for a while: do not wait for it
            found.add(tp)
        return found

    async def _has_more(self, consumer: Any, tp: TopicPartition) -> bool:
        if consumer.holds_fetched(tp):
            return True
        end: int | None = consumer.highwater(tp)
        if self.read_committed:
            stable: int | None = consumer.last_stable_offset(tp)
            end = stable if stable is not None else end
        if end is None:
            return True  # not fetched yet
        position: int = await consumer.position(tp)
        return position < end

    def pace(
        self,
        consumer: Any,
        holding: Collection[TopicPartition],
        read_to: Callable[[str], int | None],
        held_at: Callable[[str], int | None],
    ) -> None:
        """Pause the partitions read more than `bound_ms` past the slowest holding one
        (`Ingest.held_at`), resume the others."""
        ahead: set[TopicPartition] = set()
        held = [held_at(source_name(tp.topic, tp.partition)) for tp in holding]
        slowest = min((at for at in held if at is not None), default=None)
        if slowest is not None:
            for tp in consumer.assignment():
                at = read_to(source_name(tp.topic, tp.partition))
                if at is not None and at > slowest + self.bound_ms:
                    ahead.add(tp)
        paused = consumer.paused()
        if ahead - paused:
            log.debug("ingest: pausing %s, read ahead of the slowest partition", sorted(ahead - paused))
            consumer.pause(*sorted(ahead - paused))
        if paused - ahead:
            log.debug("ingest: resuming %s", sorted(paused - ahead))
            consumer.resume(*sorted(paused - ahead))

    def forget(self, revoked: Collection[TopicPartition]) -> None:
        for tp in revoked:
            self._silent_since.pop(tp, None)
