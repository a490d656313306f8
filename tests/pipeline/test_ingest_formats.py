"""Ingest reads each clickstream topic in its declared input format (`CONVERSIONS_INPUT_FORMAT`)
and counts the valid messages that carry nothing for the engine (Segment's group calls).

The agent's decode step is run directly on plain messages (what Faust hands it: value, topic,
partition, offset); what it sends and dead-letters is collected as it is, nothing else stands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.core.input.rejection import Rejection
from streams.core.input.repartition import RepartitionBatch
from streams.metrics import Metrics
from streams.pipeline.ingest import Ingest
from streams.settings import Settings

TRACKERS = Path(__file__).parent.parent / "fixtures" / "trackers"
SEGMENT_TRACK = {
    "type": "track",
    "event": "Order Completed",
    "messageId": "m-1",
    "userId": "user_1",
    "timestamp": "2026-03-13T10:00:00Z",
    "properties": {"revenue": 10},
}
SEGMENT_GROUP = {"type": "group", "groupId": "acme", "userId": "user_1", "timestamp": "2026-03-13T10:00:01Z"}


@dataclass
class Message:
    value: bytes
    topic: str
    partition: int = 0
    offset: int = 0


async def ingest(
    settings: Settings, messages: list[Message]
) -> tuple[list[dict[str, Any]], list[Rejection], Metrics]:
    sent: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    metrics = Metrics()

    async def send(_: int, batch: RepartitionBatch) -> None:
        sent.extend(batch.events)

    async def dead_letter(rejects: Any, _: Any) -> None:
        rejected.extend(rejects)

    agent = Ingest(settings, metrics, send, dead_letter, assignment=set)
    await agent.repartition(list(messages))
    return sent, rejected, metrics


async def test_each_topic_is_read_in_its_declared_format() -> None:
    settings = Settings(
        topic_prefix="p.",
        topic_clickstream=["web", "legacy", "snowplow-enriched"],
        input_format="legacy=contract,snowplow-enriched=snowplow",
        max_future_skew_s=10**9,
    )
    snowplow_line = (TRACKERS / "snowplow-enriched.tsv").read_bytes().splitlines()[0]
    segment = orjson.dumps(SEGMENT_TRACK)
    sent, rejected, _ = await ingest(
        settings,
        [
            Message(segment, "p.web", offset=1),  # auto: detected as Segment
            Message(segment, "p.legacy", offset=2),  # declared contract: refused as such
            Message(snowplow_line, "p.snowplow-enriched", offset=3),
            Message(segment, "p.snowplow-enriched", offset=4),  # declared snowplow: not TSV
        ],
    )
    from_segment = [e for e in sent if e["event"] == "Order Completed" and e.get("user_id") == "user_1"]
    assert len(sent) == 2 and len(from_segment) == 1
    assert next(e for e in sent if e is not from_segment[0])["event_id"] != "m-1"
    assert [r.format for r in rejected] == ["contract", "snowplow"]
    assert rejected[0].detail.startswith("contract: ") and "event_id" in rejected[0].detail
    assert rejected[1].detail.startswith("snowplow: ")


async def test_group_calls_are_counted_by_format_not_dead_lettered() -> None:
    settings = Settings(max_future_skew_s=10**9)
    batch = {"batch": [SEGMENT_TRACK, SEGMENT_GROUP, {**SEGMENT_GROUP, "groupId": "other"}]}
    sent, rejected, metrics = await ingest(
        settings,
        [Message(orjson.dumps(batch), "clickstream"), Message(orjson.dumps(SEGMENT_GROUP), "clickstream")],
    )
    assert len(sent) == 1 and not rejected
    assert metrics.registry.get_sample_value("conversions_ignored_total", {"format": "segment"}) == 3
    assert b'conversions_ignored_total{format="segment"} 3.0' in metrics.render()
