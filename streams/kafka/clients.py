"""The aiokafka clients of the project, built in one place: connection options (bootstrap, TLS,
SASL), the consumer, producer and admin client, and one start that waits out a broker that is
not up yet.

Faust builds the pipeline's own clients (`pipeline.transport` sets what it cannot); every other
client the worker, the tools and the tests use comes from here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.settings import Settings

log = logging.getLogger(__name__)

RETRY_S = 2.0


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka connection options (bootstrap, TLS, SASL) shared by every client we make."""
    assert settings.kafka_bootstrap_servers, "no KAFKA_BOOTSTRAP_SERVERS"
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = settings.ssl_context()
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    """`kafka_client_options` and what every consumer we make shares."""
    return {**kafka_client_options(settings), "fetch_max_wait_ms": settings.fetch_max_wait_ms}


def new_consumer(
    settings: Settings, *topics: str, cls: type[AIOKafkaConsumer] = AIOKafkaConsumer, **options: Any
) -> AIOKafkaConsumer:
    """A consumer with the shared options (`options` win over them); without a `group_id` it
    reads assigned partitions and commits nothing (`enable_auto_commit` defaults to false here).
    The project's own consumers are `cls=kafka.undecodable.GuardedConsumer`, which skip a batch
    they cannot decode."""
    options.setdefault("enable_auto_commit", False)
    options.setdefault("group_id", None)
    return cls(*topics, **(consumer_options(settings) | options))


def new_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer with the shared options; requests may carry the largest accepted message."""
    options.setdefault("linger_ms", 5)
    options.setdefault("max_request_size", max(settings.max_message_bytes * 2, 1_048_576))
    options.setdefault("compression_type", settings.compression_type())
    return AIOKafkaProducer(**kafka_client_options(settings), **options)


def new_admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    options.setdefault("request_timeout_ms", 10_000)
    return AIOKafkaAdminClient(**kafka_client_options(settings), **options)


class Startable(Protocol):
    async def start(self) -> None: ...


async def start_with_retry(client: Startable, what: str, stopping: Callable[[], bool]) -> bool:
    """Start a client, retrying every `RETRY_S` with a warning while the broker cannot be
    reached (no crash loop); False if `stopping` said stop first."""
    while not stopping():
        try:
            await client.start()
            return True
        except KafkaError as exc:
            log.warning(
                "%s: Kafka not reachable yet (%s); retrying in %.0f s", what, exc.__class__.__name__, RETRY_S
            )
            await asyncio.sleep(RETRY_S)
    return False
