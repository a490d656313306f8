"""Sending clickstream lines to Kafka the way a collector would: keyed by identity when possible."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.kafka.clients import new_producer
from streams.settings import Settings


def identity_key(line: bytes) -> bytes | None:
    """The anonymous (else user) id of an event line, as trackers key them: one device's events
    stay in order, and so reach the partition that decides for that id in order."""
    try:
        body: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, list):
        body = body[0] if body else None
    if not isinstance(body, dict):
        return None
    identity = body.get("anonymous_id") or body.get("user_id")
    return identity.encode() if isinstance(identity, str) else None


def clickstream_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return new_producer(settings, **options)


async def produce_lines(settings: Settings, lines: Iterable[bytes], topic: str | None = None) -> int:
    """Send every line as one message to the (first) clickstream topic; returns the count."""
    topic = topic or settings.topic(settings.topic_clickstream[0])
    producer = clickstream_producer(settings)
    await producer.start()
    count = 0
    try:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if line:
                await producer.send(topic, line, key=identity_key(line))
                count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count
