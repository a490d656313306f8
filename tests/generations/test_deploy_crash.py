"""A reprocessing worker killed with SIGKILL half-way (issue 26): its successor in the same
generation goes on from the committed offsets and the changelog, the generation cuts over, and
its counters equal offline mode's over the same events: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from streams.counters.redis_store import redis_client
from streams.generations.naming import generation_settings
from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.deploy import Watcher
from streams.tools.infra import LocalInfra, free_port
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import WINDOW, expected_steps, get_json, wait_for
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, offline_outputs, send_ticks, traffic

# a long crash or outage simulation: `make test-slow`, not every `make test`
pytestmark = pytest.mark.slow


@pytest.mark.timeout(400)
async def test_a_reprocessing_worker_killed_half_way_loses_nothing_and_counts_nothing_twice(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    lines, ticks = traffic(users=800, seed=23)
    expected = offline_outputs(settings, lines + ticks)
    entered, dropped = expected_steps(expected)
    dropped_per_step = [sum(v for (k, _), v in dropped.items() if k == i) for i in range(5)]
    await ensure_topics(settings)
    await produce_lines(settings, lines)
    await send_ticks(settings, ticks)

    env = {**worker_env, **SOURCE_IDLE}
    log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "deploy", "--config", str(settings.funnels),
        "--workers", "0", "--accept-short-history",
        env={**os.environ, **env}, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    port = free_port()
    generation = {**env, "CONVERSIONS_GENERATION": "1", "CONVERSIONS_WEB_ENABLED": "true"}
    generation["CONVERSIONS_WEB_PORT"] = str(port)
    try:
        await wait_for(lambda: registry.get(1), timeout_s=60)
        first = start_worker("g1-first", env=generation)
        counters = redis_client(infra.redis_url)
        watcher = Watcher(settings, generation_settings(settings, 1), counters)

        async def half_way() -> bool:
            progress = await watcher.measure(settings.app_id)  # some counted, more to do
            return progress.event_ms is not None and progress.total_lag > 0

        await wait_for(half_way, timeout_s=120)
        first.kill()
        await counters.aclose()
        start_worker("g1-second", env=generation)
        await wait_for(lambda: _current_is(registry, 1), timeout_s=180)

        async def settled() -> bool:
            report = await get_json(port, "/funnels/checkout", **WINDOW)
            steps = report["steps"]
            return ([s["entered"] for s in steps], [s["dropped"] for s in steps]) == (
                entered,
                dropped_per_step,
            )

        await wait_for(settled, timeout_s=60)
        await asyncio.sleep(2)  # and stays there: nothing redelivered is counted again
        assert await settled()
        assert "journeys recovered" in (tmp_path / "g1-second.log").read_text()
    finally:
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        log.close()
        await redis.aclose()


async def _current_is(registry: Registry, number: int) -> bool:
    return await registry.current_number() == number
