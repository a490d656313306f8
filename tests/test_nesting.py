"""One nesting limit (`CONVERSIONS_MAX_NESTING`) for every way input comes in, tested at the
boundary: `properties` nested exactly the limit deep is accepted, one level more is refused
with `too_deeply_nested`, by the contract decoder, the Segment one, ingest (dead-lettered with
the reason) and the collector (400 with the reason; it was a 500 and a traceback past 252
levels, where orjson stops encoding)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.collector.messages import CollectorConfig, Refusal, accept
from streams.core.input.decode import decode_message
from streams.core.input.event import MAX_NESTING, nesting_depth
from streams.settings import Settings
from tests.pipeline.test_ingest_formats import Message, ingest

NOW = datetime(2026, 3, 13, 10, tzinfo=UTC)


def nested(depth: int) -> dict[str, Any]:
    """A dict nesting exactly `depth` levels (itself the first)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    assert nesting_depth(value) == depth
    return value


def deep_json(depth: int) -> bytes:
    """`nested(depth)` as JSON, for depths orjson cannot write (past 254 levels)."""
    return b'{"n":' * (depth - 1) + b'{"leaf":1}' + b"}" * (depth - 1)


def contract(properties: dict[str, Any] | int) -> bytes:
    """An event whose properties are `properties`, or nested that many levels deep."""
    fields = {"event_id": "e1", "event": "x", "user_id": "u", "timestamp": NOW.isoformat(), "properties": 0}
    inner = deep_json(properties) if isinstance(properties, int) else orjson.dumps(properties)
    return orjson.dumps(fields).replace(b'"properties":0', b'"properties":' + inner)


def segment(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "x",
        "messageId": "m1",
        "userId": "u",
        "timestamp": NOW.isoformat(),
        "properties": properties,
    }


@pytest.mark.parametrize("limit", [MAX_NESTING, 4, 40])
def test_the_decoders_accept_the_limit_and_refuse_one_level_more(limit: int) -> None:
    for fmt, raw_of in (
        ("contract", contract),
        ("segment", lambda p: orjson.dumps(segment(p))),
        ("segment", lambda p: orjson.dumps({"batch": [segment(p)]})),
    ):
        at_limit = decode_message(raw_of(nested(limit)), max_nesting=limit, format=fmt)  # type: ignore[arg-type]
        assert len(at_limit.events) == 1 and not at_limit.rejects, (fmt, at_limit.rejects)
        over = decode_message(raw_of(nested(limit + 1)), max_nesting=limit, format=fmt)  # type: ignore[arg-type]
        assert not over.events and [r.reason for r in over.rejects] == ["too_deeply_nested"], fmt
        assert f"nested deeper than {limit}" in over.rejects[0].detail or "levels" in over.rejects[0].detail


async def test_ingest_dead_letters_past_the_setting_with_the_reason() -> None:
    settings = Settings(max_nesting=6, max_future_skew_s=10**9)
    sent, rejected, _ = await ingest(
        settings,
        [
            Message(contract(nested(6)), "clickstream", offset=1),
            Message(contract(nested(7)), "clickstream", offset=2),
            Message(contract(400), "clickstream", offset=3),
        ],
    )
    assert len(sent) == 1
    assert [r.reason for r in rejected] == ["too_deeply_nested"] * 2
    assert all(r.original for r in rejected), "the original bytes are kept"


def collect(body: dict[str, Any] | bytes, limit: int = MAX_NESTING, call: str = "track") -> int:
    """-records accepted, or the number of per-message errors of a too_deeply_nested refusal."""
    config = CollectorConfig(topic="clickstream", max_nesting=limit)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    try:
        accepted = accept(call, raw, config=config, received_at=NOW)
    except Refusal as refusal:
        assert refusal.status == 400 and refusal.code == "too_deeply_nested", refusal.body()
        assert "deeper" in refusal.message
        return len(refusal.errors)
    return -len(accepted.records)


@pytest.mark.parametrize("limit", [MAX_NESTING, 5])
def test_the_collector_accepts_the_limit_and_refuses_one_level_more(limit: int) -> None:
    assert collect(segment(nested(limit)), limit) == -1
    assert collect(segment(nested(limit + 1)), limit) == 0
    assert collect({"batch": [segment(nested(limit + 1))]}, limit, "batch") == 0
    assert collect(segment({"a": 1}) | {"context": nested(limit + 1)}, limit) == 0


@pytest.mark.parametrize("depth", [253, 600, 1_020])
@pytest.mark.parametrize("where", ["properties", "context", "batch"])
def test_the_collector_answers_400_not_500_however_deep(depth: int, where: str) -> None:
    """What orjson reads (up to 1,024 levels) it cannot write back past 254: that was the 500."""
    key = "properties" if where == "batch" else where  # batch: its second message's properties
    message = orjson.dumps(segment({"a": 1}) | {key: 0})
    message = message.replace(f'"{key}":0'.encode(), f'"{key}":'.encode() + deep_json(depth))
    body = (
        b'{"batch":[' + orjson.dumps(segment({"a": 1})) + b"," + message + b"]}"
        if where == "batch"
        else message
    )
    assert collect(body, call="batch" if where == "batch" else "track") == 0
