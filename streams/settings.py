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
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from streams.core.input.audience import EnrichmentSpec
from streams.core.input.event import MAX_NESTING
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
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        # each field's docstring is its description: docs/reference/settings.md is generated from them
        # (streams/tools/docs_reference.py reads them from this source; pydantic's
        # `use_attribute_docstrings` would parse it at every start)
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The arguments, then the environment. No `.env` file and no secrets directory is
        configured: those two sources, always empty, still went through every field at each
        `Settings()`, as long again as the environment (12 M instructions; bench/README.md,
        issue 30, session 7). pydantic-settings' `_env_file` and `_secrets_dir` arguments are
        ignored."""
        return init_settings, env_settings

    # Kafka: None means "start the embedded local broker" (demo, tests)
    kafka_bootstrap_servers: str | None = _env("KAFKA_BOOTSTRAP_SERVERS")
    """The brokers, `host:port[,host:port]`. Unset: the demo and the tests start a local broker
    (Tansu); the worker refuses to start."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"
    )
    """How every Kafka client connects: TLS (`SSL`, `SASL_SSL`) and SASL authentication."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _env(
        "KAFKA_SASL_MECHANISM"
    )
    """The SASL mechanism; required with a SASL security protocol."""
    kafka_sasl_username: str | None = _env("KAFKA_SASL_USERNAME")
    """The SASL user; required with a SASL security protocol."""
    kafka_sasl_password: SecretStr | None = _env("KAFKA_SASL_PASSWORD")
    """The SASL password (masked in logs)."""
    kafka_ssl_cafile: Path | None = _env("KAFKA_SSL_CAFILE")
    """CA bundle that signs the brokers' certificates (default: the system's)."""
    kafka_ssl_certfile: Path | None = _env("KAFKA_SSL_CERTFILE")
    """Client certificate, for brokers that authenticate clients by TLS."""
    kafka_ssl_keyfile: Path | None = _env("KAFKA_SSL_KEYFILE")
    """The client certificate's private key."""

    redis_url: SecretStr | None = _env("REDIS_URL")
    """The counters' Redis: `redis://` or `rediss://` (TLS), with ACL user and password;
    `redis+cluster://host:port[,host:port]` (`rediss+cluster://`) for a Redis Cluster. Unset: the
    demo and the tests start a local redis-server."""

    app_id: str = Field(default="conversions", pattern=r"^[A-Za-z0-9._-]+$")
    """Names the consumer groups (`<app_id>`, `<app_id>-ingest`, `<app_id>-counters`), the
    journeys changelog topic and the counters' keys. Workers with the same id share the work."""
    generation: int | None = Field(default=None, ge=0)
    """The generation this worker runs (`conversions deploy` prints the number): its application
    id `<app_id>-g<N>`, its own topics and the configuration recorded for it in the generations
    registry. Unset: the current generation (0, the plain worker with `CONVERSIONS_FUNNELS`,
    until a `deploy` cuts over). A worker whose generation is retired stops."""
    funnels: Path = DEFAULT_FUNNELS
    """The funnel configuration (YAML) of `worker`, `counters`, `process` and `report`."""
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    """Prefixed to every topic name below."""
    topic_clickstream: Annotated[list[str], NoDecode] = ["clickstream"]
    """The input topics, comma separated."""
    topic_events: str = "clickstream.events"
    """Internal: ingest's repartitioned events (by identity)."""
    topic_micro: str = "conversions.micro"
    """Output: milestone and secondary microconversions."""
    topic_macro: str = "conversions.macro"
    """Output: macroconversions (goals reached)."""
    topic_dropoffs: str = "funnel.dropoffs"
    """Output: drop-offs and stalled signals."""
    topic_alerts: str = "funnel.alerts"
    """Output: alerts fired and resolved."""
    topic_sessions: str = "journeys.sessions"
    """Output: closed sessions."""
    topic_identities: str = "journeys.identities"
    """Output: identity links and refusals."""
    topic_experiments: str = "conversions.experiments"
    """Output: experiments' state at each decision change."""
    topic_deadletter: str = "clickstream.deadletter"
    """Output: every input that could not be used, with the reason."""
    topic_erased: str = "privacy.erased"
    """Compacted: each erased user or anonymous id with the moment of its erasure, read by ingest."""
    topic_erasures: str = "privacy.erasures"
    """Output: an `erasure` record per person erased (`conversions forget`), for downstream consumers."""
    partitions: int = Field(default=4, ge=1, le=1024)
    """Partitions of the internal and output topics and of the journeys table (how many workers
    can share the work); fixed once the topics exist."""
    replication_factor: int = Field(default=1, ge=1, le=10)
    """Replication factor of the topics the worker creates."""
    create_topics: bool = True
    """Create missing topics at start (`false`: they must exist; `conversions topics` creates them)."""

    max_message_bytes: int = Field(default=1_000_000, ge=1_024)
    """Larger input messages are dead-lettered (`too_large`)."""
    output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "gzip"
    """Codec of the record batches the engine writes (outputs, repartitioned events, changelog).
    Every codec is read whatever this says. gzip by default, from `python -m bench.compression`
    (bench/results/compression.json): the outputs take 6.1x fewer bytes than uncompressed
    (zstd 6.0x, lz4 4.5x, snappy 3.9x) at no throughput or CPU cost measurable beside the noise
    (203-219 us of worker CPU per event for every codec), and gzip is the one codec every Kafka
    client reads without an optional library (aiokafka without cramjam reads gzip only)."""
    max_batch_events: int = Field(default=10_000, ge=1)
    """Events one input message (a collector's batch) may hold; more is dead-lettered."""
    max_nesting: int = Field(default=MAX_NESTING, ge=1, le=200)
    """How deep an event's `context` and `properties` may nest: deeper input is dead-lettered
    (`too_deeply_nested`) by ingest and refused with 400 by the collector."""
    max_future_skew_s: int = Field(default=3_600, ge=0)
    """Events stamped further ahead of the wall clock are dead-lettered (`future_timestamp`): one
    wrong client clock would otherwise move event time on and close everyone's sessions."""
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """`exactly_once` uses Kafka transactions (real Kafka only; Tansu has none). Outputs carry
    deterministic ids either way."""
    rebalance_timeout_s: float = Field(default=60.0, gt=0)
    """The consumer groups' rebalance timeout; keep it at a few seconds on Tansu (every group
    join waits for it)."""
    session_timeout_s: float = Field(default=60.0, gt=0)
    """The consumer groups' session timeout: a worker silent this long loses its partitions."""
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    """The consumer groups' heartbeat interval."""
    commit_interval_s: float = Field(default=2.0, gt=0)
    """How often Faust and the ingest consumer commit their input offsets, each after the producer
    has delivered what was sent; a restart re-reads at most this much input, which the journeys
    skip by source offset."""
    commit_every: int = Field(default=10_000, ge=1)
    """Also commit after this many messages, whatever the interval."""
    max_poll_records: int | None = Field(default=None, ge=1)
    """Faust's `broker_max_poll_records` (unset: Faust's default)."""
    agent_batch_messages: int = Field(default=1_000, ge=1)
    """Ingest and the journeys agent each take up to this many messages at a time and handle them
    as one run: one repartition message per source and partition, one changelog write per journey
    changed."""
    agent_batch_window_s: float = Field(default=0.05, gt=0, le=5)
    """...waiting at most this long for them (latency added per hop when traffic is light)."""
    ingest_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    """How ingest reads the clickstream: `read_committed` never reads the records of a
    transactional producer's aborted transactions (Kafka Connect, Flink or Kafka Streams sinks
    with exactly-once), nor those of open transactions until they commit."""
    ingest_assignment: Literal["one", "spread"] = "one"
    """How the clickstream partitions are shared among the workers' ingest consumers (the
    journeys are spread over all workers either way). `one`: one worker's ingest reads them all
    and keeps them at the same event time (`pipeline.alignment`), so that a replay of unkeyed
    input equals offline mode with any number of workers; the others' ingest idles until that
    worker leaves, when another takes every partition over. Its limit is one consumer's
    throughput, about 28,000 events/s on one core at ingest's 35 us an event; beyond that,
    `spread` (aiokafka's round robin): each worker reads its share and aligns only its own
    partitions. Give every worker the same value: while they differ (a rolling change) the group
    spreads."""
    fetch_max_wait_ms: int = Field(default=100, ge=1, le=60_000)
    """How long a fetch may wait on the broker for data. Some brokers (Tansu) answer an empty
    fetch only at this deadline, however soon data arrives, which adds up to it to every hop
    (Faust's fixed 1500 ms put up to 0.44 s on every hop there); on Kafka, lower only means more
    idle fetches."""
    early_release: bool = False
    """With identity stitching: release a stitched person's held events as soon as the partitions
    that can still send them something have passed them, not once every partition has (ingest
    sends the person's partition a link notice beside each event carrying both ids). Turn it on
    only once every worker runs a version that has it: a worker without it would dead-letter the
    notices, and one with it beside an ingest that sends none could apply an event early
    (docs/concepts/identity.md)."""
    # not Literal[4, 5]: it refuses the string "4" the environment gives
    journey_state_version: int = Field(default=5, ge=4, le=5)
    """The journey state version the worker writes to its changelog. Workers of a release before
    version 5 refuse a version 5 state: while any of them runs beside this release (a rolling
    upgrade), give every upgraded worker 4, and once none is left, 5 (the default, about 14 %
    smaller). Either version loads."""
    counters_enabled: bool = True
    """Apply the outputs to the Redis counters in the worker (`false` when `conversions counters`
    processes do it)."""
    counters_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    """Consumer group of the counters (default `<app_id>-counters`); a new one re-reads every
    output, which the applied offsets kept in Redis then skip."""
    counter_bucket_s: int = Field(default=60, ge=1, le=86_400)
    """The counters' finest event-time bucket (hour and day rollups are kept too)."""
    counter_ttl_s: int = Field(default=8 * 86_400, ge=60)
    """How long counter keys live."""
    counter_dedupe_s: int = Field(default=3_600, ge=60)
    """How long the counters remember output ids (a repeated output is counted once)."""
    counter_batch_size: int = Field(default=2_000, ge=1)
    """Output messages the counters apply to Redis in one batch, at most."""
    counter_batch_window_s: float = Field(default=0.25, gt=0)
    """...or what came within this many seconds of a batch's first output: one Redis call per
    shard and one offset commit for all of them (the counters lag the outputs by up to this)."""
    counter_linger_ms: int = Field(default=200, ge=0, le=5_000)
    """The counters' consumer asks the broker to hold each fetch until it has 1 MiB of outputs or
    this many milliseconds have passed (`fetch.min.bytes` and `fetch.max.wait.ms` of the counters'
    consumer alone), so that at a live pace each fetch, and each batch, holds more outputs: a
    batch's cost per output falls (a Lua call per shard and a commit per batch, a fetch's own
    work) against up to this much more delay. 0: a fetch answers with whatever has come
    (`CONVERSIONS_FETCH_MAX_WAIT_MS`, as before this setting). Offsets are committed only
    after Redis has the batch, linger or not."""
    alert_webhook_url: SecretStr | None = None
    """Alerts are also POSTed here as JSON (by the leader); the URL may hold a token."""
    pseudonymize_key: SecretStr | None = None
    """With a key, the counters see HMAC-SHA256(key, identity) instead of user and anonymous ids
    (unique-user counts stay exact); kept out of logs."""
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0)
    """Each HTTP request to a receiver (every receiver below, and the webhook)."""
    alert_alertmanager_url: str | None = None
    """Prometheus Alertmanager's base URL (e.g. http://alertmanager:9093): alerts are POSTed to
    /api/v2/alerts, and re-sent every `alert_alertmanager_resend_s` while they fire."""
    alert_alertmanager_resend_s: float = Field(default=60.0, gt=0)
    """Alertmanager resolves an alert not re-sent before its endsAt (4 of these intervals)."""
    alert_pagerduty_routing_key: SecretStr | None = None
    """A PagerDuty Events API v2 integration key: alerts trigger and resolve incidents."""
    alert_pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    """The Events API v2 endpoint (another for PagerDuty's EU service region, or a test receiver)."""
    alert_slack_webhook_url: SecretStr | None = None
    """A Slack incoming webhook (the URL is the secret)."""
    alert_severity: Literal["critical", "error", "warning", "info"] = "warning"
    """The severity every receiver is told (Alertmanager's label, PagerDuty's payload.severity)."""
    alert_dashboard_url: str | None = None
    """The dashboard's public base URL, for the links in alerts (default: the web address)."""
    alert_delivery_give_up_s: float = Field(default=300.0, gt=0)
    """A receiver's delivery is retried with backoff for this long, then given up (logged, counted)."""
    alert_failover_lookback_s: int = Field(default=3_600, ge=0)
    """Event time: a worker that becomes the leader re-sends the latest state change of every rule
    it judged while following, if it fires or resolved within this long of its watermark."""
    watermark_interval_s: float = Field(default=1.0, gt=0)
    """How often the watermarks are repeated to journey partitions that get no events, so
    deadlines fire for idle users."""
    source_idle_s: float = Field(default=10.0, gt=0)
    """A source partition silent this long stops holding event time back."""
    watermark_refresh_s: float = Field(default=10.0, gt=0)
    """How often the source partitions' end offsets are refreshed for the idle check."""
    table_store: str = "memory://"
    """The journeys store: `memory://` (rebuilt from the changelog at start) or `rocksdb://` (on
    disk under `CONVERSIONS_DATA_DIR`, the production option)."""
    table_standby_replicas: int = Field(default=0, ge=0)
    """Workers that keep a warm copy of each journeys partition, for faster failover."""
    data_dir: Path = Path("var/conversions")
    """Where the worker keeps its files (RocksDB, the demo's logs)."""

    web_enabled: bool = True
    """Serve the dashboard, the JSON API and /metrics."""
    web_host: str = "127.0.0.1"
    """The web server's address (loopback by default; set a web token beyond it)."""
    web_port: int = Field(default=6066, ge=0, le=65535)
    """The web server's port."""
    web_token: SecretStr | None = None
    """When set (16 characters or more), every request to the web server needs it:
    `Authorization: Bearer <token>`, or the cookie that signing in at /login sets (an HMAC of the
    token, HttpOnly, SameSite=Strict); compared in constant time, never logged. For a dashboard
    exposed beyond loopback."""
    metrics_token: SecretStr | None = None
    """/metrics needs this bearer token instead of the web token (what Prometheus is given)."""
    metrics_public: bool = False
    """/metrics answers without any token, even with CONVERSIONS_WEB_TOKEN set."""
    web_allowed_hosts: Annotated[list[str], NoDecode] = []
    """Host names the web server answers to besides loopback's (localhost, 127.0.0.1, [::1]) and
    CONVERSIONS_WEB_HOST, comma separated: a request naming another `Host` is refused (421), so a
    DNS-rebinding page cannot read the API."""
    web_behind_tls: bool = False
    """The site is served over TLS by a proxy in front: the sign-in cookie is then `Secure`
    (it is whenever the request itself came over TLS)."""
    web_session_ttl_s: int = Field(default=12 * 3_600, ge=60, le=30 * 86_400)
    """How long a sign-in lasts; signing out at /logout ends it sooner."""
    breakdown_cap: int = Field(default=50, ge=1, le=10_000)
    """The most distinct values of a breakdown (or alert `by`, or experiment variant, or metric
    label) answered or kept apart; the rest are summed as `(other)`: values come from clients."""

    input_format: str = "auto"
    """How the clickstream topics are read: `auto` (each message's format detected), `contract`,
    `segment`, `snowplow`, or per topic: `clickstream=segment,snowplow-enriched=snowplow`."""
    collector_enabled: bool = False
    """Run the Segment-compatible collector (streams/collector) in the worker, on its own port."""
    collector_host: str = "127.0.0.1"
    """The collector's address; beyond loopback it needs write keys."""
    collector_port: int = Field(default=6067, ge=0, le=65535)
    """The collector's port."""
    collector_write_keys: Annotated[list[SecretStr], NoDecode] = []
    """Accepted write keys, comma separated; none accepts any request (loopback only)."""
    collector_allowed_origins: Annotated[list[str], NoDecode] = []
    """Browser origins allowed to post (CORS), comma separated; none by default. `*` allows any
    origin, and only with write keys: without them, only the listed origins."""
    collector_max_batch_messages: int = Field(default=500, ge=1, le=100_000)
    """The most messages one batch request may carry (more: 400 `too_many_messages`)."""
    collector_rate_limit: float = Field(default=50.0, ge=0)
    """Requests a second each client address, and each write key, may send (a burst of twice
    that); more are answered 429 with Retry-After. 0 switches the limit off."""
    collector_topic: str | None = None
    """The clickstream topic the collector produces to (default: the first one)."""
    collector_send_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long a request waits for the broker's acknowledgement before answering 503."""
    collector_trusted_proxies: Annotated[list[str], NoDecode] = []
    """Addresses or networks (CIDR) of the proxies in front of the collector, comma separated: only
    when the immediate peer is one of them is the client address read from X-Forwarded-For."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The log level of the worker and the commands."""

    # audience enrichment and personal data (docs/howto/audience.md, docs/howto/erasure.md)
    ip_mode: Literal["drop", "truncate", "keep"] = "drop"
    """What is kept of a client address (`context.ip`) once its country is looked up: nothing,
    its /24 (IPv4) or /48 (IPv6), or all of it."""
    bots: Literal["exclude", "include"] = "exclude"
    """Events of known bots (by user agent) are counted in /metrics and not processed, or kept."""
    geoip_database: Path | None = None
    """A MaxMind .mmdb file (GeoLite2/GeoIP2 Country or City) used instead of the shipped RIR data."""
    consent_category: str | None = "analytics"
    """The category of Segment's context.consent.categoryPreferences whose `false` means the
    event is counted and not processed (case-insensitive); empty: not checked."""
    consent_field: str | None = None
    """Another field path whose false / `denied` value means the same, e.g.
    context.consent.analytics_storage."""

    @field_validator("consent_field")
    @classmethod
    def _consent_path(cls, value: str | None) -> str | None:
        if value:
            from streams.core.config.model import check_field_path

            return check_field_path(value)
        return None

    @field_validator("collector_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or a network (CIDR)") from None
        return value

    @field_validator("geoip_database")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file (a MaxMind .mmdb database)")
        return value

    @field_validator(
        "topic_clickstream",
        "collector_write_keys",
        "collector_allowed_origins",
        "collector_trusted_proxies",
        "web_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("web_token", "metrics_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            weakness = token_weakness(value.get_secret_value())
            if weakness is not None:
                raise ValueError(weakness)
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
        if self.web_enabled and self.web_token is None and not _is_loopback(self.web_host):
            raise ValueError(
                f"CONVERSIONS_WEB_TOKEN: the web server listens on {self.web_host!r}, beyond "
                "loopback, so it needs a token (e.g. `openssl rand -hex 16`), "
                "or CONVERSIONS_WEB_HOST=127.0.0.1"
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

    def enrichment(self) -> EnrichmentSpec:
        """The ingest enrichment these settings ask for (`input.audience`)."""
        return EnrichmentSpec(
            ip_mode=self.ip_mode,
            bots=self.bots,
            geoip_database=str(self.geoip_database) if self.geoip_database else None,
            consent_category=self.consent_category or None,
            consent_field=tuple(self.consent_field.split(".")) if self.consent_field else None,
        )

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
            "carried": self.topic(self.topic_dropoffs),
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
        secrets = (
            "kafka_sasl_password",
            "redis_url",
            "alert_webhook_url",
            "alert_pagerduty_routing_key",
            "alert_slack_webhook_url",
            "pseudonymize_key",
        )
        for key in (*secrets, "web_token", "metrics_token"):
            if data.get(key):
                data[key] = "**********"
        data["collector_write_keys"] = ["**********"] * len(self.collector_write_keys)
        return data


MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8


def token_weakness(token: str) -> str | None:
    """Why a token is too weak to guard the web server, or None: at least 16 characters, of at
    least 8 different ones (`openssl rand -hex 16` gives 32 of about 16)."""
    advice = "(e.g. `openssl rand -hex 16`)"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"a token needs at least {MIN_TOKEN_LENGTH} characters {advice}"
    if len(set(token)) < MIN_TOKEN_DISTINCT:
        return (
            f"a token needs at least {MIN_TOKEN_DISTINCT} different characters, this one has "
            f"{len(set(token))} {advice}"
        )
    return None


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
