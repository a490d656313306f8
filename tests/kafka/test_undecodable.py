"""A record batch the client cannot decode never stops a consumer: it is skipped, dead-lettered
with its raw bytes, reason and offset range, and counted.

At the decoding seam, fetched bytes go through aiokafka's own fetch loop (`PartitionRecords`,
stored the way `Fetcher` stores a fetch): a codec whose library is made unimportable, a CRC
mismatch, a batch garbled inside, a length no batch can have. Through the real broker, which
stores batches as sent, a worker whose environment lacks the codec library (cramjam shadowed by
a module that fails to import) reads damaged and compressed batches between good events.
The first test pins what `streams.kafka.undecodable` relies on in aiokafka.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.codec
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher

from streams.kafka import ensure_topics
from streams.kafka.clients import new_consumer
from streams.kafka.undecodable import (
    RawRecords,
    SkippedBatches,
    _GuardingResults,
    dead_letter_of,
    undecodable,
)
from streams.metrics import Metrics
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics
from tests.kafka.batches import bad_crc, produce_raw, record_batch, with_crc

TP = TopicPartition("clickstream", 0)


def fetched(data: bytes, fetch_offset: int = 0, **options: Any) -> list[Any]:
    """What `getmany` hands over of one partition's fetched bytes, through aiokafka's loop."""
    records = fetcher.PartitionRecords(
        TP,
        fetcher.MemoryRecords(data),
        options.get("aborted"),
        fetch_offset,
        None,
        None,
        True,
        options.get("isolation", fetcher.READ_UNCOMMITTED),
    )
    results = _GuardingResults()
    results[TP] = fetcher.FetchResult(TP, partition_records=records, assignment=None, backoff=0)
    return list(records)


def test_the_aiokafka_internals_relied_on_are_as_expected() -> None:
    """Fails on an aiokafka upgrade that changes what the guard hooks into (pyproject pins the
    version; read streams/kafka/undecodable.py's docstring before moving the pin)."""
    assert aiokafka.__version__ == "0.14.0"
    assert fetcher.MemoryRecords is RawRecords
    fetch_source = inspect.getsource(fetcher.Fetcher._proc_fetch_request)
    assert "records = MemoryRecords(part_data[-1])" in fetch_source
    assert "self._records[tp] = FetchResult(" in fetch_source
    assert "self._records = collections.OrderedDict()" in inspect.getsource(fetcher.Fetcher.__init__)
    unpack = inspect.getsource(fetcher.PartitionRecords._unpack_records)
    assert "records = self._records" in unpack and "next_batch.next_offset" in unpack
    assert "record.checksum" in inspect.getsource(fetcher.PartitionRecords._consumer_record)
    assert "self._fetcher = Fetcher(" in inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    # and the loop reads through the guard: good records around a damaged batch, in order
    records = fetched(record_batch([b"a"]) + bad_crc(record_batch([b"b"], base_offset=1)))
    assert [r.value for r in records if undecodable(r) is None] == [b"a"]


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_batch_whose_codec_library_is_missing_is_skipped_whole(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compressed = record_batch([b"x" * 200, b"y", b"z"], codec, base_offset=1)
    batches = record_batch([b"before"]) + compressed + record_batch([b"after"], base_offset=4)
    monkeypatch.setattr(aiokafka.codec, "cramjam", None)  # as if it were not installed
    records = fetched(batches)
    assert [(r.offset, r.value) for r in records if undecodable(r) is None] == [(0, b"before"), (4, b"after")]
    skipped = [undecodable(r) for r in records if undecodable(r) is not None]
    assert len(skipped) == 1 and skipped[0] is not None
    bad = skipped[0]
    assert (bad.reason, bad.codec, bad.first_offset, bad.last_offset) == ("unsupported_codec", codec, 1, 3)
    assert bad.raw == compressed
    assert f"Libraries for {codec}" in bad.detail and "cramjam" in bad.advice()
    letter = dead_letter_of("clickstream", 0, bad)
    assert (letter.reason, letter.source_offset, letter.source_offset_last) == ("unsupported_codec", 1, 3)
    assert letter.original_size == len(bad.raw) and letter.source_topic == "clickstream"


def test_crc_mismatch_garbage_and_an_impossible_length_are_skipped() -> None:
    garbled = bytearray(record_batch([b"v" * 50, b"w"], base_offset=1))
    garbled[61:] = b"\xff" * (len(garbled) - 61)  # the records, not the header
    impossible = struct.pack(">qi", 5, 3) + b"\x02\x00\x00"
    data = (
        record_batch([b"a"])
        + with_crc(garbled)  # a valid CRC over garbage: the decoder itself fails
        + bad_crc(record_batch([b"c"], base_offset=3))
        + record_batch([b"d"], base_offset=4)
        + impossible
        + record_batch([b"never framed"], base_offset=6)
    )
    records = fetched(data)
    seen = [
        (r.offset, r.value) if undecodable(r) is None else (r.offset, undecodable(r).reason) for r in records
    ]  # type: ignore[union-attr]
    assert seen == [(0, b"a"), (1, "corrupt_batch"), (3, "crc_mismatch"), (4, b"d"), (5, "corrupt_batch")]


def test_a_fetch_starting_inside_a_batch_reports_from_its_position() -> None:
    records = fetched(bad_crc(record_batch([b"a", b"b", b"c"], base_offset=10)), fetch_offset=11)
    bad = undecodable(records[0])
    assert bad is not None and (bad.first_offset, bad.last_offset) == (11, 12)


def shadowed_cramjam(tmp_path: Path) -> dict[str, str]:
    """A worker environment in which `import cramjam` fails, as where it is not installed."""
    shadow = tmp_path / "no-cramjam"
    shadow.mkdir()
    (shadow / "cramjam.py").write_text('raise ImportError("cramjam is not installed here")\n')
    return {"PYTHONPATH": str(shadow)}


async def test_a_worker_without_the_codec_library_dead_letters_those_batches_and_reads_on(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    await ensure_topics(settings)
    topic = settings.topic("clickstream")

    def journey(user: str, minute: int) -> list[bytes]:
        return [
            orjson.dumps(event("product_view", f"1{minute}:00", user)),
            orjson.dumps(event("add_to_cart", f"1{minute}:01", user)),
            orjson.dumps(event("purchase", f"1{minute}:02", user, properties={"value": 5.0})),
        ]

    # offsets: 0-2 plain, 3-5 gzip, 6-8 snappy, 9-11 lz4, 12-14 zstd, 15-17 a bad CRC, 18-20 plain
    codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
    batches = [record_batch(journey(f"{codec}-user", n), codec) for n, codec in enumerate(codecs)]
    batches.append(bad_crc(record_batch(journey("damaged-user", 5))))
    batches.append(record_batch(journey("last-user", 6)))
    await produce_raw(settings, topic, 0, *batches)
    worker = start_worker(env=shadowed_cramjam(tmp_path))

    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=3, quiet_s=1)
    assert {m["user_id"] for m in macros} == {"none-user", "gzip-user", "last-user"}
    letters = await read_topics(settings, [settings.topic(settings.topic_deadletter)], expect=4, quiet_s=1)
    ranges = sorted((d["source_offset"], d["source_offset_last"], d["reason"]) for d in letters)
    assert ranges == [
        (6, 8, "unsupported_codec"),
        (9, 11, "unsupported_codec"),
        (12, 14, "unsupported_codec"),
        (15, 17, "crc_mismatch"),
    ]
    assert all(d["source_topic"] == topic and d["source_partition"] == 0 for d in letters)
    assert "To do: install the lz4 codec library" in worker.log_text()
    # skipped and committed: a restarted worker does not meet them again
    assert await committed(settings, f"{settings.app_id}-ingest", TopicPartition(topic, 0)) == 21


async def committed(settings: Settings, group: str, tp: TopicPartition) -> int | None:
    consumer = new_consumer(settings, group_id=group)
    await consumer.start()
    try:
        for _ in range(100):
            offset = await consumer.committed(tp)
            if offset == 21:
                break
            await asyncio.sleep(0.1)
        return offset  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


async def test_a_skipped_batch_is_counted_by_reason_and_published() -> None:
    published: list[Any] = []

    class Collect:
        async def publish(self, outputs: Any, partition: int | None = None) -> None:
            published.extend(outputs)

    metrics = Metrics()
    bad = undecodable(fetched(bad_crc(record_batch([b"a", b"b"], base_offset=7)))[0])
    assert bad is not None
    await SkippedBatches("ingest", metrics, Collect()).report("clickstream", 2, bad)
    assert (
        metrics.registry.get_sample_value("conversions_dead_letters_total", {"reason": "crc_mismatch"}) == 1
    )
    assert [(d.reason, d.source_partition, d.source_offset, d.source_offset_last) for d in published] == [
        ("crc_mismatch", 2, 7, 8)
    ]
