"""Reading a changelog topic's partitions to their true end with a plain consumer.

Tansu reports a partition's end as the start of its last batch plus one, so a reader that stops
at the reported end (Faust's recovery) misses the last batch; this one reads until the broker
has nothing more, then tells `apply` the reported end, so the caller can hand Faust a position it
accepts. The journeys stores use it before Faust's recovery (`pipeline.stores.base`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition

from streams.kafka.clients import new_consumer
from streams.settings import Settings

log = logging.getLogger(__name__)

Position = Callable[[int], int]
"""The last offset already applied in a partition (-1 for none)."""
Apply = Callable[[int, Sequence[Any], int], int]
"""(partition, records, reported end offset) -> how many records changed the state."""


async def read_to_end(
    settings: Settings, topic: str, partitions: list[int], position: Position, apply: Apply, name: str
) -> tuple[int, int]:
    """Read each partition from `position(p) + 1` until the broker has nothing more; returns
    (records read, records applied)."""
    if not partitions:
        return 0, 0
    consumer = new_consumer(settings, auto_offset_reset="earliest", max_partition_fetch_bytes=8_388_608)
    started = time.monotonic()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, position(tp.partition) + 1)
        applied = read = 0
        while batch := await consumer.getmany(timeout_ms=300, max_records=20_000):
            before = read
            for tp, records in batch.items():
                read += len(records)
                applied += apply(tp.partition, records, reported[tp])
            if read // 250_000 > before // 250_000:
                log.info("%s: %d changelog records read so far", name, read)
        for tp in tps:  # nothing past what Faust will be told
            apply(tp.partition, (), reported[tp])
        log.info(
            "%s: read %d changelog records (%d applied) of partitions %s in %.1f s",
            name,
            read,
            applied,
            partitions,
            time.monotonic() - started,
        )
        return read, applied
    finally:
        await consumer.stop()
