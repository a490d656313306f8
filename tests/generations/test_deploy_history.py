"""`conversions deploy --history` through the real broker and Redis (issue 26, item 7): half of a
simulated clickstream is an archive file, Kafka holds the rest plus an overlap with the archive;
offline mode reads the archive, hands its journeys, outputs and offsets over to generation 1, whose
two workers continue from the offsets given. Its outputs and counters equal `conversions process`
over the whole sequence once: nothing of the overlap counted twice, nothing at the seam skipped,
and journeys that the seam cuts in two go on."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from redis.asyncio import Redis

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.generations.naming import generation_settings
from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.kafka.clients import new_consumer
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import LocalInfra, free_port
from streams.tools.producer import clickstream_producer, identity_key
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import WINDOW, expected_steps, get_json, wait_for
from tests.helpers import read_topics
from tests.pipeline.test_journeys_kafka import (
    SOURCE_IDLE,
    canonical,
    offline_outputs,
    traffic,
)

JUDGED = {"alert", "experiment"}  # judged again by the generation's evaluators, compared elsewhere


async def produce(settings: Settings, lines: list[bytes], first: int) -> dict[int, list[tuple[int, int]]]:
    """Each line keyed by person (as `produce_lines`); per partition, (line index, offset)."""
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        topic = settings.topic("clickstream")
        sent = [await producer.send(topic, line, key=identity_key(line)) for line in lines]
        placed: dict[int, list[tuple[int, int]]] = {}
        for index, future in enumerate(sent, first):
            metadata = await future
            placed.setdefault(metadata.partition, []).append((index, metadata.offset))
        return placed
    finally:
        await producer.stop()


async def send_ticks_after(settings: Settings, ticks: list[bytes]) -> None:
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for partition, tick in enumerate(ticks):
            await producer.send_and_wait(settings.topic("clickstream"), tick, partition=partition)
    finally:
        await producer.stop()


def person(output: dict[str, Any]) -> Any:
    return output.get("user_id") or output.get("anonymous_id")


async def committed(settings: Settings, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
    consumer = new_consumer(settings, group_id=group)
    await consumer.start()
    try:
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def test_deploy_with_history_counts_each_event_once_across_the_seam(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    lines, ticks = traffic(users=300, seed=31)
    archived, overlap = len(lines) // 2, 150
    expected = offline_outputs(settings, lines + ticks)  # the whole sequence, once
    # journeys the seam cuts in two: a step reached after it by someone who started before it
    config = compile_config(load_config(settings.funnels))
    before = [
        orjson.loads(o.to_json())
        for o in OfflineRun(config, settings.partitions, enrichment=settings.enrichment()).run(
            lines[:archived]
        )
    ]
    started = {(o["funnel"], person(o)) for o in before if o["type"] == "micro" and o.get("step_index") == 0}
    seen_before = {o["id"] for o in before}
    cut = [
        o
        for o in expected
        if o["type"] == "micro"
        and (o.get("step_index") or 0) > 0
        and o["id"] not in seen_before
        and (o["funnel"], person(o)) in started
    ]
    assert cut, "the seam falls in the middle of some journeys"

    archive = tmp_path / "archive.ndjson"
    archive.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines[:archived]))
    await ensure_topics(settings)
    placed = await produce(settings, lines[archived - overlap :], archived - overlap)
    await send_ticks_after(settings, ticks)
    topic = settings.topic("clickstream")
    seam = {
        f"{topic}/{p}": next((offset for index, offset in placed.get(p, []) if index >= archived), 0)
        for p in range(settings.partitions)
    }
    assert sum(seam.values()) == overlap  # the overlap is in the archive and on Kafka
    offsets = tmp_path / "offsets.json"
    offsets.write_bytes(orjson.dumps(seam))

    env = {**worker_env, **SOURCE_IDLE}
    log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "deploy", "--config", str(settings.funnels),
        "--workers", "0", "--accept-short-history",
        "--history", str(archive), "--history-offsets", str(offsets),
        env={**os.environ, **env}, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    port = free_port()
    generation = {**env, "CONVERSIONS_GENERATION": "1"}
    try:

        async def handed_over() -> bool:
            assert deploy.returncode is None, (tmp_path / "deploy.log").read_text()
            recorded = await registry.get(1)
            return recorded is not None and recorded.pending is None

        await wait_for(handed_over, timeout_s=60)
        new = generation_settings(settings, 1)
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        assert await committed(settings, f"{new.app_id}-ingest", tps) == {
            int(name.rpartition("/")[2]): offset for name, offset in seam.items()
        }
        start_worker(
            "g1-a", env={**generation, "CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(port)}
        )
        start_worker("g1-b", env=generation)
        assert await asyncio.wait_for(deploy.wait(), 120) == 0, (tmp_path / "deploy.log").read_text()
        assert await registry.current_number() == 1

        wanted = [o for o in expected if o["type"] not in JUDGED]
        topics = sorted({t for kind, t in new.output_topics.items() if kind not in JUDGED})
        outputs = await read_topics(new, topics, expect=len(wanted), quiet_s=3.0)
        assert len(outputs) == len({o["id"] for o in outputs}), "an output made twice"
        assert canonical(outputs) == canonical(wanted)

        entered, dropped = expected_steps(expected)
        dropped_per_step = [sum(v for (k, _), v in dropped.items() if k == i) for i in range(5)]

        async def counted() -> bool:
            steps = (await get_json(port, "/funnels/checkout", **WINDOW))["steps"]
            return ([s["entered"] for s in steps], [s["dropped"] for s in steps]) == (
                entered,
                dropped_per_step,
            )

        await wait_for(counted, timeout_s=60)
        recovered = (tmp_path / "g1-a.log").read_text() + (tmp_path / "g1-b.log").read_text()
        assert "journeys recovered" in recovered
    finally:
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        log.close()
        await redis.aclose()
    text = (tmp_path / "deploy.log").read_text()
    assert "history handed over" in text, text
