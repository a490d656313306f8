"""Drop-offs fire for journeys whose partition gets no events, and sources that never speak
are declared idle instead of holding event time back forever."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from streams.core.journeys.engine import partition_for
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.producer import clickstream_producer
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics


async def test_idle_partition_and_idle_sources(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    quiet = "quiet-user"
    busy = next(
        f"busy-{i}"
        for i in range(100)
        if partition_for(f"busy-{i}", settings.partitions) != partition_for(quiet, settings.partitions)
    )
    await ensure_topics(settings)
    worker = start_worker(env={"CONVERSIONS_SOURCE_IDLE_S": "2"})
    producer = clickstream_producer(settings)
    await producer.start()
    try:  # everything into source partition 0: partitions 1-3 of the input never get a message
        for body in (
            event("product_view", "10:00", quiet),
            event("page_view", "10:05", busy),
            event("page_view", "12:00", busy),
        ):
            await producer.send_and_wait(settings.topic("clickstream"), orjson.dumps(body), partition=0)
    finally:
        await producer.stop()
    topics = [settings.topic(settings.topic_dropoffs), settings.topic(settings.topic_sessions)]
    outputs = await read_topics(settings, topics, expect=3, quiet_s=3)
    for_quiet = sorted((o["type"], o["timestamp"]) for o in outputs if o["user_id"] == quiet)
    # the quiet user's partition saw one event only; the busy user's events moved event time on
    assert for_quiet == [
        ("dropoff", "2024-03-13T11:00:00Z"),  # add_to_cart `within: 1h` ran out
        ("session", "2024-03-13T10:00:00Z"),
        ("stalled", "2024-03-13T10:30:00Z"),
    ]
    idle = [line for line in worker.log_text().splitlines() if "is idle" in line]
    assert {line.split("source ")[1].split(" ")[0] for line in idle} >= {
        settings.topic(f"clickstream/{p}") for p in (1, 2, 3)
    }
