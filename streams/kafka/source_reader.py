"""One record read back from a source topic by its position, for the rare dead letter whose
original bytes are no longer at hand.

The journeys agent only has repartitioned events (re-encoded by ingest); when the engine refuses
one (`late_event`), the contract promises the original bytes and where they came from. Late
events are rare, so the message is fetched again from the clickstream topic at its recorded
offset rather than every event carrying its bytes through the internal topic.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka.clients import new_consumer
from streams.settings import Settings

log = logging.getLogger(__name__)


class SourceReader:
    """Reads single records by (topic, partition, offset) with a consumer of its own (no group,
    nothing committed), started on first use."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def read(self, topic: str, partition: int, offset: int) -> bytes | None:
        """The record's value, or None when it cannot be had (gone with retention or compaction,
        the broker unreachable within `timeout_s`): the caller keeps what it has."""
        async with self._lock:
            try:
                return await asyncio.wait_for(self._read(topic, partition, offset), self.timeout_s)
            except (TimeoutError, KafkaError) as exc:
                log.warning(
                    "could not read %s[%d] at offset %d back for a dead letter (%s): it keeps the "
                    "event as the engine had it",
                    topic,
                    partition,
                    offset,
                    exc.__class__.__name__,
                )
                return None

    async def _read(self, topic: str, partition: int, offset: int) -> bytes | None:
        if self._consumer is None:
            consumer = new_consumer(self.settings, isolation_level="read_committed")
            await consumer.start()
            self._consumer = consumer
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(tp, timeout_ms=500, max_records=50)
            for record in fetched.get(tp, []):
                if record.offset == offset:
                    return bytes(record.value) if record.value is not None else None
                if record.offset > offset:
                    return None  # compacted away
        return None

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
