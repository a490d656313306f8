"""The counters' linger (`counter_linger_ms`): fetches held by the broker until outputs gather
change how outputs fall into batches, never what is counted. A lingering consumer stopped in the
middle of a stream (its task cancelled, whatever batch it had in hand neither applied nor
committed) and a successor in its group leave the reports of a consumer that never lingers nor
stopped over the same outputs: nothing lost, nothing counted twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.core.config.loader import load_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.counters.consumer import Counting, lingering
from streams.counters.redis_store import redis_counter_store
from streams.kafka import ensure_topics
from streams.kafka.clients import kafka_client_options
from streams.metrics import Metrics
from streams.settings import Settings
from streams.web import analysis, views
from tests.counters.test_counters_worker import WINDOW, wait_for
from tests.pipeline.test_journeys_kafka import offline_outputs, traffic


def applied(counting: Counting) -> float:
    registry = counting.metrics.registry
    return registry.get_sample_value("conversions_counter_messages_total", {"result": "applied"}) or 0.0


async def produce(settings: Settings, topics: list[str], outputs: list[dict[str, Any]]) -> None:
    """The outputs in chunks of 50 every 50 ms (a live pace: each lingering fetch gathers several)."""
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=5)
    await producer.start()
    try:
        for i, output in enumerate(outputs):
            topic = settings.output_topics[output["type"]]
            if topic in topics:
                key = (output.get("user_id") or output.get("anonymous_id") or "").encode()
                await producer.send(topic, orjson.dumps(output), key=key)
            if i % 50 == 49:
                await producer.flush()
                await asyncio.sleep(0.05)
        await producer.flush()
    finally:
        await producer.stop()


def reports(counting: Counting, config: CompiledConfig) -> list[Callable[[], Awaitable[tuple[int, Any]]]]:
    store = counting.store
    by = {**WINDOW, "by": "context.platform"}
    return [
        lambda: views.overview(store, config, dict(WINDOW)),
        lambda: views.funnel(store, config, "checkout", dict(by)),
        lambda: views.goals(store, config, dict(WINDOW)),
        lambda: analysis.channels(store, config, dict(WINDOW)),
        lambda: analysis.progress_view(store, config, "checkout", dict(WINDOW)),
    ]


@pytest.mark.timeout(300)
async def test_a_lingering_consumer_stopped_mid_stream_and_its_successor_count_each_output_once(
    settings: Settings,
) -> None:
    lines, ticks = traffic(users=150, seed=41)
    outputs = offline_outputs(settings, lines + ticks)
    config = compile_config(load_config(settings.funnels))
    await ensure_topics(settings)
    lingering_settings = settings.model_copy(update={"counter_linger_ms": 200})
    assert lingering(lingering_settings) == {"fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": 200}
    reference_settings = settings.model_copy(
        update={"app_id": f"{settings.app_id}ref", "counter_linger_ms": 0}
    )
    assert lingering(reference_settings) == {}

    def counting(of: Settings) -> Counting:
        return Counting(of, config, Metrics(), redis_counter_store(of))

    reference, first = counting(reference_settings), counting(lingering_settings)
    counted = sum(1 for o in outputs if settings.output_topics[o["type"]] in first.topics)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(reference.run(stop.is_set)), asyncio.create_task(first.run(stop.is_set))]
    second: Counting | None = None
    half = len(outputs) // 2
    try:
        await produce(settings, first.topics, outputs[:half])

        async def first_applied_some() -> bool:
            return applied(first) > 0

        await wait_for(first_applied_some, timeout_s=120)
        tasks[1].cancel()  # mid-stream: a batch in hand is neither applied nor committed
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        await first.close()
        assert 0 < applied(first) < counted
        second = counting(lingering_settings)
        tasks.append(asyncio.create_task(second.run(stop.is_set)))
        await produce(settings, first.topics, outputs[half:])

        async def reference_done() -> bool:
            return applied(reference) >= counted

        await wait_for(reference_done, timeout_s=120)
        assert applied(reference) == counted

        async def same_reports() -> bool:
            assert second is not None
            ours = [await read() for read in reports(second, config)]
            theirs = [await read() for read in reports(reference, config)]
            return ours == theirs

        await wait_for(same_reports, timeout_s=60)
        await asyncio.sleep(1)  # nothing more arrives later
        assert await same_reports()
        # never applied twice (a batch the first applied but did not commit, the second skips)
        assert applied(first) + applied(second) <= counted
        status, overview = await reports(second, config)[1]()
        assert status == 200 and overview["steps"][0]["entered"] > 20, overview
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        await reference.close()
        if second is not None:
            await second.close()
