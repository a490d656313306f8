"""Good and bad events through the real broker and the real worker: valid events come out
repartitioned by identity, every bad one is dead-lettered with its bytes, reason and source."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import orjson

from streams.core.journeys.engine import partition_for
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics, read_topics_raw

GOOD = [
    event("page_view", "10:00", "alice"),
    event("product_view", "10:01", "bob"),
    event("add_to_cart", "10:02", "alice"),
    {**event("page_view", "10:03", "x"), "user_id": None, "anonymous_id": "anon-7"},
    event("page_view", "10:03", "dave", propertys={"typo": True}),  # processed; the field named
]
BAD = {
    b'{"event": "page_view", "user_id": ': "invalid_json",
    b'{"event_id": "\xff", "event": "x"}': "invalid_utf8",
    b'"just a string"': "not_an_object",
    b"[]": "empty_batch",
    orjson.dumps({**event("page_view", "10:04"), "timestamp": "tomorrow"}): "invalid_event",
    orjson.dumps({**event("page_view", "10:05"), "user_id": None}): "invalid_event",
    orjson.dumps({**event("page_view", "10:06"), "timestamp": 99999999999999999}): "invalid_event",
    orjson.dumps({**event("page_view", "10:07"), "properties": {"a": "x" * 1_200_000}}): "too_large",
}


async def test_ingest_repartitions_valid_and_dead_letters_invalid(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    batch_line = orjson.dumps([event("share", "10:08", "carol"), {"event": "broken"}])
    lines = [orjson.dumps(e) for e in GOOD] + list(BAD) + [batch_line]
    worker = start_worker()
    assert await produce_lines(settings, lines) == len(lines)

    dead = await read_topics(settings, [settings.topic(settings.topic_deadletter)], expect=len(BAD) + 1)
    repartitioned_topic = settings.topic(settings.topic_events)
    batches = await read_topics_raw(settings, repartitioned_topic)

    by_original = {base64.b64decode(d["original_b64"]): d for d in dead}
    by_digest = {d["original_sha256"]: d for d in dead}
    for original, reason in BAD.items():
        record = by_digest[hashlib.sha256(original).hexdigest()]
        assert record["original_size"] == len(original)
        if record["original_truncated"]:
            assert reason == "too_large" and original.startswith(base64.b64decode(record["original_b64"]))
        else:
            assert by_original[original] is record
        assert record["reason"] == reason, (original[:60], record)
        assert record["source_topic"] == settings.topic("clickstream")
        assert record["source_offset"] is not None and record["source_partition"] is not None
        assert record["detail"]
    batch_reject = [d for d in dead if d["batch_index"] == 1]
    assert len(batch_reject) == 1 and batch_reject[0]["reason"] == "invalid_event"
    assert orjson.loads(base64.b64decode(batch_reject[0]["original_b64"])) == {"event": "broken"}
    assert len(dead) == len(BAD) + 1

    seen: dict[str, int] = {}
    for partition, batch in batches:
        for item in batch.events:
            identity = item.get("user_id") or item["anonymous_id"]
            assert partition == partition_for(identity, settings.partitions)
            seen[item["event_id"]] = partition
        assert batch.source.startswith(settings.topic("clickstream") + "/")
    expected_ids = {e["event_id"] for e in GOOD} | {orjson.loads(batch_line)[0]["event_id"]}
    assert set(seen) == expected_ids
    assert "carry a field the contract does not have, 'propertys'" in worker.log_text()
