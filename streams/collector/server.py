"""The collector's HTTP server (aiohttp, on its own port) and its producer to the clickstream topic.

A request is answered 200 only after the broker has acknowledged every record it produced
(`acks=all`); 503 (with Retry-After, which Segment's and RudderStack's libraries honour by
retrying) while the broker cannot be reached or does not acknowledge within `send_timeout_s`.
The producer is started in the background and restarted until the broker answers, so the
collector can start, and answer 503, before the broker is up. Browsers get CORS: a preflight is
answered for the allowed origins, a request from any other origin is refused with 403 (`origins`).
Each client address and each write key may send `CONVERSIONS_COLLECTOR_RATE_LIMIT` requests a
second (`ratelimit`); past it, 429 with Retry-After, which the tracking libraries honour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from streams.collector.messages import Client, CollectorConfig, Refusal, accept, client_address
from streams.collector.origins import allowed_origin, refused
from streams.core.input.geo import GeoLookup
from streams.kafka.clients import new_producer
from streams.ratelimit import RateLimiter, retry_after
from streams.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
_ALLOWED_HEADERS = "Content-Type, Content-Encoding, Authorization, X-Retry-Count"

ProducerFactory = Callable[[], AIOKafkaProducer]


def kafka_producer(settings: Settings, request_timeout_s: float = 10.0) -> ProducerFactory:
    """New producers for the collector, with the project's connection options; acknowledged by
    every in-sync replica, since the collector's 200 promises the events are kept."""

    def new() -> AIOKafkaProducer:
        return new_producer(
            settings, acks="all", linger_ms=2, request_timeout_ms=int(request_timeout_s * 1000)
        )

    return new


def collector_config(settings: Settings) -> CollectorConfig:
    """The collector the settings describe (`CONVERSIONS_COLLECTOR_*`)."""
    return CollectorConfig(
        topic=settings.collector_target,
        host=settings.collector_host,
        port=settings.collector_port,
        write_keys=frozenset(key.get_secret_value() for key in settings.collector_write_keys),
        allowed_origins=frozenset(settings.collector_allowed_origins),
        send_timeout_s=settings.collector_send_timeout_s,
        ip_mode=settings.ip_mode,
        trusted_proxies=tuple(settings.collector_trusted_proxies),
        max_nesting=settings.max_nesting,
        max_batch_messages=settings.collector_max_batch_messages,
        rate_limit=settings.collector_rate_limit,
    )


def from_settings(settings: Settings, registry: CollectorRegistry | None = None) -> Collector:
    """The collector a worker runs: its settings, a producer that waits for every replica, and
    its metrics in the worker's registry (served at the worker's /metrics)."""
    return Collector(
        collector_config(settings),
        kafka_producer(settings, request_timeout_s=settings.collector_send_timeout_s),
        registry=registry,
        geo=GeoLookup(settings.geoip_database),
    )


class Collector:
    """The Segment-compatible collector: `await start()`, then `url`; `await stop()`."""

    def __init__(
        self,
        config: CollectorConfig,
        producer_factory: ProducerFactory,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        geo: GeoLookup | None = None,
    ) -> None:
        self.config = config
        self._geo = geo or GeoLookup()
        self._new_producer = producer_factory
        self._producer: AIOKafkaProducer | None = None
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._stopping = False
        self.port = config.port
        burst = 2 * config.rate_limit
        self._per_client = RateLimiter(config.rate_limit, burst)
        self._per_key = RateLimiter(config.rate_limit, burst)
        self.requests = Counter(
            "conversions_collector_requests",
            "Collector requests by HTTP status",
            ["status"],
            registry=registry,
        )
        self.messages = Counter(
            "conversions_collector_messages",
            "Messages the broker acknowledged, by call",
            ["type"],
            registry=registry,
        )

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ready(self) -> bool:
        """True once the producer has reached the broker."""
        return self._producer is not None

    def application(self) -> web.Application:
        """The aiohttp application with the collector's routes (schemas/openapi.yaml lists them)."""
        app = web.Application(client_max_size=self.config.max_request_bytes + 1)
        app.router.add_route("POST", "/v1/{call}", self._post)
        app.router.add_route("OPTIONS", "/v1/{call}", self._preflight)
        app.on_response_prepare.append(_plain_headers)
        return app

    async def start(self) -> None:
        app = self.application()
        # bodies are inflated by `accept`, within the request limit, not by aiohttp
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        if self.config.port == 0:
            self.port = int(self._runner.addresses[0][1])
        self._connecting = asyncio.create_task(self._connect())
        log.info("collector listening on %s, producing to %s", self.url, self.config.topic)

    async def stop(self) -> None:
        self._stopping = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._runner is not None:
            await self._runner.cleanup()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _connect(self) -> None:
        """Start a producer, a new one after each failure, until the broker answers."""
        while not self._stopping:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                log.warning(
                    "collector: Kafka not reachable (%s); answering 503, retrying in %d s",
                    exc.__class__.__name__,
                    RETRY_AFTER_S,
                )
                await producer.stop()
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            self._producer = producer
            log.info("collector ready: the broker answers, accepting events at %s/v1", self.url)
            return

    # ---- requests -------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str]:
        config = self.config
        origin = allowed_origin(
            request.headers.get("Origin"), config.allowed_origins, bool(config.write_keys)
        )
        return {} if origin is None else {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if not headers:
            return web.Response(status=403, text="origin not allowed")
        headers |= {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
            "Access-Control-Max-Age": "86400",
        }
        return web.Response(status=204, headers=headers)

    def _answer(
        self, request: web.Request, status: int, body: dict[str, Any], **headers: str
    ) -> web.Response:
        self.requests.labels(str(status)).inc()
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={**self._cors(request), **headers},
        )

    async def _post(self, request: web.Request) -> web.Response:
        config = self.config
        origin = request.headers.get("Origin")
        if refused(origin, config.allowed_origins, bool(config.write_keys)):
            why = f"origin {origin!r} may not post here (CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS)"
            return self._answer(request, 403, {"code": "forbidden_origin", "message": why})
        wait = self._per_client.take(request.remote or "")
        if wait:
            return self._too_many(request, wait, "this client")
        try:
            if (request.content_length or 0) > self.config.max_request_bytes:
                size, limit = request.content_length, self.config.max_request_bytes
                raise Refusal(413, "too_large", f"the body is {size} bytes, the limit is {limit}")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise Refusal(
                    413, "too_large", f"the body is over the limit of {self.config.max_request_bytes} bytes"
                ) from None
            accepted = accept(
                request.match_info["call"],
                body,
                config=self.config,
                received_at=datetime.fromtimestamp(self._clock(), UTC),
                content_encoding=request.headers.get("Content-Encoding"),
                authorization=request.headers.get("Authorization"),
                client=Client(
                    client_address(
                        request.remote,
                        request.headers.get("X-Forwarded-For"),
                        self.config.trusted_proxies,
                    ),
                    request.headers.get("User-Agent"),
                ),
                locate=self._geo.lookup,
            )
        except Refusal as refusal:
            return self._answer(request, refusal.status, refusal.body())
        if accepted.write_key is not None:
            wait = self._per_key.take(accepted.write_key)
            if wait:
                return self._too_many(request, wait, "this write key")
        producer = self._producer
        if producer is None:
            return self._unavailable(request, "the broker is not reachable yet")
        try:
            await self._send(producer, accepted.records)
        except (KafkaError, TimeoutError) as exc:
            why = str(exc) or exc.__class__.__name__
            log.warning(
                "collector: %d records not acknowledged (%s); answering 503", len(accepted.records), why
            )
            return self._unavailable(request, f"the broker did not acknowledge: {why}")
        for kind, count in accepted.types.items():
            self.messages.labels(kind).inc(count)
        return self._answer(request, 200, {"success": True})

    def _too_many(self, request: web.Request, wait_s: float, who: str) -> web.Response:
        limit = self.config.rate_limit
        why = f"{who} sends more than {limit:g} requests a second; retry later"
        return self._answer(
            request, 429, {"code": "rate_limited", "message": why}, **{"Retry-After": retry_after(wait_s)}
        )

    def _unavailable(self, request: web.Request, why: str) -> web.Response:
        return self._answer(
            request, 503, {"code": "unavailable", "message": why}, **{"Retry-After": str(RETRY_AFTER_S)}
        )

    async def _send(self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]) -> None:
        """Produce the records and wait for every acknowledgement, at most `send_timeout_s`.

        A record still unacknowledged then is left to the producer (it may yet be written: the
        client's retry is then a duplicate, which the engine applies once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.send_timeout_s
        acks: list[asyncio.Future[Any]] = []
        try:
            for key, value in records:
                send = producer.send(self.config.topic, value=value, key=key)
                acks.append(await asyncio.wait_for(send, max(deadline - loop.time(), 0.001)))
            if not acks:
                return
            _, pending = await asyncio.wait(acks, timeout=max(deadline - loop.time(), 0.001))
            if pending:
                raise TimeoutError(
                    f"{len(pending)} of {len(acks)} records unacknowledged after "
                    f"{self.config.send_timeout_s:g} s"
                )
            for ack in acks:
                ack.result()
        finally:
            for ack in acks:
                ack.add_done_callback(_retrieve)


async def _plain_headers(_: web.Request, response: web.StreamResponse) -> None:
    """No aiohttp version in `Server`; JSON answers are neither sniffed nor cached."""
    response.headers["Server"] = "conversions"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Collect a late outcome, so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
