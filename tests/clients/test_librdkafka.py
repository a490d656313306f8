"""Clients outside Python's aiokafka against the embedded broker and a real worker: librdkafka
(confluent-kafka from PyPI) producers with each codec, idempotence, keys and headers; a
librdkafka consumer group reading every output topic, each message valid against its JSON Schema
in schemas/ and keyed and headed as the AsyncAPI document says."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import jsonschema
import orjson
import pytest
import yaml

from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event

ROOT = Path(__file__).resolve().parents[2]
CODECS = ("gzip", "snappy", "lz4", "zstd")
SCHEMA_OF = {
    "micro": "output-micro.json",
    "macro": "output-macro.json",
    "dropoff": "output-dropoff.json",
    "stalled": "output-stalled.json",
    "session": "output-session.json",
    "identity": "output-identity.json",
    "alert": "output-alert.json",
    "experiment": "output-experiment.json",
    "deadletter": "output-deadletter.json",
}
MESSAGE_OF = {
    "micro": "MicroConversion",
    "macro": "MacroConversion",
    "dropoff": "Dropoff",
    "stalled": "Stalled",
    "session": "SessionSummary",
    "identity": "IdentityLink",
    "alert": "Alert",
    "experiment": "ExperimentUpdate",
    "deadletter": "DeadLetter",
}


def produce(settings: Settings, codec: str, messages: list[tuple[str, bytes]]) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 20,
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in messages:
        producer.produce(
            settings.topic("clickstream"),
            value=value,
            key=key.encode(),
            headers=[("source", b"librdkafka"), ("codec", codec.encode())],
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0 and failures == []


def consume_all(settings: Settings, topics: list[str], until: Callable[[list[Any]], bool]) -> list[Any]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"{settings.app_id}-librdkafka",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe(topics)
    read: list[Any] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not until(read):
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            read.append(message)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return read


def counted(messages: list[Any], kind: str) -> int:
    return sum(orjson.loads(m.value())["type"] == kind for m in messages)


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "schemas" / "asyncapi.yaml").read_text())
    return loaded


def test_librdkafka_producers_and_a_librdkafka_consumer_group(
    settings: Settings, start_worker: Callable[..., WorkerProcess], asyncapi: dict[str, Any]
) -> None:
    import asyncio

    asyncio.run(ensure_topics(settings))
    start_worker(env={"CONVERSIONS_OUTPUT_COMPRESSION": "lz4"})
    for hour, codec in enumerate(CODECS):
        user, anon = f"{codec}-user", f"{codec}-anon"
        journey = [
            event("product_view", f"1{hour}:00", anonymous_id=anon, user=None),
            event("add_to_cart", f"1{hour}:01", anonymous_id=anon, user=user),  # links the ids
            event("purchase", f"1{hour}:02", user, properties={"value": 10.0 + hour}),
        ]
        messages = [(user, orjson.dumps(item)) for item in journey]
        produce(settings, codec, [*messages, (user, b"{not json")])

    topics = sorted(set(settings.output_topics.values()))
    read = consume_all(
        settings,
        topics,
        until=lambda got: all(counted(got, k) >= len(CODECS) for k in ("macro", "identity", "deadletter")),
    )
    by_type: dict[str, list[Any]] = {}
    messages_doc = asyncapi["components"]["messages"]
    for message in read:
        output = orjson.loads(message.value())
        kind = output["type"]
        by_type.setdefault(kind, []).append(output)
        schema = orjson.loads((ROOT / "schemas" / SCHEMA_OF[kind]).read_bytes())
        jsonschema.validate(output, schema)
        assert message.topic() == settings.output_topics[kind]
        documented = messages_doc[MESSAGE_OF[kind]]
        key = message.key()
        if "key" in documented["bindings"]["kafka"] and kind not in ("experiment",):
            assert key == (output.get("user_id") or output.get("anonymous_id")).encode()
        elif kind == "experiment":
            assert key == output["experiment"].encode()
        else:
            assert key is None
        allowed = set(documented.get("headers", {}).get("properties", {}))
        for name, value in message.headers() or []:
            assert name in allowed, (kind, name)
            assert value.decode().isdigit()
    assert sorted(m["user_id"] for m in by_type["macro"]) == sorted(f"{c}-user" for c in CODECS)
    assert sorted(m["value"] for m in by_type["macro"]) == [10.0, 11.0, 12.0, 13.0]
    assert {(m["anonymous_id"], m["user_id"]) for m in by_type["identity"]} >= {
        (f"{c}-anon", f"{c}-user") for c in CODECS
    }
    assert len(by_type["deadletter"]) == len(CODECS)
    assert all(d["reason"] == "invalid_json" for d in by_type["deadletter"])
