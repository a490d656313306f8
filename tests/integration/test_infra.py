"""The local broker and Redis really answer, as the session fixture promises."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.infra import LocalInfra
from streams.kafka_admin import ensure_topics, required_topics
from streams.settings import Settings


async def test_redis_answers(infra: LocalInfra) -> None:
    client = aioredis.from_url(infra.redis_url)
    try:
        assert await client.ping() is True
        await client.set("conversions:probe", "1", ex=10)
        assert await client.get("conversions:probe") == b"1"
    finally:
        await client.aclose()


async def test_broker_creates_and_lists_topics(infra: LocalInfra) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("probe.topic", 3, 1)])
        assert "probe.topic" in await admin.list_topics()
        described = await admin.describe_topics(["probe.topic"])
        assert len(described[0]["partitions"]) == 3
    finally:
        await admin.close()


async def test_ensure_topics_creates_every_topic_once(settings: Settings) -> None:
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(required_topics(settings))
    assert await ensure_topics(settings) == []
