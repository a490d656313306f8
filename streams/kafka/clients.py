"""The aiokafka clients of the project: connection options (bootstrap, TLS, SASL) in one place."""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


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
