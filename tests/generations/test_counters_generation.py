"""`conversions counters` joins a generation as a worker does (issue 26): without
`CONVERSIONS_GENERATION` the current one, with it generation N (its group, its own output topics,
its counter keys, the configuration recorded for it); a process whose generation is retired stops
on its own (and so does a worker that neither counts nor serves the web, its counters in such a
process), and one started after the flip joins the new current generation. (That such a
process counts its generation's outputs is shown end to end by the deploy through the dashboard,
tests/web/test_deploy_dashboard.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from streams.core.config.loader import parse_config
from streams.core.config.versions import config_fingerprint
from streams.generations.naming import generation_settings
from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import LocalInfra
from streams.tools.worker_process import WorkerProcess

CONFIG = """
version: 1
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
"""


async def test_the_counters_process_joins_a_generation_and_stops_when_it_is_retired(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    fingerprint = config_fingerprint(parse_config(CONFIG))
    await registry.ensure_first(settings.funnels.read_text(), fingerprint)
    await registry.create(CONFIG, fingerprint)
    one = generation_settings(settings, 1)
    await ensure_topics(settings)
    await ensure_topics(one)
    micro = settings.topic(settings.topic_micro)
    processes: list[WorkerProcess] = []

    def consumed(process: WorkerProcess) -> set[str]:
        line = next(t for t in process.log_text().splitlines() if "counters: consuming " in t)
        return set(line.split("counters: consuming ", 1)[1].split(", "))

    def counters(name: str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess({**worker_env, **(env or {})}, tmp_path / f"{name}.log", command="counters")
        processes.append(process)
        return process.start(wait_ready_s=90)

    try:
        # a worker whose counters run in such a process and that serves no web follows too
        journeys = start_worker(
            "journeys", env={"CONVERSIONS_COUNTERS_ENABLED": "false", "CONVERSIONS_WEB_ENABLED": "false"}
        )
        current = counters("current")  # generation 0 until the flip
        assert micro in consumed(current)
        chosen = counters("g1", {"CONVERSIONS_GENERATION": "1"})
        text = chosen.log_text()
        assert f"counters: generation 1 ({settings.app_id}-g1), reprocessing" in text
        assert one.topic(one.topic_micro) in consumed(chosen) and micro not in consumed(chosen)

        assert await registry.flip(0, 1)
        assert current.process is not None
        assert await asyncio.to_thread(current.process.wait, 30) == 0  # on its own, cleanly
        assert "counters: generation 0 is retired; stopping" in current.log_text()
        assert chosen.running  # generation 1 counts on
        assert journeys.process is not None
        await asyncio.to_thread(journeys.process.wait, 30)
        assert "this worker's generation 0 is retired; stopping" in journeys.log_text()

        joined = counters("after")  # a restart under a supervisor: the current generation
        assert f"counters: generation 1 ({settings.app_id}-g1), live" in joined.log_text()
        refused = WorkerProcess(
            {**worker_env, "CONVERSIONS_GENERATION": "0"}, tmp_path / "refused.log", command="counters"
        )
        processes.append(refused)
        refused.start(wait_ready_s=0)
        assert refused.process is not None
        assert await asyncio.to_thread(refused.process.wait, 60) != 0
        assert "generation 0 of" in refused.log_text() and "is retired" in refused.log_text()
    finally:
        for process in processes:
            process.stop()
        await redis.aclose()
    errors = [line for p in processes if p is not refused for line in p.error_lines()]
    assert not errors, errors
