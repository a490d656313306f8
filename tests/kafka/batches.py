"""Record batches made byte by byte, as a producer (or a damaged one) puts them on the wire, and
a produce request that hands them to the broker as they are (Tansu stores batches as sent)."""

from __future__ import annotations

import struct

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.util import calc_crc32c

from streams.kafka import kafka_client_options
from streams.settings import Settings

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
CONTROL = 0x20
ABORT, COMMIT = 0, 1


def record_batch(
    values: list[bytes],
    codec: str = "none",
    *,
    base_offset: int = 0,
    producer_id: int = -1,
    transactional: bool = False,
    timestamp_ms: int = 1_773_400_000_000,
) -> bytes:
    """A v2 record batch of these values, compressed with `codec` (aiokafka's own builder: it
    needs the codec's library, which the reader may lack)."""
    builder = _DefaultRecordBatchBuilderPy(
        2,
        CODEC_IDS[codec],
        int(transactional),
        producer_id,
        0 if producer_id >= 0 else -1,
        0 if producer_id >= 0 else -1,
        1 << 24,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=timestamp_ms + i, key=None, value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    return bytes(data)


def control_batch(marker: int, producer_id: int, base_offset: int) -> bytes:
    """The marker a transaction coordinator writes when a transaction commits or aborts."""
    builder = _DefaultRecordBatchBuilderPy(2, 0, 1, producer_id, 0, -1, 1 << 20)
    builder.append(0, timestamp=1_773_400_000_000, key=struct.pack(">hh", 0, marker), value=b"", headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)
    data[22] |= CONTROL  # the low byte of the attributes
    return with_crc(data)


def with_crc(data: bytearray) -> bytes:
    """The batch with its CRC computed again (after an edit)."""
    struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def bad_crc(batch: bytes) -> bytes:
    damaged = bytearray(batch)
    damaged[-1] ^= 0xFF
    return bytes(damaged)


async def produce_raw(settings: Settings, topic: str, partition: int, *batches: bytes) -> None:
    """Hand each batch to the partition's leader as it is, no client re-encoding it."""
    producer = AIOKafkaProducer(**kafka_client_options(settings))
    await producer.start()
    try:
        await producer.client.force_metadata_update()
        node = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        for batch in batches:
            response = await producer.client.send(
                node, ProduceRequest(None, 1, 10_000, [(topic, [(partition, batch)])])
            )
            errors = [p[1] for _, partitions in response.topics for p in partitions]
            assert errors == [0], f"the broker refused the batch: {response}"
    finally:
        await producer.stop()
