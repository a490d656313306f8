"""Every setting of the worker in one frozen, typed model, read from the environment and CLI flags.

Kafka and Redis use their conventional names (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SASL_USERNAME`,
`REDIS_URL`, ...); everything else is `CONVERSIONS_<FIELD>`. An unknown `CONVERSIONS_*`
variable or an invalid value stops the worker at start with the variable's name and the reason.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from streams.core.input.formats.detect import InputFormat, InputFormatError, format_for, parse_input_formats
from streams.errors import ConversionsError
from streams.examples import FUNNELS

ENV_PREFIX = "CONVERSIONS_"
DEFAULT_FUNNELS = FUNNELS  # inside the package: found by an installed wheel too


def _env(name: str, default: Any = None) -> Any:
    return Field(default=default, validation_alias=AliasChoices(name, f"{ENV_PREFIX}{name}"))


class SettingsError(ConversionsError, ValueError):
    """Settings that cannot be used; the message names each variable and what is wrong."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, populate_by_name=True
    )

    # Kafka: None means "start the embedded local broker" (demo, tests)
    kafka_bootstrap_servers: str | None = _env("KAFKA_BOOTSTRAP_SERVERS")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _env(
        "KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = _env("KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = _env("KAFKA_SASL_PASSWORD")
    kafka_ssl_cafile: Path | None = _env("KAFKA_SSL_CAFILE")
    kafka_ssl_certfile: Path | None = _env("KAFKA_SSL_CERTFILE")
    kafka_ssl_keyfile: Path | None = _env("KAFKA_SSL_KEYFILE")

    # Redis: None means "start the embedded local redis-server"
    redis_url: SecretStr | None = _env("REDIS_URL")

    app_id: str = Field(default="conversions", pattern=r"^[A-Za-z0-9._-]+$")
    funnels: Path = DEFAULT_FUNNELS
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    topic_clickstream: Annotated[list[str], NoDecode] = ["clickstream"]
    topic_events: str = "clickstream.events"
    topic_micro: str = "conversions.micro"
    topic_macro: str = "conversions.macro"
    topic_dropoffs: str = "funnel.dropoffs"
    topic_alerts: str = "funnel.alerts"
    topic_sessions: str = "journeys.sessions"
    topic_identities: str = "journeys.identities"
    topic_experiments: str = "conversions.experiments"
    topic_deadletter: str = "clickstream.deadletter"
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=10)
    create_topics: bool = True

    max_message_bytes: int = Field(default=1_000_000, ge=1_024)
    output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    """Codec of the record batches the engine writes (outputs, repartitioned events, changelog).
    Every codec is read whatever this says; `make bench` measures each (bench/README)."""
    max_batch_events: int = Field(default=10_000, ge=1)
    # events stamped further than this ahead of the wall clock are dead-lettered
    max_future_skew_s: int = Field(default=3_600, ge=0)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    rebalance_timeout_s: float = Field(default=60.0, gt=0)
    session_timeout_s: float = Field(default=60.0, gt=0)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    commit_interval_s: float = Field(default=2.0, gt=0)
    commit_every: int = Field(default=10_000, ge=1)
    """Also commit after this many messages, whatever the interval."""
    max_poll_records: int | None = Field(default=None, ge=1)
    agent_batch_messages: int = Field(default=1_000, ge=1)
    """The agents take up to this many messages at a time: decoded, applied and written as one run."""
    agent_batch_window_s: float = Field(default=0.05, gt=0, le=5)
    """...waiting at most this long for them (latency added per hop when traffic is light)."""
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=60_000)
    """How long a fetch may wait on the broker for data. Some brokers (Tansu) answer an empty
    fetch only at this deadline, however soon data arrives, which adds up to it to every hop."""
    counters_enabled: bool = True
    counters_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    """Consumer group of the counters (default `<app_id>-counters`); a new one re-reads every
    output, which the applied offsets kept in Redis then skip."""
    counter_bucket_s: int = Field(default=60, ge=1, le=86_400)
    counter_ttl_s: int = Field(default=8 * 86_400, ge=60)
    counter_dedupe_s: int = Field(default=3_600, ge=60)
    counter_batch_size: int = Field(default=2_000, ge=1)
    counter_batch_window_s: float = Field(default=0.25, gt=0)
    """The counters apply up to `counter_batch_size` outputs at a time, or what came within this
    many seconds of a batch's first output: one Redis call per shard and one offset commit for
    all of them (the counters lag the outputs by up to this)."""
    alert_webhook_url: SecretStr | None = None
    """Alerts are also POSTed here as JSON (by the leader); the URL may hold a token."""
    # with a key, counters see HMAC-SHA256(key, identity) instead of user and anonymous ids
    pseudonymize_key: SecretStr | None = None
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0)
    watermark_interval_s: float = Field(default=1.0, gt=0)
    source_idle_s: float = Field(default=10.0, gt=0)
    watermark_refresh_s: float = Field(default=10.0, gt=0)
    table_store: str = "memory://"
    table_standby_replicas: int = Field(default=0, ge=0)
    data_dir: Path = Path("var/conversions")

    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_token: SecretStr | None = None
    """When set, every request to the web server needs it: `Authorization: Bearer <token>`, or
    the cookie that signing in at /login sets. For a dashboard exposed beyond loopback."""
    metrics_token: SecretStr | None = None
    """/metrics needs this bearer token instead of the web token (what Prometheus is given)."""
    metrics_public: bool = False
    """/metrics answers without any token, even with CONVERSIONS_WEB_TOKEN set."""

    input_format: str = "auto"
    """How the clickstream topics are read: `auto` (each message's format detected), `contract`,
    `segment`, `snowplow`, or per topic: `clickstream=segment,snowplow-enriched=snowplow`."""
    # the Segment-compatible collector (streams/collector), off unless asked for
    collector_enabled: bool = False
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=6067, ge=0, le=65535)
    collector_write_keys: Annotated[list[SecretStr], NoDecode] = []
    """Accepted write keys, comma separated; none accepts any request (loopback only)."""
    collector_allowed_origins: Annotated[list[str], NoDecode] = ["*"]
    """Browser origins allowed to post (CORS), comma separated; `*` allows any."""
    collector_topic: str | None = None
    """The clickstream topic the collector produces to (default: the first one)."""
    collector_send_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long a request waits for the broker's acknowledgement before answering 503."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("topic_clickstream", "collector_write_keys", "collector_allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("web_token", "metrics_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a token needs at least 16 characters (e.g. `openssl rand -hex 16`)")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL"):
            if self.kafka_sasl_mechanism is None:
                raise ValueError("KAFKA_SASL_MECHANISM is required with a SASL security protocol")
            if not self.kafka_sasl_username or self.kafka_sasl_password is None:
                raise ValueError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required for SASL")
        if not self.topic_clickstream:
            raise ValueError("at least one clickstream topic is needed")
        return self

    @model_validator(mode="after")
    def _inputs_are_usable(self) -> Settings:
        try:
            formats = parse_input_formats(self.input_format, self.topic_clickstream)
        except InputFormatError as exc:
            raise ValueError(f"CONVERSIONS_INPUT_FORMAT: {exc}") from None
        topic = self.collector_topic
        if topic is not None and topic not in self.topic_clickstream:
            raise ValueError(
                f"CONVERSIONS_COLLECTOR_TOPIC: {topic!r} is not a clickstream topic "
                f"({', '.join(self.topic_clickstream)}): the worker would never read what it collects"
            )
        if self.collector_enabled:
            declared = format_for(formats, topic or self.topic_clickstream[0])
            if declared not in ("auto", "segment"):
                raise ValueError(
                    f"CONVERSIONS_INPUT_FORMAT: the collector produces Segment messages to "
                    f"{topic or self.topic_clickstream[0]!r}, which is declared {declared!r}; "
                    "declare it segment or auto"
                )
            if not self.collector_write_keys and not _is_loopback(self.collector_host):
                raise ValueError(
                    f"CONVERSIONS_COLLECTOR_WRITE_KEYS: the collector listens on "
                    f"{self.collector_host!r}, beyond loopback, so it needs write keys "
                    "(comma separated), or CONVERSIONS_COLLECTOR_HOST=127.0.0.1"
                )
        return self

    def latest_accepted_ms(self) -> int:
        """The latest event time accepted now (epoch ms): `max_future_skew_s` past the clock."""
        return int((time.time() + self.max_future_skew_s) * 1000)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def output_topics(self) -> dict[str, str]:
        """Output type -> full topic name."""
        return {
            "micro": self.topic(self.topic_micro),
            "macro": self.topic(self.topic_macro),
            "dropoff": self.topic(self.topic_dropoffs),
            "stalled": self.topic(self.topic_dropoffs),
            "alert": self.topic(self.topic_alerts),
            "experiment": self.topic(self.topic_experiments),
            "session": self.topic(self.topic_sessions),
            "identity": self.topic(self.topic_identities),
            "deadletter": self.topic(self.topic_deadletter),
        }

    @property
    def input_formats(self) -> dict[str | None, InputFormat]:
        """CONVERSIONS_INPUT_FORMAT by full topic name (prefixed); the None key is the default."""
        parsed = parse_input_formats(self.input_format, self.topic_clickstream)
        return {name if name is None else self.topic(name): fmt for name, fmt in parsed.items()}

    @property
    def collector_target(self) -> str:
        """The full name of the topic the collector produces to."""
        return self.topic(self.collector_topic or self.topic_clickstream[0])

    @property
    def redis_dsn(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url is not None else None

    def compression_type(self) -> str | None:
        """The producers' `compression_type` (aiokafka's spelling: None for no codec)."""
        return None if self.output_compression == "none" else self.output_compression

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile:
            context.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            )
        return context

    def redacted(self) -> dict[str, Any]:
        """Settings fit for a log line: secrets masked, credentials in URLs removed."""
        data = self.model_dump(mode="json")
        secrets = ("kafka_sasl_password", "redis_url", "alert_webhook_url", "pseudonymize_key")
        for key in (*secrets, "web_token", "metrics_token"):
            if data.get(key):
                data[key] = "**********"
        data["collector_write_keys"] = ["**********"] * len(self.collector_write_keys)
        return data


def _is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); a name or 0.0.0.0 is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    problems = []
    for variable in sorted(environ):
        if variable.startswith(ENV_PREFIX) and variable not in known:
            close = difflib.get_close_matches(variable, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{variable}: unknown setting{hint}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, then explicit overrides (CLI flags), or a SettingsError."""
    problems = _unknown_variables(os.environ)
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
    except SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
