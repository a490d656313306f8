"""Ingest's own consumer group on the real broker: where it starts and what it commits.

An upgraded deployment must not re-read its whole clickstream: a partition the ingest group has
never committed starts where Faust's group (the ingest agent before it) had got. A worker stopped
with SIGTERM commits what it handled, so its successor reads each message once, even with the
periodic commit pushed out of reach.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.generations.naming import ingest_group
from streams.kafka import ensure_topics, kafka_client_options
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics_raw


async def _send(settings: Settings, events: list[dict[str, object]], partition: int = 0) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings))
    await producer.start()
    try:
        for item in events:
            value = orjson.dumps(item)
            await producer.send_and_wait(settings.topic("clickstream"), value, partition=partition)
    finally:
        await producer.stop()


async def _committed(settings: Settings, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(tp)
        return offset
    finally:
        await consumer.stop()


async def _commit(settings: Settings, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def _repartitioned_ids(settings: Settings, expect: int) -> Counter[str]:
    deadline = time.monotonic() + 90
    while True:
        batches = await read_topics_raw(settings, settings.topic(settings.topic_events))
        seen = Counter(item["event_id"] for _, batch in batches for item in batch.events)
        if sum(seen.values()) >= expect or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(1)


async def test_a_fresh_ingest_group_starts_where_the_faust_group_had_got(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    old = [event("page_view", f"10:0{i}", f"old{i}") for i in range(3)]
    new = [event("page_view", f"10:1{i}", f"new{i}") for i in range(3)]
    await _send(settings, old + new)
    tp = TopicPartition(settings.topic("clickstream"), 0)
    await _commit(settings, settings.app_id, tp, len(old))  # the Faust agent had handled `old`

    worker = start_worker()
    seen = await _repartitioned_ids(settings, expect=len(new))
    assert set(seen) == {e["event_id"] for e in new}
    assert "starts at offset 3, where the Faust agent had got" in worker.log_text()
    deadline = time.monotonic() + 30
    while await _committed(settings, ingest_group(settings), tp) != len(old) + len(new):
        assert time.monotonic() < deadline, "the ingest group never committed what it handled"
        await asyncio.sleep(0.5)


async def test_a_stopped_worker_commits_what_it_handled(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    never_on_its_own = {"CONVERSIONS_COMMIT_INTERVAL_S": "600"}
    first = [event("page_view", f"11:0{i}", f"a{i}") for i in range(4)]
    await _send(settings, first)
    worker = start_worker("first", env=never_on_its_own)
    assert set(await _repartitioned_ids(settings, expect=len(first))) == {e["event_id"] for e in first}
    worker.stop()
    tp = TopicPartition(settings.topic("clickstream"), 0)
    assert await _committed(settings, ingest_group(settings), tp) == len(first)

    second = [event("page_view", f"11:1{i}", f"b{i}") for i in range(2)]
    await _send(settings, second)
    start_worker("second", env=never_on_its_own)
    seen = await _repartitioned_ids(settings, expect=len(first) + len(second))
    assert set(seen) == {e["event_id"] for e in first + second}
    assert max(seen.values()) == 1, f"read again after a clean stop: {seen}"
