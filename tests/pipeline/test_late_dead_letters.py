"""A late event's dead letter says where the event was read, as every dead letter does: the
engine refuses it far from the source message, and the journeys agent places it (topic,
partition, offset) from the repartitioned batch's source and the event's own offset, with the
source message's own bytes, read back from the clickstream topic (the engine only has the event
re-encoded)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import orjson

from streams.kafka import ensure_topics
from streams.kafka.clients import new_producer
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics


async def test_a_late_event_is_dead_lettered_with_its_source_position(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    topic = settings.topic("clickstream")
    start_worker()
    producer = new_producer(settings)
    await producer.start()
    try:
        for item in (
            event("product_view", "12:00", "late-user"),
            event("product_view", "12:01", "late-user"),
        ):
            await producer.send_and_wait(topic, orjson.dumps(item), key=b"late-user", partition=1)
        # applied (event time has passed them) before the late one comes
        await read_topics(settings, [settings.topic(settings.topic_micro)], expect=1, quiet_s=0.5)
        late = event("add_to_cart", "09:00", "late-user")  # hours behind its journey
        # spacing and key order no re-encoding would give back
        as_sent = b'{ "user_id" : "late-user",\n' + orjson.dumps(late)[1:]
        await producer.send_and_wait(topic, as_sent, key=b"late-user", partition=1)
    finally:
        await producer.stop()
    letters = await read_topics(settings, [settings.topic(settings.topic_deadletter)], expect=1, quiet_s=1)
    assert [(d["reason"], d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters] == [
        ("late_event", topic, 1, 2)
    ]
    assert base64.b64decode(letters[0]["original_b64"]) == as_sent
    assert letters[0]["original_sha256"] == hashlib.sha256(as_sent).hexdigest()
