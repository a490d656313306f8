"""Whole record batches on the real broker: many records past one batch's size arrive complete, in
the order appended per partition, with their keys and headers, and the delivery callback hears of
each batch's last offset (what the journeys store notes as written)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from streams.kafka import ensure_topics
from streams.kafka.clients import new_consumer, new_producer
from streams.pipeline.record_batches import RecordBatches
from streams.settings import Settings


async def test_records_past_one_batch_arrive_in_order_with_keys_and_headers(settings: Settings) -> None:
    await ensure_topics(settings)
    topic = settings.topic(settings.topic_micro)
    producer = new_producer(settings, max_batch_size=16_384)
    await producer.start()
    delivered: list[tuple[str, int, int]] = []
    try:
        batches = RecordBatches(producer)
        for i in range(300):  # about 1 KB each: some twenty batches per partition
            partition = i % 2
            header = [("n", str(i).encode())] if i % 50 == 0 else None
            batches.append(topic, partition, f"k{i}".encode(), b"x" * 1_000 + str(i).encode(), header)
        batches.append(topic, 1, None, b"last")  # no key
        await batches.send_all(lambda t, p, last: delivered.append((t, p, last)))
        await producer.flush()
        await asyncio.sleep(0)  # the delivery callbacks run on the loop
    finally:
        await producer.stop()

    consumer = new_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[int, list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]] = {0: [], 1: []}
        while sum(map(len, records.values())) < 301:
            for tp, messages in (await consumer.getmany(timeout_ms=2_000)).items():
                records[tp.partition] += [(m.key, m.value or b"", tuple(m.headers)) for m in messages]
    finally:
        await consumer.stop()

    expected = {p: [i for i in range(300) if i % 2 == p] for p in (0, 1)}
    for partition, indices in expected.items():
        got = records[partition][: len(indices)]
        assert [key for key, _, _ in got] == [f"k{i}".encode() for i in indices]
        assert [value[1_000:] for _, value, _ in got] == [str(i).encode() for i in indices]
        assert [h for _, _, h in got] == [((("n", str(i).encode()),) if i % 50 == 0 else ()) for i in indices]
    assert records[1][-1] == (None, b"last", ())
    assert len(delivered) > 10, "records of 1 KB past a 16 KB batch make several batches"
    last_offsets = {p: max(last for _, q, last in delivered if q == p) for p in (0, 1)}
    assert last_offsets == {0: 149, 1: 150}
