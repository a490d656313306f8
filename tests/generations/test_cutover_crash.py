"""SIGKILL at the cut-over (issue 26, item 8): generation 1's two workers are killed the moment
`deploy` flips `current`, before their relay has sent anything; their successors relay from the
seam. Later, with part of the traffic relayed, both are killed again: the next leader resumes
from the relay's checkpoint. A consumer of the live topics sees each record once, the live topics
hold exactly offline mode's outputs over the whole input, and generation 1's counters equal
offline mode's: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from streams.generations.registry import Registry, RelayCheckpoint
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import LocalInfra, free_port
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import WINDOW, expected_steps, get_json, wait_for
from tests.helpers import read_topics
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, canonical, offline_outputs, send_ticks, traffic

# a crash simulation: `make test-slow`, not every `make test`
pytestmark = pytest.mark.slow

JUDGED = {"alert", "experiment"}  # judged by each generation's evaluators: not what this test compares


@pytest.mark.timeout(400)
async def test_workers_killed_at_the_cut_over_lose_nothing_and_repeat_nothing(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    lines, ticks = traffic(users=300, seed=37)
    first, second = len(lines) * 6 // 10, len(lines) * 8 // 10
    expected = [o for o in offline_outputs(settings, lines + ticks) if o["type"] not in JUDGED]
    live_topics = sorted({t for kind, t in settings.output_topics.items() if kind not in JUDGED})
    await ensure_topics(settings)
    env = {**worker_env, **SOURCE_IDLE}
    start_worker("g0", env=env)
    await produce_lines(settings, lines[:first])
    await read_topics(settings, live_topics, quiet_s=4.0)  # generation 0 has processed it

    log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "deploy", "--config", str(settings.funnels),
        "--workers", "0", "--accept-short-history",
        env={**os.environ, **env}, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    port = free_port()
    generation = {**env, "CONVERSIONS_GENERATION": "1"}
    web = {**generation, "CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(port)}

    def pair(name: str) -> list[WorkerProcess]:
        return [start_worker(f"{name}-a", env=web), start_worker(f"{name}-b", env=generation)]

    try:
        await wait_for(lambda: registry.get(1), timeout_s=60)
        workers = pair("g1")

        async def flipped() -> bool:
            return await registry.current_number() == 1

        deadline = asyncio.get_running_loop().time() + 180
        while not await flipped():  # polled fast: the kill lands within the flip's moment
            assert asyncio.get_running_loop().time() < deadline, (tmp_path / "deploy.log").read_text()
            await asyncio.sleep(0.05)
        for worker in workers:
            worker.kill()
        assert await registry.relay_checkpoint(1) == RelayCheckpoint({}, {}, None)  # nothing relayed yet
        workers = pair("g1-after-flip")
        await produce_lines(settings, lines[first:second])
        await read_topics(settings, live_topics, quiet_s=4.0)  # relayed, checkpointed
        assert (await registry.relay_checkpoint(1)).own, "the relay had checkpointed before the second kill"
        for worker in workers:
            worker.kill()
        pair("g1-after-relay")
        await produce_lines(settings, lines[second:])
        await send_ticks(settings, ticks)

        live = await read_topics(settings, live_topics, expect=len(expected), quiet_s=4.0, timeout_s=180)
        ids = [o["id"] for o in live]
        assert len(ids) == len(set(ids)), "a record reached the live topics twice"
        assert canonical(live) == canonical(expected)

        entered, dropped = expected_steps(expected)
        dropped_per_step = [sum(v for (k, _), v in dropped.items() if k == i) for i in range(5)]

        async def counted() -> bool:
            steps = (await get_json(port, "/funnels/checkout", **WINDOW))["steps"]
            found = [s["entered"] for s in steps], [s["dropped"] for s in steps]
            return found == (entered, dropped_per_step)

        await wait_for(counted, timeout_s=60)
    finally:
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        log.close()
        await redis.aclose()
