"""What the clickstream topics still hold: per partition the offsets retained and the timestamp of
the earliest record, and the topics' `retention.ms` when the broker reports it (Tansu does not:
then only the records say how far back history reaches). `conversions deploy` reads it before a
new generation reprocesses (issue 26)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.kafka.clients import new_admin, new_consumer
from streams.settings import Settings

log = logging.getLogger(__name__)

FIRST_RECORDS_WAIT_S = 10.0


@dataclass
class Retained:
    earliest_ms: int | None
    """The timestamp of the earliest record retained over every clickstream partition."""
    retention_ms: dict[str, int | None] = field(default_factory=dict)
    """Per topic; None where the broker does not report it."""
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    """`topic/partition` -> (first offset retained, end offset)."""

    def span_ms(self, now_ms: int | None = None) -> int:
        """How far back the retained history reaches from now (0 when nothing is retained)."""
        if self.earliest_ms is None:
            return 0
        return max(0, (now_ms if now_ms is not None else int(time.time() * 1000)) - self.earliest_ms)

    @property
    def records(self) -> int:
        return sum(end - start for start, end in self.offsets.values())


async def retained_range(settings: Settings) -> Retained:
    topics = [settings.topic(t) for t in settings.topic_clickstream]
    consumer = new_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        offsets = {f"{tp.topic}/{tp.partition}": (starts[tp], ends[tp]) for tp in tps}
        filled = [tp for tp in tps if ends[tp] > starts[tp]]
        earliest = await _first_timestamps(consumer, filled)
    finally:
        await consumer.stop()
    return Retained(min(earliest) if earliest else None, await _retention_ms(settings, topics), offsets)


async def _first_timestamps(consumer: object, tps: list[TopicPartition]) -> list[int]:
    if not tps:
        return []
    consumer.assign(tps)  # type: ignore[attr-defined]
    await consumer.seek_to_beginning(*tps)  # type: ignore[attr-defined]
    first: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + FIRST_RECORDS_WAIT_S
    while len(first) < len(tps) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500, max_records=len(tps) * 10)  # type: ignore[attr-defined]
        for tp, messages in batch.items():
            if messages and tp not in first:
                first[tp] = min(m.timestamp for m in messages)
                consumer.pause(tp)  # type: ignore[attr-defined]
    return list(first.values())


async def _retention_ms(settings: Settings, topics: list[str]) -> dict[str, int | None]:
    found: dict[str, int | None] = dict.fromkeys(topics)
    admin = new_admin(settings)
    try:
        await admin.start()
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        answers = await asyncio.wait_for(admin.describe_configs(resources), 10)
        for answer in answers:
            for resource in answer.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == "retention.ms" and entry["config_value"] is not None:
                        found[resource["resource_name"]] = int(entry["config_value"])
    except Exception as exc:  # the broker may not answer DescribeConfigs (Tansu): only the records say
        log.info("retention.ms not reported by the broker (%s)", exc.__class__.__name__)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return found
