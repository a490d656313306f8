"""The local broker and Redis really answer, as the session fixture promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka import ensure_topics, required_topics
from streams.settings import Settings
from streams.tools.infra import InfraError, LocalInfra

pytestmark = pytest.mark.integration  # the last tests start their own broker and Redis


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


def test_local_infra_stops_what_it_started_and_starts_nothing_it_is_given(tmp_path: Path) -> None:
    with LocalInfra(workdir=tmp_path / "own") as own:
        assert own.broker is not None and own.redis is not None
        processes = [own.broker.process, own.redis.process]
        assert all(p.poll() is None for p in processes)
        given = LocalInfra(
            kafka_bootstrap=own.kafka_bootstrap, redis_url=own.redis_url, workdir=tmp_path / "g"
        )
        with given:
            assert given.broker is None and given.redis is None
            assert given.kafka_bootstrap == own.kafka_bootstrap
    assert all(p.poll() is not None for p in processes), "both processes are gone after the block"


def test_a_failed_start_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.tools.infra.find_redis_server", lambda: "/bin/false")
    local = LocalInfra(workdir=tmp_path / "failing")
    with pytest.raises(InfraError, match="exited with code 1"):
        local.start()
    assert local.broker is not None and local.broker.process.poll() is not None
