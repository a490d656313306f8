"""Ingest reads the clickstream `read_committed`: a transactional producer's aborted records
(Kafka Connect, Flink, Kafka Streams sinks with exactly-once) never reach the engine.

The embedded broker has no transactions, so the fetch path is fed fabricated record batches as
a broker returns them (a committed transaction, an aborted one with its control marker and the
fetch response's aborted-transactions list) through the consumer ingest builds and aiokafka's
own loop, and what comes out goes into `Ingest.repartition`. Through the embedded broker, which
reports its end offsets its own way, `read_committed` still reads every partition to its end.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher

from streams.kafka import ensure_topics
from streams.kafka.clients import new_producer
from streams.kafka.undecodable import GuardedConsumer, _GuardingResults, undecodable
from streams.metrics import Metrics
from streams.pipeline.ingest import Ingest
from streams.pipeline.ingest_consumer import IngestConsumer, SourceMessage
from streams.settings import Settings
from tests.helpers import event
from tests.kafka.batches import ABORT, COMMIT, control_batch, record_batch


def ingest_consumer(settings: Settings) -> Any:
    async def nothing() -> None:
        return None

    ingest = Ingest(settings, Metrics(), None, None, assignment=set)  # type: ignore[arg-type]
    return IngestConsumer(settings, ingest, nothing, None)._new_consumer()  # type: ignore[arg-type]


def clicks(user: str, count: int) -> list[bytes]:
    return [orjson.dumps(event("product_view", f"10:0{i}", user)) for i in range(count)]


async def test_aborted_transactions_never_reach_the_engine() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", max_future_skew_s=10**9)
    consumer = ingest_consumer(settings)
    isolation = consumer._isolation_level
    await consumer.stop()  # never started: what it would read with is all it is here for
    assert isinstance(consumer, GuardedConsumer) and isolation == "read_committed"
    committed_pid, aborted_pid = 11, 12
    # offsets: 0-1 plain, 2-3 committed txn, 4-6 aborted txn (interleaved), 7 commit, 8 abort, 9-10 plain
    fetched = (
        record_batch(clicks("plain", 2))
        + record_batch(clicks("committed", 2), base_offset=2, producer_id=committed_pid, transactional=True)
        + record_batch(clicks("aborted", 3), base_offset=4, producer_id=aborted_pid, transactional=True)
        + control_batch(COMMIT, committed_pid, 7)
        + control_batch(ABORT, aborted_pid, 8)
        + record_batch(clicks("after", 2), base_offset=9)
    )
    tp = TopicPartition("clickstream", 0)
    records = fetcher.PartitionRecords(
        tp,
        fetcher.MemoryRecords(fetched),
        [(aborted_pid, 4)],  # the fetch response's aborted transactions: producer, first offset
        0,
        None,
        None,
        True,
        fetcher.READ_COMMITTED if isolation == "read_committed" else fetcher.READ_UNCOMMITTED,
    )
    _GuardingResults()[tp] = fetcher.FetchResult(tp, partition_records=records, assignment=None, backoff=0)
    read = list(records)
    assert all(undecodable(r) is None for r in read)
    assert [r.offset for r in read] == [0, 1, 2, 3, 9, 10] and records.next_fetch_offset == 11

    sent: list[dict[str, Any]] = []

    async def send(_: int, batch: Any) -> None:
        sent.extend(batch.events)

    async def dead_letter(rejects: Any, _: Any) -> None:
        raise AssertionError(f"nothing is rejected here: {list(rejects)}")

    engine_input = Ingest(settings, Metrics(), send, dead_letter, assignment=set)
    await engine_input.repartition(
        [SourceMessage(r.topic, r.partition, r.offset, r.value, None) for r in read]
    )
    assert sorted({e["user_id"] for e in sent}) == ["after", "committed", "plain"]
    assert len(sent) == 6


async def test_read_committed_reads_every_partition_to_its_end_on_the_embedded_broker(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    topic = settings.topic("clickstream")
    producer = new_producer(settings, linger_ms=20)
    await producer.start()
    try:
        for partition in range(settings.partitions):
            for value in clicks(f"user-{partition}", 5 + partition):
                await producer.send(topic, value, partition=partition)
        await producer.flush()
        await producer.send_and_wait(topic, clicks("last", 1)[0], partition=0)
    finally:
        await producer.stop()
    expected = {p: 5 + p + (1 if p == 0 else 0) for p in range(settings.partitions)}

    consumer = ingest_consumer(settings)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read: dict[int, int] = dict.fromkeys(range(settings.partitions), 0)
        for _ in range(50):
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                read[tp.partition] += len(messages)
            if read == expected:
                break
        assert read == expected
        # Tansu reports a partition's end (its last stable offset too) as the start of its last
        # batch plus one (partition 0's is one record sent alone, the others' are batched
        # together), so the fetch reads past what it reports, all the same.
        ends = {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
        assert ends[0] == expected[0] and all(1 <= ends[p] <= expected[p] for p in ends)
        assert any(ends[p] < expected[p] for p in ends)
        assert {tp.partition: await consumer.position(tp) for tp in partitions} == expected
    finally:
        await consumer.stop()
