"""The generations registry on the real Redis, the retention check on the real broker, and the
deletion of a retired generation after its grace period (issue 26)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from streams.core.config.horizon import history_needs, short_needs
from streams.core.config.loader import parse_config
from streams.generations.current import GenerationRefused, join
from streams.generations.history import check_offsets
from streams.generations.naming import generation_settings, ingest_group
from streams.generations.registry import Generation, Registry, RegistryError
from streams.kafka import ensure_topics
from streams.kafka.clients import kafka_client_options, new_consumer, new_producer
from streams.kafka.retention import retained_range
from streams.settings import Settings
from streams.tools.deploy import abandon_generation, delete_generation, deploy, rollback
from streams.tools.infra import LocalInfra
from tests.helpers import event
from tests.pipeline.test_config_change import send

WEEK = """
version: 1
funnels:
  - name: checkout
    window: 7d
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
alerts:
  - {funnel: checkout, step: cart, window: 15m, baseline: 1d, min_entered: 5, relative_drop: 0.5}
"""


def test_history_needs_name_the_longest_window_baseline_and_ttl() -> None:
    needs = history_needs(parse_config(WEEK))
    assert [(n.what, n.ms, n.required) for n in needs] == [
        ("funnel checkout window", 7 * 86_400_000, True),
        ("alert on checkout/cart baseline", 86_400_000 + 15 * 60_000, True),
        ("identity ttl", 90 * 86_400_000, False),
    ]
    refused, warned = short_needs(needs, 2 * 86_400_000)
    assert [n.what for n in refused] == ["funnel checkout window"]
    assert [n.what for n in warned] == ["identity ttl"]


async def test_the_registry_flips_once_and_refuses_a_second_reprocessing(infra: LocalInfra) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, "reg-test-" + str(id(redis)))
    try:
        assert await registry.current_number() == 0
        await registry.ensure_first("version: 1\n", "f0")
        first = await registry.create("version: 1\n", "f1")
        assert (first.number, first.app_id, first.state) == (1, f"{registry.app_id}-g1", "reprocessing")
        with pytest.raises(RegistryError, match="still reprocessing"):
            await registry.create("version: 1\n", "f2")
        assert await registry.flip(0, 1)
        assert not await registry.flip(0, 1)  # a second flip from 0 lost the race: no change
        states = {g.number: g.state for g in await registry.all()}
        assert (await registry.current_number(), states) == (1, {0: "retired", 1: "live"})
        assert await registry.previous_number() == 0
        assert await registry.flip(1, 0)  # a rollback
        assert {g.number: g.state for g in await registry.all()} == {0: "live", 1: "retired"}
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


async def test_deploy_says_how_far_back_history_reaches_and_refuses_short_history(
    settings: Settings, infra: LocalInfra
) -> None:
    await ensure_topics(settings)
    await send(settings, [event("product_view", "10:00", "u1"), event("add_to_cart", "10:01", "u1")])
    said: list[str] = []
    assert await deploy(settings, WEEK, said.append) == 1
    text = "\n".join(said)
    assert "history: 2 records retained, from " in text
    assert "retention.ms not reported" in text  # Tansu does not answer DescribeConfigs
    assert "SHORT  funnel checkout window: 1w" in text and "SHORT  alert on checkout/cart" in text
    assert "refused: the retained history is shorter than funnel checkout window" in text
    assert "--accept-short-history" in text
    redis = Redis.from_url(infra.redis_url)
    try:  # refused before anything was recorded
        assert await Registry(redis, settings.app_id).all() == []
    finally:
        await redis.aclose()


async def test_a_retired_generation_is_deleted_after_its_grace_period(
    settings: Settings, infra: LocalInfra
) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    said: list[str] = []
    try:
        await registry.ensure_first("version: 1\n", "f0")
        await registry.create("version: 1\n", "f1")
        gen1 = generation_settings(settings, 1)
        created = await ensure_topics(gen1)
        await redis.hset(f"conv:{{{gen1.app_id}:0}}:meta", "latest", "1")
        clickstream = TopicPartition(settings.topic("clickstream"), 0)
        await _commit(gen1, ingest_group(gen1), clickstream, 1)
        assert await registry.flip(0, 1)
        assert await rollback(settings, said.append) == 0
        assert await delete_generation(settings, 1, 3_600_000, said.append) == 1
        assert "less than the grace period ago" in said[-1]
        assert await delete_generation(settings, 1, 0, said.append) == 0
        admin = AIOKafkaAdminClient(**kafka_client_options(settings))
        await admin.start()
        try:
            left = set(await admin.list_topics())
        finally:
            await admin.close()
        own = [t for t in created if t.startswith(settings.topic(f"{gen1.app_id}.")) or "-g1-" in t]
        assert own and not (set(own) & left)
        assert settings.topic("clickstream") in left  # the input stays
        assert await redis.exists(f"conv:{{{gen1.app_id}:0}}:meta") == 0
        assert await _committed(gen1, ingest_group(gen1), clickstream) is None  # its group is gone
        assert await registry.get(1) is None and await registry.current_number() == 0
        assert await rollback(settings, said.append) == 1  # nothing left to return to
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


async def _commit(settings: Settings, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = new_consumer(settings, group_id=group)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def _committed(settings: Settings, group: str, tp: TopicPartition) -> int | None:
    consumer = new_consumer(settings, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(tp)  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


async def test_a_plain_worker_runs_the_current_generation_and_never_creates_one(
    settings: Settings, infra: LocalInfra
) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        joined, generation = await join(settings, registry)  # nothing deployed: unchanged
        assert (joined, generation) == (settings, None) and await registry.all() == []
        await registry.ensure_first("version: 1\n", "f0")
        await registry.create(WEEK, "f1")
        joined, generation = await join(settings, registry)  # still generation 0 until the flip
        assert (joined.app_id, joined.generation) == (settings.app_id, 0)
        assert await registry.flip(0, 1)
        joined, generation = await join(settings, registry)  # a restart after the cut-over
        assert generation is not None and generation.number == 1
        assert (joined.app_id, joined.generation) == (f"{settings.app_id}-g1", 1)
        assert joined.topic(joined.topic_micro) == settings.topic(f"{settings.app_id}-g1.conversions.micro")
        assert joined.topic_clickstream == settings.topic_clickstream
        assert joined.funnels.read_text() == WEEK
        assert [g.number for g in await registry.all()] == [0, 1]
        retired = settings.model_copy(update={"generation": 0})
        with pytest.raises(GenerationRefused, match=r"generation 0 .* is retired"):
            await join(retired, registry)
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


async def test_a_generation_whose_history_is_being_handed_over_refuses_its_workers(
    settings: Settings, infra: LocalInfra
) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        await registry.ensure_first("version: 1\n", "f0")
        pending = await registry.create(WEEK, "f1", pending="history")
        assert pending.pending == "history"
        mine = settings.model_copy(update={"generation": 1})
        with pytest.raises(GenerationRefused, match=r"generation 1 .* is not ready: .* handing its history"):
            await join(mine, registry)
        assert (await registry.ready(1)).pending is None
        joined, _ = await join(mine, registry)
        assert joined.app_id == f"{settings.app_id}-g1"
        said: list[str] = []  # a deploy given up: `conversions generations --abandon 1`
        assert await abandon_generation(settings, 1, said.append) == 0
        assert (await registry.get(1)).state == "retired"  # type: ignore[union-attr]
        assert await abandon_generation(settings, 1, said.append) == 1
        assert said[-1] == "refused: generation 1 is not reprocessing"
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


async def test_deploy_refuses_history_offsets_that_leave_a_gap_or_miss_a_partition(
    settings: Settings, infra: LocalInfra, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    await send(settings, [event("product_view", "10:00", "u1")])
    archive = tmp_path / "archive.ndjson"
    archive.write_bytes(b"")
    topic = settings.topic("clickstream")
    said: list[str] = []
    offsets = {f"{topic}/0": 5, f"{topic}/1": 0, f"{topic}/7": 0}
    status = await deploy(settings, WEEK, said.append, history_files=[archive], history_offsets=offsets)
    assert status == 1
    text = "\n".join(said)
    assert "refused: the history's hand-off offsets" in text
    assert f"{topic}/2: not in the offsets file" in text
    assert f"{topic}/7: no such clickstream partition" in text
    assert f"{topic}/0: offset 5 is past the partition's end" in text
    redis = Redis.from_url(infra.redis_url)
    try:  # refused before anything was recorded
        assert await Registry(redis, settings.app_id).all() == []
    finally:
        await redis.aclose()


async def test_the_retained_range_ends_after_the_last_record_of_a_batch(settings: Settings) -> None:
    """Tansu reports a partition's end as the start of its last batch plus one: a seam at the true
    end (every record archived) must still be accepted, and the records counted."""
    await ensure_topics(settings)
    topic = settings.topic("clickstream")
    producer = new_producer(settings, linger_ms=200)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"{}", partition=0) for _ in range(20)]
        await producer.flush()
        assert {(await s).offset for s in sent} == set(range(20))
    finally:
        await producer.stop()
    retained = await retained_range(settings)
    assert retained.offsets[f"{topic}/0"] == (0, 20)
    assert retained.records == 20
    seam = {name: end for name, (_, end) in retained.offsets.items()}
    assert check_offsets(seam, retained.offsets) == []


async def test_a_deleted_generations_number_is_never_given_again(infra: LocalInfra) -> None:
    """Its consumer groups may still hold committed offsets on the clickstream: a generation given
    its number again would skip history without a word."""
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, "reg-numbers-" + str(id(redis)))
    try:
        await registry.ensure_first("version: 1\n", "f0")
        assert (await registry.create("version: 1\n", "f1")).number == 1
        await registry.abandon(1)  # `generations --abandon 1`, then `--delete 1`
        await registry.forget(1)
        assert (await registry.create("version: 1\n", "f2")).number == 2
        # a registry recorded before the counter: numbered from its highest generation
        await redis.delete(registry.key)
        await redis.hset(registry.key, "g:3", _retired(3).to_json())
        assert (await registry.create("version: 1\n", "f4")).number == 4
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


def _retired(number: int) -> Generation:
    return Generation(number, f"app-g{number}", "version: 1\n", "f", "retired", 0, retired_ms=0)


class AbandonedInBetween:
    """A real Redis client: right after `ready` reads generation 1's record, another client
    abandons it (`conversions generations --abandon 1`)."""

    def __init__(self, redis: Redis, other: Registry) -> None:
        self._redis, self._other, self._done = redis, other, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._redis, name)

    async def hget(self, key: str, field: str) -> object:
        raw = await self._redis.hget(key, field)
        if field == "g:1" and not self._done:
            self._done = True
            await self._other.abandon(1)
        return raw


async def test_ready_does_not_overwrite_an_abandon_that_lands_in_between(infra: LocalInfra) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, "reg-ready-" + str(id(redis)))
    try:
        await registry.ensure_first("version: 1\n", "f0")
        await registry.create("version: 1\n", "f1", pending="history")
        racing = Registry(AbandonedInBetween(redis, registry), registry.app_id)
        with pytest.raises(RegistryError, match="changed meanwhile"):
            await racing.ready(1)
        assert (await registry.get(1)).state == "retired"  # type: ignore[union-attr]
    finally:
        await redis.delete(registry.key)
        await redis.aclose()


async def test_deploy_with_history_refuses_before_the_offline_run_while_a_generation_reprocesses(
    settings: Settings, infra: LocalInfra, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    await send(settings, [event("product_view", "10:00", "u1")])
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        await registry.ensure_first("version: 1\n", "f0")
        await registry.create(WEEK, "f1")
        archive = tmp_path / "archive.ndjson"
        archive.write_bytes(b"")
        offsets = {name: end for name, (_, end) in (await retained_range(settings)).offsets.items()}
        said: list[str] = []
        status = await deploy(settings, WEEK, said.append, history_files=[archive], history_offsets=offsets)
        assert status == 1
        assert said == [  # nothing read from the archive
            "refused: generation 1 is still reprocessing: wait for its cut-over, or "
            "`conversions generations --abandon 1`"
        ]
    finally:
        await redis.delete(registry.key)
        await redis.aclose()
