"""Erasure through the real broker and a worker: `conversions forget` (streams.kafka.erasures)
deletes the person's journey and link stubs (tombstones in the changelog), a worker restarted
from the changelog does not bring them back, a replay of their old raw events is dropped and
counted, and their later events start a new journey; the `erasure` record is on its topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka import ensure_topics, kafka_client_options
from streams.kafka.erasures import forget
from streams.kafka.topics import changelog_topic
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics


def journey(user: str, anon: str) -> list[dict[str, object]]:
    return [
        event("product_view", "10:00", anonymous_id=anon, user=None),
        event("add_to_cart", "10:01", anonymous_id=anon, user=None),
        event("login", "10:02", user, anonymous_id=anon),
        event("purchase", "10:03", user, properties={"value": 10.0}),
    ]


async def send(settings: Settings, items: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings))
    await producer.start()
    try:
        for item in items:
            await producer.send_and_wait(settings.topic("clickstream"), orjson.dumps(item), partition=0)
    finally:
        await producer.stop()


async def journey_keys(settings: Settings) -> dict[str, bytes | None]:
    """The latest value per key on the journeys changelog (None: a tombstone)."""
    topic = changelog_topic(settings, "journeys")
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    latest: dict[str, bytes | None] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            for messages in batch.values():
                for message in messages:
                    if message.key is not None:  # keys are JSON strings
                        latest[orjson.loads(message.key)] = message.value
    finally:
        await consumer.stop()
    return latest


async def test_forget_survives_a_restart_and_a_replay(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    worker = start_worker()
    old = journey("gone-user", "gone-anon")
    await send(settings, old + journey("kept-user", "kept-anon"))
    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=2, quiet_s=1)
    assert {m["user_id"] for m in macros} == {"gone-user", "kept-user"}

    record = await forget(settings, user_id="gone-user", anonymous_id="gone-anon")
    for _ in range(100):
        keys = await journey_keys(settings)
        if keys.get("gone-user", b"") is None and keys.get("gone-anon", b"") is None:
            break
        await asyncio.sleep(0.3)
    assert keys["gone-user"] is None and keys["gone-anon"] is None  # tombstones
    assert keys["kept-user"] is not None and keys["kept-anon"] is not None  # nothing else changed
    erasures = await read_topics(settings, [settings.topic(settings.topic_erasures)], expect=1, quiet_s=1)
    assert [(e["type"], e["user_id"], e["anonymous_id"], e["id"]) for e in erasures] == [
        ("erasure", "gone-user", "gone-anon", record.id)
    ]

    worker.stop()
    worker = start_worker("restarted")
    await send(settings, old)  # a replay of the person's old raw events
    later = event("purchase", datetime.fromtimestamp(time.time() + 60, UTC).isoformat(), "gone-user")
    later["properties"] = {"value": 5.0}
    await send(settings, [later])
    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=3, quiet_s=3)
    gone = [m for m in macros if m["user_id"] == "gone-user"]
    assert len(gone) == 2  # the first, from before the erasure, and the later one
    fresh = gone[-1]
    assert fresh["value"] == 5.0 and fresh["sessions"] == 1 and fresh["micro_path"] == []
    assert fresh["first_touch"]["channel"] == "Direct" and fresh["landing_page"] is None
