"""Every Kafka compression codec, in and out, through the real broker and a worker process.

A producer's lz4 batch (a common default of collectors' Kafka sinks) used to stop ingest with
`UnsupportedCodecError`, and a restarted worker stopped again on the same batch. aiokafka reads
snappy, lz4 and zstd with `cramjam`, a dependency now. The worker here also writes its own
batches compressed (`CONVERSIONS_OUTPUT_COMPRESSION`), which every consumer of the project reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka import ensure_topics, kafka_client_options
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics

CODECS = ("gzip", "snappy", "lz4", "zstd")


async def _send_compressed(settings: Settings, codec: str, events: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings), compression_type=codec, linger_ms=50)
    await producer.start()
    try:
        sent = [
            await producer.send(settings.topic("clickstream"), orjson.dumps(item), partition=0)
            for item in events
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def test_cramjam_gives_aiokafka_every_codec() -> None:
    from aiokafka.codec import has_lz4, has_snappy, has_zstd

    assert has_snappy() and has_lz4() and has_zstd()


@pytest.mark.parametrize("output_codec", ["zstd"])
async def test_batches_of_every_codec_are_read_and_outputs_written_compressed(
    settings: Settings, start_worker: Callable[..., WorkerProcess], output_codec: str
) -> None:
    await ensure_topics(settings)
    start_worker(env={"CONVERSIONS_OUTPUT_COMPRESSION": output_codec})
    for number, codec in enumerate(CODECS):
        user = f"{codec}-user"
        journey = [
            event("product_view", f"10:{number}0", user),
            event("add_to_cart", f"10:{number}1", user),
            event("purchase", f"10:{number}2", user, properties={"value": 10.0 + number}),
        ]
        await _send_compressed(settings, codec, journey)

    outputs = await read_topics(
        settings, [settings.topic(settings.topic_macro)], expect=len(CODECS), quiet_s=1
    )
    assert {item["user_id"] for item in outputs if item["type"] == "macro"} == {f"{c}-user" for c in CODECS}
