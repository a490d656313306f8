"""The hand-off of `deploy --history` checks its seam again just before it commits it (issue 26):
the offline run may last hours, and retention may delete records after the seam meanwhile; the
ingest group (auto_offset_reset "earliest") would then skip them without a word. (Tansu answers no
DeleteRecords: the test makes the seam stop meeting the clickstream by recreating its topic.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import TopicPartition

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.generations.history import HistoryError, discard, hand_over, run_history
from streams.generations.naming import generation_settings, ingest_group
from streams.kafka import ensure_topics
from streams.kafka.clients import new_admin, new_consumer
from streams.kafka.retention import retained_range
from streams.settings import Settings
from tests.helpers import event
from tests.pipeline.test_config_change import send

CONFIG = """
version: 1
funnels:
  - name: checkout
    window: 1h
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
"""


async def test_a_seam_that_no_longer_meets_the_clickstream_is_refused_and_nothing_committed(
    settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(settings)
    await send(settings, [event("product_view", "10:00", f"u{i}") for i in range(6)])
    retained = await retained_range(settings)
    offsets = {name: end for name, (_, end) in retained.offsets.items()}  # all of it archived
    filled = {name: end for name, end in offsets.items() if end > 0}
    archive = tmp_path / "archive.ndjson"
    archive.write_bytes(b"")
    history = run_history(settings, compile_config(parse_config(CONFIG)), [archive], tmp_path)
    # the offline run lasted; meanwhile the seam stopped meeting what Kafka keeps. Tansu answers
    # no DeleteRecords (what retention does): the clickstream topic is recreated empty instead
    admin = new_admin(settings)
    await admin.start()
    try:
        await admin.delete_topics([settings.topic("clickstream")])
    finally:
        await admin.close()
    await ensure_topics(settings)
    new = generation_settings(settings, 1)
    said: list[str] = []
    try:
        with pytest.raises(HistoryError, match="no longer meet what Kafka keeps") as refused:
            await hand_over(new, history, offsets, said.append)
    finally:
        discard(history)
    for name, end in filled.items():
        assert f"{name}: offset {end} is past the partition's end (0)" in str(refused.value)
    consumer = new_consumer(new, group_id=ingest_group(new))
    await consumer.start()
    try:
        assert [await consumer.committed(TopicPartition(*_split(name))) for name in offsets] == [None] * len(
            offsets
        )
    finally:
        await consumer.stop()


def _split(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition("/")
    return topic, int(partition)
