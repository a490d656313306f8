"""Erasures on Kafka: `conversions forget` (and `POST /privacy/forget`) write the erased id with the
moment of its erasure to a compacted topic, and an `erasure` record to its own topic for
downstream consumers; every worker reads the compacted topic from the beginning (`follow`) and
keeps the erased ids, which its ingest screens and its journeys partitions forget.

Why a compacted topic: the list must survive restarts and reach every worker, and Kafka's
compaction keeps one record per id however often it is written. The records hold the erased ids
themselves (they must, to recognise the person's later-arriving events); that is the minimum an
erasure has to keep, and docs/howto/erase-a-person.md says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.core.records.ids import output_id
from streams.core.records.outputs import Erasure, build
from streams.kafka.clients import kafka_client_options
from streams.ports import Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

Forget = Callable[[str, int], Awaitable[None]]
"""What a worker does with an erased id and the moment of its erasure (epoch ms)."""


async def forget(
    settings: Settings,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    requested_by: str = "cli",
    at_ms: int | None = None,
) -> Erasure:
    """Record an erasure: each id on the compacted topic, then the `erasure` record."""
    ids = [i for i in (user_id, anonymous_id) if i]
    if not ids:
        raise ValueError("an erasure needs a user id or an anonymous id")
    at_ms = at_ms if at_ms is not None else int(time.time() * 1000)
    record = build(
        Erasure,
        id=output_id("erasure", *ids, at_ms),
        user_id=user_id or None,
        anonymous_id=anonymous_id or None,
        timestamp=datetime.fromtimestamp(at_ms / 1000, UTC),
        requested_by=requested_by,
    )
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    await producer.start()
    try:
        for identity in ids:
            value = orjson.dumps({"id": identity, "erased_at_ms": at_ms, "erasure": record.id})
            await producer.send_and_wait(settings.topic(settings.topic_erased), value, key=identity.encode())
        key = (user_id or anonymous_id or "").encode()
        await producer.send_and_wait(settings.topic(settings.topic_erasures), record.to_json(), key=key)
    finally:
        await producer.stop()
    return record


async def follow(settings: Settings, apply: Forget, loaded: asyncio.Event, stopping: Stopping) -> None:
    """Read the erased ids from the beginning (set `loaded` once at the end), then follow them."""
    topic = settings.topic(settings.topic_erased)
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while not stopping():
            batch = await consumer.getmany(timeout_ms=500, max_records=1_000)
            for messages in batch.values():
                for message in messages:
                    try:
                        body = orjson.loads(message.value or b"")
                        identity, at_ms = str(body["id"]), int(body["erased_at_ms"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        log.warning(
                            "erasures: record at offset %d is not an erasure; skipped", message.offset
                        )
                        continue
                    await apply(identity, at_ms)
            if not loaded.is_set():
                behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
                if not behind:
                    loaded.set()
                    log.info("erasures: erased ids loaded")
    finally:
        await consumer.stop()
