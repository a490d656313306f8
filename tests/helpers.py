"""Shared test helpers: reading topics back, event builders, comparisons."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.core.config.matching import CompiledConfig
from streams.core.input.event import ClickEvent
from streams.core.input.repartition import RepartitionBatch
from streams.kafka import kafka_client_options
from streams.settings import Settings

_ids = itertools.count()


def event(name: str, at: str, user: str = "u1", **fields: Any) -> dict[str, Any]:
    """A valid event dict; `at` is "HH:MM" or "HH:MM:SS" on 2024-03-13, or a full timestamp."""
    timestamp = at if "T" in at else f"2024-03-13T{at if at.count(':') == 2 else at + ':00'}Z"
    body: dict[str, Any] = {
        "event_id": f"e{next(_ids)}",
        "event": name,
        "user_id": user,
        "timestamp": timestamp,
    }
    body.update(fields)
    return body


def click(name: str, at: str, user: str = "u1", **fields: Any) -> ClickEvent:
    return ClickEvent.model_validate(event(name, at, user, **fields))


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    """An output without what legitimately differs between Kafka and offline: where a dead
    letter came from (topic/partition/offset) and, therefore, its id and time."""
    if output["type"] != "deadletter":
        return output
    return {
        k: v
        for k, v in output.items()
        if k not in {"id", "timestamp", "source_topic", "source_partition", "source_offset"}
    }


async def read_topics(
    settings: Settings,
    topics: list[str],
    *,
    expect: int | None = None,
    quiet_s: float = 4.0,
    timeout_s: float = 120.0,
) -> list[dict[str, Any]]:
    """Everything on `topics` from the beginning, until `expect` records have arrived (and the
    topics then stay quiet for `quiet_s`), or until they stay quiet for `quiet_s`."""
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            fresh = [orjson.loads(m.value) for msgs in batch.values() for m in msgs]
            if fresh:
                records.extend(fresh)
                last_new = time.monotonic()
            elif time.monotonic() - last_new >= quiet_s and (expect is None or len(records) >= expect):
                break
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} does not exist")


def incident_funnels(baseline: str, min_entered: int) -> str:
    """A checkout funnel with one alert rule on payment per platform: the planted-incident tests'."""
    return f"""
version: 1
goals: [{{name: purchase, match: {{event: purchase}}}}]
funnels:
  - name: checkout
    window: 1d
    steps:
      - {{name: product_view, match: {{event: product_view}}}}
      - {{name: add_to_cart, match: {{event: add_to_cart}}}}
      - {{name: shipping, match: {{event: shipping_details}}}}
      - {{name: payment, match: {{event: payment_details}}}}
      - {{name: purchase, match: {{goal: purchase}}}}
    breakdowns: [context.platform]
alerts:
  - {{funnel: checkout, step: payment, window: 12h, baseline: {baseline}, min_entered: {min_entered},
     relative_drop: 0.35, drop_below: 0.5, by: [context.platform]}}
"""


def experiment_funnels() -> str:
    """A checkout funnel with one experiment (`cart_button`, variants in properties.variant,
    control `control`, judged on entry -> purchase) and one on another funnel with no traffic
    yet: the experiment tests'."""
    return """
version: 1
goals: [{name: purchase, match: {event: purchase}}]
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: product_view, match: {event: product_view}}
      - {name: add_to_cart, match: {event: add_to_cart}}
      - {name: shipping, match: {event: shipping_details}}
      - {name: payment, match: {event: payment_details}}
      - {name: purchase, match: {goal: purchase}}
    breakdowns: [context.platform]
  - name: newsletter
    steps:
      - {name: landing, match: {event: page_view, url: /newsletter}}
      - {name: signup, match: {event: newsletter_signup}}
experiments:
  - {name: cart_button, funnel: checkout, variant: properties.variant, control: control}
  - {name: signup_copy, funnel: newsletter, variant: properties.copy, control: old}
"""


async def read_topics_raw(settings: Settings, topic: str) -> list[tuple[int, RepartitionBatch]]:
    """Every repartition batch on the internal events topic, with its partition, to its end."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        out: list[tuple[int, RepartitionBatch]] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                out.extend((tp.partition, RepartitionBatch.decode(m.value)) for m in messages)
        return out
    finally:
        await consumer.stop()


STALE_CONFIG = """
version: 1
funnels:
  - name: f
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: %s}}
alerts:
  - {funnel: f, step: b, window: 5m, baseline: 1h, min_entered: 1, drop_below: 0.5}
"""


def fired_alert(config: CompiledConfig) -> dict[str, Any]:
    """The alert `STALE_CONFIG`'s rule fires on ten attempts of which two reach step b, as JSON."""
    return firing_evaluator(config)[1].model_dump(mode="json")


def firing_evaluator(config: CompiledConfig) -> tuple[Any, Any]:
    """The evaluator `fired_alert` comes from, with that alert (an `Alert`)."""
    from streams.core.measures.alerts import AlertEvaluator

    evaluator = AlertEvaluator(config)
    for n in range(10):
        for step in (0, 1) if n < 2 else (0,):
            evaluator.observe(
                {
                    "type": "micro",
                    "kind": "milestone",
                    "id": f"m{n}-{step}",
                    "funnel": "f",
                    "step_index": step,
                    "timestamp": "2024-03-13T10:01:30+00:00",
                }
            )
    [fired] = [a for a in evaluator.advance(1710324000000 + 10 * 60_000) if a.state == "fired"]
    return evaluator, fired


def lines_past(end: datetime) -> tuple[list[bytes], list[bytes]]:
    """What moves a run's event time to `end` everywhere: product views from enough users that
    every micro partition carries a watermark past it (they reach the alert and experiment
    evaluators), and one tick for each of four partitions (every journey partition's watermark)."""
    closing = [
        orjson.dumps(
            {
                "event_id": f"close-{i}",
                "event": "product_view",
                "user_id": f"closer-{i}",
                "timestamp": end.isoformat(),
                "context": {"platform": "web"},
            }
        )
        for i in range(40)
    ]
    ticks = [
        orjson.dumps(
            {"event_id": f"tick-{p}", "event": "tick", "user_id": f"tick-{p}", "timestamp": end.isoformat()}
        )
        for p in range(4)
    ]
    return closing, ticks
