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
from typing import Any

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
    """`topic/partition` -> (first offset retained, end offset: the offset after the last record,
    read, `read_ends`)."""

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
        ends = await read_ends(consumer, tps)
        offsets = {f"{tp.topic}/{tp.partition}": (starts[tp], ends[tp]) for tp in tps}
        filled = [tp for tp in tps if ends[tp] > starts[tp]]
        earliest = await _first_timestamps(consumer, filled)
    finally:
        await consumer.stop()
    return Retained(min(earliest) if earliest else None, await _retention_ms(settings, topics), offsets)


async def read_ends(consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after each partition's last record, read, with a started consumer of no group:
    Tansu reports as the end offset the start of the last batch plus one, short of the batch's
    other records."""
    ends = dict(await consumer.end_offsets(tps))
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(0, ends[tp] - 1))
    # the first fetch from the reported end returns the whole last batch: its last record is
    # the end (under live traffic later records keep coming: not waited for)
    pending = {tp for tp in tps if ends[tp] > 0}
    quiet, deadline = 0, time.monotonic() + 5.0
    while pending and quiet < 2 and time.monotonic() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=300, max_records=10_000)
        quiet = 0 if batch else quiet + 1
        for tp, messages in batch.items():
            ends[tp] = max(ends[tp], messages[-1].offset + 1)
            pending.discard(tp)
    return ends


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
