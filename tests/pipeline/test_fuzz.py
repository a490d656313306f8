"""10,000 malformed messages of every kind, mixed into valid traffic, through the real worker:
each one is dead-lettered with a reason, the worker never crashes, and the valid traffic's
outputs are exactly what they are without the garbage."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.core.input.decode import decode_message
from streams.core.input.event import MAX_NESTING
from streams.kafka import ensure_topics, kafka_client_options
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import read_topics
from tests.pipeline.test_journeys_kafka import (
    SOURCE_IDLE,
    canonical,
    offline_outputs,
    send_ticks,
    traffic,
    unique_by_id,
)

BAD_MESSAGES = 10_000
HUGE = 1_200_000  # over the 1,000,000-byte default limit


def _valid(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "event_id": f"fuzz-{n}",
        "event": rng.choice(["page_view", "product_view", "purchase"]),
        "user_id": f"fuzz-user-{rng.randrange(50)}",
        "timestamp": "2024-03-11T12:00:00Z",
    }


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"x": value}
    return value


def malformed(rng: random.Random, n: int, valid_lines: list[bytes]) -> bytes:
    """One message that must be refused, of a kind picked at random."""
    base = _valid(rng, n)
    kind = n % 12
    if kind == 0:  # truncated JSON
        line = rng.choice(valid_lines)
        return line[: rng.randrange(1, len(line) - 1)]
    if kind == 1:  # invalid UTF-8 inside a string
        raw = orjson.dumps(base)
        cut = raw.index(b"fuzz-") + 2
        return raw[:cut] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + raw[cut:]
    if kind == 2:  # wrong types
        field, value = rng.choice(
            [
                ("timestamp", [1, 2]),
                ("timestamp", True),
                ("event", 5),
                ("user_id", 7),
                ("properties", "not an object"),
                ("event_id", {"a": 1}),
                ("page", 3.5),
            ]
        )
        return orjson.dumps({**base, field: value})
    if kind == 3:  # absurd timestamps: before 2000, after 2100, far in the future, unparseable
        stamp = rng.choice(
            ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2099-01-01T00:00:00Z", -5, "yesterday", ""]
        )
        return orjson.dumps({**base, "timestamp": stamp})
    if kind == 4:  # no identity, or identities that cannot be one
        identity = rng.choice([{}, {"user_id": ""}, {"user_id": "bad\x00id"}, {"anonymous_id": "x" * 10_000}])
        return orjson.dumps({**{k: v for k, v in base.items() if k != "user_id"}, **identity})
    if kind == 5:  # deep nesting, in properties and as raw arrays
        if rng.random() < 0.5:
            return orjson.dumps({**base, "properties": _nested(MAX_NESTING + rng.randrange(1, 40))})
        depth = rng.randrange(600, 3_000)
        return b"[" * depth + b"]" * depth
    if kind == 6:  # not an object at all
        return rng.choice([b"42", b'"text"', b"null", b"true", b"[]", b"{}", b"", b" "])
    if kind == 7:  # random bytes
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 8:  # a batch whose every element is bad
        return orjson.dumps([{**base, "event": None}, 17])[:10_000]
    if kind == 9 and n % 3_000 == 9:  # a few huge ones
        return orjson.dumps({**base, "properties": {"blob": "x" * HUGE}})
    if kind == 10:  # unknown fields of the wrong shape
        return orjson.dumps({**base, "context": "mobile", "campaign": ["x"]})
    return orjson.dumps({**base, "event": ""})  # an empty event name


@pytest.mark.timeout(400)
async def test_ten_thousand_malformed_messages_are_dead_lettered_and_change_nothing(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    rng = random.Random(2026)
    lines, ticks = traffic(users=300, seed=47)
    expected = offline_outputs(settings, lines + ticks)
    valid_expected = [o for o in expected if o["type"] != "deadletter"]
    doubled = offline_outputs(settings, [line for line in lines for _ in (0, 1)] + ticks)
    assert [o for o in doubled if o["type"] != "deadletter"] == valid_expected, "duplicates change nothing"

    mixed: list[tuple[bytes, bool]] = [(line, False) for line in lines]
    for n in range(BAD_MESSAGES):
        mixed.insert(rng.randrange(len(mixed) + 1), (malformed(rng, n, lines), True))
    for i in sorted(rng.sample(range(len(mixed)), 500), reverse=True):  # duplicates, right behind
        if not mixed[i][1]:
            mixed.insert(i + 1, mixed[i])

    await ensure_topics(settings)
    worker = start_worker(env=SOURCE_IDLE)
    producer = AIOKafkaProducer(**kafka_client_options(settings), max_request_size=4 * HUGE, linger_ms=5)
    await producer.start()
    try:
        topic = settings.topic(settings.topic_clickstream[0])
        for value, _ in mixed:
            await producer.send(topic, value, partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    await send_ticks(settings, ticks)

    deadletters = settings.output_topics["deadletter"]
    topics = sorted(set(settings.output_topics.values()) - {deadletters})
    actual = await read_topics(settings, topics, expect=len(valid_expected), quiet_s=5.0, timeout_s=240.0)
    letters = await read_topics(settings, [deadletters], expect=BAD_MESSAGES, quiet_s=3.0)

    assert canonical(unique_by_id(actual)) == canonical(valid_expected)
    # the simulator's own malformed lines, as many times as they were sent (some were duplicated)
    bad_in_lines = sum(1 for value, bad in mixed if not bad and decode_message(value).rejects)
    assert bad_in_lines >= sum(1 for o in expected if o["type"] == "deadletter")
    per_message = Counter((o["source_partition"], o["source_offset"]) for o in letters)
    assert len(per_message) == BAD_MESSAGES + bad_in_lines, "every bad message, and only those"
    reasons = Counter(o["reason"] for o in letters)
    assert set(reasons) >= {
        "invalid_json",
        "invalid_utf8",
        "invalid_event",
        "not_an_object",
        "too_deeply_nested",
        "too_large",
        "future_timestamp",
        "empty_batch",
    }, reasons
    assert all(o["original_sha256"] and o["detail"] for o in letters)
    assert worker.running, "no crash"
    assert "Traceback" not in worker.log_text()
