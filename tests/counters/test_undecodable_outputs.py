"""The counters' consumer and the alerts' consumer read the output topics: a batch there that
cannot be decoded (a damaged batch, on the real broker, which stores it as sent) is
dead-lettered and passed, the outputs around it are read, and the consumers go on."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from streams.alerts.service import Alerting
from streams.counters.consumer import Counting
from streams.counters.redis_store import CounterStore
from streams.kafka import ensure_topics
from streams.kafka.undecodable import DeadLetterProducer
from streams.metrics import Metrics
from streams.settings import Settings
from tests.counters.conftest import CONFIG
from tests.helpers import read_topics
from tests.kafka.batches import bad_crc, produce_raw, record_batch

MICRO = {
    "id": "m1",
    "type": "micro",
    "kind": "milestone",
    "user_id": "u1",
    "session_id": "s1",
    "timestamp": "2024-03-13T10:00:00Z",
    "funnel": "checkout",
    "step": "product_view",
    "step_index": 0,
}


class Leader:
    def is_leader(self) -> bool:
        return True


async def run_until(task: Any, stopped: list[bool], check: Any) -> None:
    running = asyncio.create_task(task)
    try:
        for _ in range(200):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the consumer did not get there")
    finally:
        stopped.append(True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)


async def test_counters_and_alerts_pass_a_damaged_batch(
    settings: Settings, redis_store: CounterStore
) -> None:
    await ensure_topics(settings)
    micro_topic = settings.output_topics["micro"]
    good = orjson.dumps(MICRO)
    await produce_raw(settings, micro_topic, 0, bad_crc(record_batch([good, good])), record_batch([good]))

    metrics = Metrics()
    counting = Counting(settings, CONFIG, metrics, redis_store)  # its own dead-letter producer
    stopped: list[bool] = []

    async def counted() -> bool:
        return (
            metrics.registry.get_sample_value("conversions_counter_messages_total", {"result": "applied"})
            == 1
        )

    await run_until(counting.run(lambda: bool(stopped)), stopped, counted)
    await counting.close()

    publisher = DeadLetterProducer(settings)
    alerting = Alerting(settings, CONFIG, Metrics(), publisher, Leader())
    stopped = []

    async def alert_skipped() -> bool:
        return (
            alerting.metrics.registry.get_sample_value(
                "conversions_dead_letters_total", {"reason": "crc_mismatch"}
            )
            == 1
        )

    await run_until(alerting.run(lambda: bool(stopped)), stopped, alert_skipped)
    await alerting.close()
    await publisher.close()

    letters = await read_topics(settings, [settings.output_topics["deadletter"]], expect=2, quiet_s=0.5)
    assert [
        (d["reason"], d["source_topic"], d["source_offset"], d["source_offset_last"]) for d in letters
    ] == [("crc_mismatch", micro_topic, 0, 1)] * 2
    assert (
        metrics.registry.get_sample_value("conversions_dead_letters_total", {"reason": "crc_mismatch"}) == 1
    )
