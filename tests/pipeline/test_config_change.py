"""A worker restarted on an edited configuration (issue 25), through the real broker and Redis:
no crash, an attempt of a funnel whose step was renamed is carried over and goes on under the
new version, one of a funnel whose window changed ends with `definition_changed` in the old
version's terms, and the counters keep each version's history under its own keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from redis.asyncio import Redis

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import LocalInfra
from streams.tools.producer import clickstream_producer
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics

A = """
version: 1
goals:
  - {name: purchase, match: {event: purchase}}
funnels:
  - name: checkout
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
      - {name: buy, match: {goal: purchase}}
  - name: trial
    window: 7d
    steps:
      - {name: start, match: {event: trial_start}}
      - {name: use, match: {event: trial_use}}
      - {name: pay, match: {event: trial_pay}}
"""
B = A.replace("name: cart", "name: basket").replace("window: 7d", "window: 1d")


async def send(settings: Settings, bodies: list[dict[str, object]]) -> None:
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for body in bodies:
            await producer.send_and_wait(settings.topic("clickstream"), orjson.dumps(body))
    finally:
        await producer.stop()


async def test_a_worker_restarted_on_an_edited_configuration(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path, infra: LocalInfra
) -> None:
    config_a, config_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    config_a.write_text(A)
    config_b.write_text(B)
    va = {f.name: f.version for f in compile_config(load_config(config_a)).funnels}
    vb = {f.name: f.version for f in compile_config(load_config(config_b)).funnels}
    await ensure_topics(settings)
    topics = [settings.topic(settings.topic_micro), settings.topic(settings.topic_dropoffs)]

    first = start_worker("a", env={"CONVERSIONS_FUNNELS": str(config_a)})
    await send(
        settings,
        [
            event("product_view", "10:00", "c1"),
            event("add_to_cart", "10:05", "c1"),
            event("trial_start", "10:00", "t1"),
        ],
    )
    before = await read_topics(settings, topics, expect=3, quiet_s=3)
    assert {(o["funnel"], o["step"], o["funnel_version"]) for o in before} == {
        ("checkout", "view", va["checkout"]),
        ("checkout", "cart", va["checkout"]),
        ("trial", "start", va["trial"]),
    }
    first.stop()

    second = start_worker("b", env={"CONVERSIONS_FUNNELS": str(config_b)})
    await send(settings, [event("purchase", "10:30", "c1"), event("trial_use", "10:30", "t1")])
    after = [o for o in await read_topics(settings, topics, expect=6, quiet_s=3) if o not in before]
    rows = sorted((o["type"], o["funnel"], o["step"], o.get("reason"), o["funnel_version"]) for o in after)
    assert rows == [
        ("carried", "checkout", "basket", None, vb["checkout"]),
        ("dropoff", "trial", "start", "definition_changed", va["trial"]),
        ("micro", "checkout", "buy", None, vb["checkout"]),
    ]
    assert "the configuration differs from the one the journeys were written under" in second.log_text()
    assert "funnel trial: incompatible" in second.log_text()

    redis = Redis.from_url(infra.redis_url)
    try:
        keys = {
            (k.decode() if isinstance(k, bytes) else k).split("}:", 1)[1].split(":")[1]
            for k in await redis.keys(f"conv:{{{settings.app_id}:*}}:f:*")
        }
    finally:
        await redis.aclose()
    # each version's counts under its own keys: A's checkout history is not relabelled
    assert {f"checkout@{va['checkout']}", f"checkout@{vb['checkout']}", f"trial@{va['trial']}"} <= keys
