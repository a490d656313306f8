"""Outages of the real dependencies: Redis stopped for 30 s mid-stream (persistence on), the
broker absent when the worker starts, and the broker frozen mid-run. The worker waits with
clear logs, commits nothing it has not applied, and ends with every count exactly right."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka import ensure_topics, kafka_client_options
from streams.settings import Settings
from streams.tools.infra import LOCAL_BROKER_ENV, free_port, start_broker, start_redis
from streams.tools.producer import produce_lines
from streams.tools.worker_process import READY_LINE, WorkerProcess
from tests.counters.test_counters_worker import WINDOW, expected_steps, get_json, get_metric, wait_for
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, offline_outputs, send_ticks, traffic

# a long crash or outage simulation: `make test-slow`, not every `make test`
pytestmark = pytest.mark.slow

OUTAGE_S = 30


async def committed(settings: Settings, group: str) -> dict[tuple[str, int], int | None]:
    """The group's committed offsets on the output topics it counts."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [settings.output_topics[k] for k in ("micro", "macro", "dropoff", "session")]
        return {
            (topic, p): await consumer.committed(TopicPartition(topic, p))
            for topic in topics
            for p in range(settings.partitions)
        }
    finally:
        await consumer.stop()


def settled_on(port: int, settings: Settings, lines: list[bytes], ticks: list[bytes]) -> Callable[[], object]:
    expected = offline_outputs(settings, lines + ticks)
    entered, dropped = expected_steps(expected)
    dropped_per_step = [sum(v for (k, _), v in dropped.items() if k == i) for i in range(5)]
    purchases = sum(1 for o in expected if o["type"] == "macro" and o["goal"] == "purchase")

    async def settled() -> bool:
        report = await get_json(port, "/funnels/checkout", **WINDOW)
        goals = await get_json(port, "/goals", **WINDOW)
        return (
            [s["entered"] for s in report["steps"]] == entered
            and [s["dropped"] for s in report["steps"]] == dropped_per_step
            and goals["goals"]["purchase"]["count"] == purchases
        )

    return settled


@pytest.mark.timeout(400)
async def test_a_30_second_redis_outage_loses_and_doubles_nothing(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    redis = start_redis(tmp_path / "redis", persistent=True)
    port = free_port()
    env = {
        **SOURCE_IDLE,
        "REDIS_URL": redis.url,
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_WEB_PORT": str(port),
    }
    settings = settings.model_copy(update={"redis_url": redis.url})
    lines, ticks = traffic(users=400, seed=41)
    half = len(lines) // 2
    group = f"{settings.app_id}-counters"

    await ensure_topics(settings)
    worker = start_worker(env=env)
    try:
        await produce_lines(settings, lines[:half])
        await wait_for(lambda: get_metric(port, "conversions_counter_messages_total", 'result="applied"'))

        redis.stop()  # SIGTERM: Redis writes its append-only file and exits
        await asyncio.sleep(3)
        await produce_lines(settings, lines[half:])
        await send_ticks(settings, ticks)
        await asyncio.sleep(5)
        during = await committed(settings, group)
        await asyncio.sleep(OUTAGE_S - 8)
        assert await committed(settings, group) == during, "offsets moved while Redis was down"
        assert "Redis unavailable" in worker.log_text()
        assert worker.running
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/funnels/checkout") as response,
        ):
            assert response.status == 503, "queries say Redis is down"
            assert "Redis is unavailable" in (await response.json())["error"]

        redis = start_redis(tmp_path / "redis", port=redis.port, persistent=True)
        await wait_for(settled_on(port, settings, lines, ticks), timeout_s=120)
        await asyncio.sleep(3)  # anything counted twice would show now
        assert await settled_on(port, settings, lines, ticks)()
        assert "Redis is back after" in worker.log_text()
        assert await committed(settings, group) != during
    finally:
        worker.stop()
        redis.stop()


@pytest.mark.timeout(300)
async def test_the_worker_waits_for_a_broker_that_is_not_there_yet_and_for_a_frozen_one(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    broker_port = free_port()
    bootstrap = f"127.0.0.1:{broker_port}"
    web = free_port()
    env = {
        **worker_env,
        **LOCAL_BROKER_ENV,
        **SOURCE_IDLE,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_WEB_PORT": str(web),
    }
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        redis_url=worker_env["REDIS_URL"],
        app_id=worker_env["CONVERSIONS_APP_ID"],
        topic_prefix=worker_env["CONVERSIONS_TOPIC_PREFIX"],
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start(wait_ready_s=0)
    broker = None
    try:
        await asyncio.sleep(15)
        assert worker.running, worker.tail()
        assert "not reachable yet" in worker.log_text()

        broker = start_broker(tmp_path / "broker", port=broker_port)
        worker.wait_for(READY_LINE, timeout_s=120)
        lines, ticks = traffic(users=300, seed=43)
        third = len(lines) // 3
        await produce_lines(settings, lines[: 2 * third])

        os.kill(broker.process.pid, signal.SIGSTOP)  # unresponsive, connections still open
        await asyncio.sleep(20)
        assert worker.running, worker.tail()
        os.kill(broker.process.pid, signal.SIGCONT)

        await produce_lines(settings, lines[2 * third :])
        await send_ticks(settings, ticks)
        await wait_for(settled_on(web, settings, lines, ticks), timeout_s=150)
        assert worker.running
    finally:
        worker.stop()
        if broker is not None:
            os.kill(broker.process.pid, signal.SIGCONT)
            broker.stop()
    errors = worker.error_lines()
    assert not errors, "\n".join(errors[:10])
