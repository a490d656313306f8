"""Records for known partitions sent as whole batches, not one `send` each.

Faust's `Topic.send` costs about 40 us a record in Python (a future message, sensors, the
producer's metadata lookup and partitioner, the accumulator), which made publishing the
largest part of a journeys run after the engine itself. A run's outputs already know their
partition (the journey partition's number), so they are appended to one aiokafka
`BatchBuilder` per topic and partition and each builder is handed to the producer once.

The records go through the same aiokafka producer Faust uses, so Faust's commit, which flushes
that producer before committing offsets, still covers them: nothing is committed before its
outputs are delivered. Only for `at_least_once`; under `exactly_once` every record must go
through Faust's transactional producer, and the app keeps `Topic.send` there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Header = tuple[str, bytes]
Delivered = Callable[[str, int, int], None]
"""Told the topic, the partition and the offset of the last record of each delivered batch."""


class RecordBatches:
    """One run's records per topic and partition, sent by `send_all`."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer  # aiokafka.AIOKafkaProducer, started
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] | None = None,
    ) -> None:
        where = (topic, partition)
        builder = self._open.get(where)
        if builder is None:
            builder = self._open[where] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            # full: send it as it is, then start the next (an empty builder takes any one record
            # the producer's max_request_size allows)
            self._full.append((topic, partition, builder))
            builder = self._open[where] = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                size = len(value or b"")
                raise ValueError(f"a record of {size:,} bytes does not fit a batch for {topic}")

    async def send_all(self, on_delivered: Delivered | None = None) -> None:
        """Hand every batch to the producer, in the order appended per topic and partition."""
        ready = self._full + [(topic, partition, b) for (topic, partition), b in self._open.items()]
        self._full, self._open = [], {}
        for topic, partition, builder in ready:
            builder.close()
            delivered = await self._producer.send_batch(builder, topic, partition=partition)
            delivered.add_done_callback(_reporter(topic, partition, builder.record_count(), on_delivered))


def _reporter(topic: str, partition: int, records: int, on_delivered: Delivered | None) -> Any:
    def report(delivered: Any) -> None:
        if delivered.cancelled():
            return
        if delivered.exception() is not None:
            log.error(
                "a batch of %d records to %s[%d] was not delivered: %r",
                records,
                topic,
                partition,
                delivered.exception(),
            )
        elif on_delivered is not None:
            on_delivered(topic, partition, delivered.result().offset + records - 1)

    return report
