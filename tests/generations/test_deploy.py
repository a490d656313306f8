"""`conversions deploy` through the real broker and Redis (issue 26): a new generation reprocesses
the retained clickstream in its own groups, topics and counter keys while generation 0 serves,
cuts over atomically (the API, polled across the flip, answers the full counts of one generation
every time), the old generation's workers stop, the live topics get nothing from the replay, and
`conversions rollback` flips back."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import LocalInfra, free_port
from streams.tools.producer import clickstream_producer
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics

A = """
version: 1
goals:
  - {name: purchase, match: {event: purchase}}
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
      - {name: buy, match: {goal: purchase}}
identity: {stitch: false}
"""
B = A.replace(
    "identity:",
    "  - name: trial\n    window: 1d\n    steps:\n"
    "      - {name: start, match: {event: trial_start}}\n"
    "      - {name: pay, match: {event: trial_pay}}\nidentity:",
)
CLI = (sys.executable, "-m", "streams.cli")
WINDOW = {"start": "2024-03-13T00:00:00+00:00", "end": "2024-03-14T00:00:00+00:00"}


async def send(settings: Settings, bodies: list[dict[str, Any]]) -> None:
    """Keyed by person, as a collector would: one person's events stay in order on one partition."""
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for body in bodies:
            key = str(body["user_id"]).encode()
            await producer.send_and_wait(settings.topic("clickstream"), orjson.dumps(body), key=key)
    finally:
        await producer.stop()


def history() -> list[dict[str, Any]]:
    """Ten people through checkout (six reach the cart), four start a trial, two pay."""
    bodies = []
    for i in range(10):
        bodies.append(event("product_view", f"10:{i:02d}", f"c{i}"))
        if i < 6:
            bodies.append(event("add_to_cart", f"10:{i + 10:02d}", f"c{i}"))
    for i in range(4):
        bodies.append(event("trial_start", f"11:{i:02d}", f"t{i}"))
        if i < 2:
            bodies.append(event("trial_pay", f"11:{i + 10:02d}", f"t{i}"))
    return bodies


async def api(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", params=WINDOW) as response,
    ):
        return response.status, await response.json()


def entered(body: dict[str, Any]) -> list[int]:
    return [step["entered"] for step in body["steps"]]


async def poll_until(check: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s")


async def test_deploy_reprocesses_cuts_over_and_rolls_back(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    config_a, config_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    config_a.write_text(A)
    config_b.write_text(B)
    await ensure_topics(settings)
    env = {**worker_env, "CONVERSIONS_FUNNELS": str(config_a)}
    old_port, new_port = free_port(), free_port()
    first = start_worker(
        "g0", env={**env, "CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(old_port)}
    )
    await send(settings, history())

    async def counted(port: int) -> bool:
        status, body = await api(port, "/funnels/checkout")
        return status == 200 and entered(body) == [10, 6, 0]

    await poll_until(lambda: counted(old_port))
    live_topics = [settings.topic(settings.topic_micro), settings.topic(settings.topic_dropoffs)]
    live_before = await read_topics(settings, live_topics, expect=16, quiet_s=2)

    deploy_log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        *CLI,
        "deploy",
        "--config",
        str(config_b),
        "--workers",
        "1",
        "--web-port",
        str(new_port),
        "--accept-short-history",
        env={**os.environ, **env},
        stdout=deploy_log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        # the new generation's web answers from generation 0 until the flip, then from 1: every
        # answer is one whole generation's (checkout the same; trial absent, then complete)
        answers: list[tuple[int, int, list[int] | None]] = []

        async def flipped() -> bool:
            assert deploy.returncode is None, (tmp_path / "deploy.log").read_text()
            current = await registry.current_number()
            try:
                status, body = await api(new_port, "/funnels/checkout")
                trial_status, trial = await api(new_port, "/funnels/trial")
            except aiohttp.ClientError:
                return False  # its worker is not up yet
            assert status == 200 and entered(body) == [10, 6, 0], body
            answers.append((current, trial_status, entered(trial) if trial_status == 200 else None))
            return current == 1 and trial_status == 200

        await poll_until(flipped, timeout_s=150)
        assert deploy.returncode is None
        seen = {(status, counts is None) for _, status, counts in answers}
        assert (200, False) in seen
        # the trial funnel never answers partly: absent (404) under generation 0, whole under 1
        assert all(counts in (None, [4, 2]) for _, _, counts in answers), answers
        generations = {g.number: g.state for g in await registry.all()}
        assert generations == {0: "retired", 1: "live"}
        progress = await registry.progress(1)
        assert progress is not None and progress["total_lag"] == 0
        status, listed = await api(new_port, "/generations")  # what the dashboard can show
        assert status == 200 and listed["current"] == 1
        assert [(g["number"], g["state"]) for g in listed["generations"]] == [(0, "retired"), (1, "live")]
        assert listed["generations"][1]["progress"]["lag"] == progress["lag"]

        assert first.process is not None
        await asyncio.to_thread(first.process.wait, 30)  # a retired generation's workers stop
        # the replay wrote to generation 1's own topics, nothing to the live ones
        prefix = f"{settings.app_id}-g1."
        own = [settings.topic(prefix + settings.topic_micro)]
        replayed = await read_topics(settings, own, expect=22, quiet_s=2)
        assert len(replayed) == 22
        # an unchanged funnel's records keep their ids across generations (same funnel_version)
        # (keyed input: each person's events in one partition, in the same order for both)
        assert {o["id"] for o in replayed if o["funnel"] == "checkout"} == {o["id"] for o in live_before}
        # the live topics got none of the replay; from the seam on, generation 1's records
        # (of the unchanged funnel and of the new one) arrive there through the relay, once
        await send(settings, [event("product_view", "12:00", "c20"), event("trial_start", "12:01", "t20")])
        live_after = await read_topics(settings, live_topics, expect=len(live_before) + 2, quiet_s=3)
        ids = [o["id"] for o in live_after]
        assert len(ids) == len(set(ids)), "a record reached the live topics twice"
        fresh = [o for o in live_after if o["id"] not in {b["id"] for b in live_before}]
        assert sorted((o["funnel"], o["step"], o["user_id"]) for o in fresh) == [
            ("checkout", "view", "c20"),
            ("trial", "start", "t20"),
        ]

        rollback = await asyncio.create_subprocess_exec(
            *CLI, "rollback", env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE
        )
        said, _ = await asyncio.wait_for(rollback.communicate(), 60)
        assert rollback.returncode == 0, said
        assert await registry.current_number() == 0
        assert await asyncio.wait_for(deploy.wait(), 60) == 0  # its worker (now retired) stopped
    finally:
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        deploy_log.close()
        await redis.aclose()
    text = (tmp_path / "deploy.log").read_text()
    assert "generation 1 recorded" in text and "cut over: generation 1 is current" in text, text
