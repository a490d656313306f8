"""No raw client address is written anywhere the engine writes in the default IP mode (`drop`):
events carrying addresses (our JSON's and Segment's `context.ip`, IPv4 and IPv6) go through a real
worker, then every topic the run wrote (outputs, repartitioned events, the journeys' changelog;
all but the input topic the producer wrote the addresses to), every Redis key and the worker's log
are scanned for them. The countries they were looked up to reach the outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from streams.kafka import ensure_topics, kafka_client_options
from streams.kafka.clients import new_consumer
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics

ADDRESSES = {"81.2.69.201": "GB", "5.9.77.3": "DE", "2001:4860::77:1": "US", "203.0.113.77": None}
"""Unique to this test, so that nothing else on the shared broker and Redis can hold them."""


async def raw_records(settings: Settings, topic: str) -> list[bytes]:
    consumer = new_consumer(settings)  # the broker's short empty-fetch wait: many topics are read
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[bytes] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            found += [(m.key or b"") + b"\x00" + (m.value or b"") for msgs in batch.values() for m in msgs]
        return found
    finally:
        await consumer.stop()


async def redis_contents(redis: Redis, keys: list[bytes], chunk: int = 500) -> list[tuple[bytes, bytes]]:
    """Every key with its whole content as bytes, read in pipelines: the shared Redis holds every
    earlier test's keys too, and a round trip per key took minutes late in the suite."""
    read = {
        "hash": lambda pipe, key: pipe.hgetall(key),
        "list": lambda pipe, key: pipe.lrange(key, 0, -1),
        "string": lambda pipe, key: pipe.get(key),
        "set": lambda pipe, key: pipe.smembers(key),
        "zset": lambda pipe, key: pipe.zrange(key, 0, -1),
    }
    contents: list[tuple[bytes, bytes]] = []
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for key in part:
                pipe.type(key)
            kinds = [kind.decode() for kind in await pipe.execute()]
        async with redis.pipeline(transaction=False) as pipe:
            for key, kind in zip(part, kinds, strict=True):
                read.get(kind, lambda pipe, key: pipe.exists(key))(pipe, key)
            values = await pipe.execute()
        contents += [(key, _as_bytes(value)) for key, value in zip(part, values, strict=True)]
    return contents


def _as_bytes(value: object) -> bytes:
    if isinstance(value, dict):
        return orjson.dumps(
            {k.decode(errors="replace"): v.decode(errors="replace") for k, v in value.items()}
        )
    if isinstance(value, list | set):
        return b"\n".join(value)
    return value if isinstance(value, bytes) else b""


async def test_no_address_is_written_anywhere_in_drop_mode(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    worker = start_worker()
    chrome = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0"
    )
    messages: list[bytes] = []
    for number, address in enumerate(ADDRESSES):
        user = f"pd-user-{number}"
        context = {"ip": address, "user_agent": chrome, "locale": "en-GB"}
        journey = [
            event("product_view", f"10:{number}0", user, context=context),
            event("add_to_cart", f"10:{number}1", user, context=context),
            event("purchase", f"10:{number}2", user, context=context, properties={"value": 10.0}),
        ]
        messages += [orjson.dumps(item) for item in journey]
    # and a Segment track call carrying the address the way Segment's libraries do
    messages.append(
        orjson.dumps(
            {
                "type": "track",
                "event": "product_view",
                "anonymousId": "pd-segment",
                "messageId": "pd-segment-1",
                "timestamp": "2024-03-13T10:50:00Z",
                "context": {"ip": "81.2.69.201", "userAgent": chrome},
            }
        )
    )
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**kafka_client_options(settings))
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(settings.topic("clickstream"), message, partition=0)
    finally:
        await producer.stop()

    macros = await read_topics(
        settings, [settings.topic(settings.topic_macro)], expect=len(ADDRESSES), quiet_s=1
    )
    countries = {m["user_id"]: (m.get("audience") or {}).get("country") for m in macros}
    assert countries == {f"pd-user-{n}": country for n, country in enumerate(ADDRESSES.values())}
    await asyncio.sleep(2)  # the counters apply what they read, and the changelog is written
    worker.stop()

    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        topics = [
            t
            for t in await admin.list_topics()
            if t.startswith(settings.topic_prefix) or settings.app_id in t
        ]
    finally:
        await admin.close()
    written = [t for t in topics if t != settings.topic("clickstream")]
    assert settings.topic(settings.topic_events) in written and any("changelog" in t for t in written)
    found: dict[str, list[str]] = {}
    for topic in written:
        for record in await raw_records(settings, topic):
            for address in ADDRESSES:
                if address.encode() in record:
                    found.setdefault(topic, []).append(address)
    # the input topic does hold them: the producer wrote them there (docs/howto/erasure.md)
    assert any(
        address.encode() in r
        for r in await raw_records(settings, settings.topic("clickstream"))
        for address in ADDRESSES
    )

    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        keys = [key async for key in redis.scan_iter(count=1_000)]
        assert any(settings.app_id.encode() in key for key in keys)  # the counters did write
        for key, content in await redis_contents(redis, keys):
            for address in ADDRESSES:
                if address.encode() in key + content:
                    found.setdefault(f"redis:{key.decode(errors='replace')}", []).append(address)
    finally:
        await redis.aclose()
    log = worker.log_text()
    found.update({"log": [a for a in ADDRESSES if a in log]} if any(a in log for a in ADDRESSES) else {})
    assert found == {}
