"""Erasure and reprocessing meet (issues 28 and 26): a new generation re-reads the retained
clickstream from its start, the erased person's old raw events among it; the erased ids are one
topic for every generation, so its ingest drops them as the live generation's does, and the
person's journey does not come back in the new generation's outputs."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.kafka.erasures import forget
from streams.settings import Settings
from streams.tools.infra import LocalInfra
from streams.tools.producer import clickstream_producer
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics

CONFIG = """
version: 1
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
identity: {stitch: false}
"""


async def test_a_new_generation_replaying_an_erased_persons_events_does_not_bring_them_back(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    old, new = tmp_path / "a.yaml", tmp_path / "b.yaml"
    old.write_text(CONFIG)
    new.write_text(CONFIG.replace("window: 1d", "window: 2d"))
    await ensure_topics(settings)
    env = {**worker_env, "CONVERSIONS_FUNNELS": str(old)}
    start_worker("g0", env=env)
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for person in ("kept", "gone"):
            for name, at in (("product_view", "10:00"), ("add_to_cart", "10:05")):
                body = orjson.dumps(event(name, at, person))
                await producer.send_and_wait(settings.topic("clickstream"), body, key=person.encode())
    finally:
        await producer.stop()
    live = await read_topics(settings, [settings.topic(settings.topic_micro)], expect=4, quiet_s=1)
    assert {o["user_id"] for o in live} == {"kept", "gone"}
    await forget(settings, user_id="gone")  # after the events: they are all stamped before it

    log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "streams.cli", "deploy", "--config", str(new), "--workers", "1", "--accept-short-history"),
        env={**os.environ, **env},
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    redis = Redis.from_url(infra.redis_url)
    try:
        registry = Registry(redis, settings.app_id)
        for _ in range(750):
            assert deploy.returncode is None, (tmp_path / "deploy.log").read_text()
            if await registry.current_number() == 1:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(
                "generation 1 never became current: " + (tmp_path / "deploy.log").read_text()
            )
        own = settings.topic(f"{settings.app_id}-g1.{settings.topic_micro}")
        replayed = await read_topics(settings, [own], expect=2, quiet_s=2)
        assert sorted((o["user_id"], o["step"]) for o in replayed) == [("kept", "cart"), ("kept", "view")]
    finally:
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        log.close()
        await redis.aclose()
