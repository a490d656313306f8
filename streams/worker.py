"""The composition root: the one module that puts the pipeline, the counters, the alerts and the
web together into a running worker.

The rooms do not know each other: the pipeline publishes and schedules (`ports.Publisher`,
`LeaderCheck`, `Scheduler`), the counters and the alerts run beside its agents through those
seams (the counters may run as a process of their own instead, `conversions counters`, with
`CONVERSIONS_COUNTERS_ENABLED=false` here: the worker then only reads them), and the web reads
the counters and the alerts through `ports.CounterReader` and `AlertReader`. The
Segment-compatible collector, when enabled, listens on its own port beside them. Topics are
created first (unless told not to), then the Faust worker runs with clear logs until SIGTERM or
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust

from streams.alerts.service import Alerting
from streams.collector import Collector, from_settings
from streams.compiled import describe as build_kind
from streams.core.config.loader import load_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.records.outputs import Erasure
from streams.counters.consumer import Counting, publish_step_rates
from streams.counters.redis_store import (
    REDIS_UNAVAILABLE,
    RedisClient,
    counter_store,
    redis_client,
    redis_counter_store,
)
from streams.generations import judged
from streams.generations.current import CurrentGeneration, join_waiting
from streams.generations.naming import base_app_id
from streams.generations.registry import Registry
from streams.generations.relay import Relay
from streams.kafka import ensure_topics, erasures, source_partitions
from streams.pipeline.app import ConversionsApp
from streams.ports import Stopping
from streams.settings import Settings
from streams.web.auth import Access
from streams.web.hosts import allowed_hosts
from streams.web.routes import register_routes

log = logging.getLogger(__name__)

STEP_RATES_EVERY_S = 15.0


def compose(settings: Settings, config: CompiledConfig, sources: Iterable[str]) -> ConversionsApp:
    """The pipeline, with the counters, the alerts and the web attached as the settings say."""
    conversions = ConversionsApp(settings, config, sources)
    store = None
    if settings.counters_enabled or (settings.web_enabled and settings.redis_dsn):
        store = redis_counter_store(settings)
    if store is not None:
        if settings.counters_enabled:
            counting = Counting(settings, config, conversions.metrics, store, publisher=conversions)
            conversions.run_alongside("counters", counting.run, counting.close)
        else:
            log.info(
                "counters: not applied here (CONVERSIONS_COUNTERS_ENABLED=false): `conversions counters`"
            )
            conversions.run_alongside("counter_reads", _reads_only, store.redis.aclose)
        reads = store

        async def step_rates() -> None:
            await publish_step_rates(reads, config, conversions.metrics)

        conversions.every(STEP_RATES_EVERY_S, "step_rates", step_rates)
    current = None
    # a worker that neither counts nor serves (both elsewhere) still follows its generation: it
    # stops once that is retired, and may lead it (relay, judged alerts)
    redis = store.redis if store is not None else None
    if redis is None and settings.redis_dsn:
        redis = redis_client(settings.redis_dsn, socket_timeout=5)
    if redis is not None:
        current = _current_generation(settings, config, redis, store)
        conversions.run_alongside("generations", current.run, _nothing if store is not None else redis.aclose)
        if settings.generation:  # N >= 1 writes its own topics: relayed to the live ones once current
            relay = Relay(settings, Registry(redis, base_app_id(settings)), current, conversions)
            conversions.run_alongside("relay", relay.run, relay.close)
    alerting = None
    if config.source.alerts or config.source.experiments:
        alerting = Alerting(
            settings,
            config,
            conversions.metrics,
            publisher=conversions,
            leader=conversions,
            generation=current,
        )
        conversions.run_alongside("alerts", alerting.run, alerting.close)
        if current is not None and redis is not None:  # what it judged, for other generations' web
            current.judging = alerting
            judging, number = alerting, current.number
            judges = Registry(redis, base_app_id(settings))

            async def publish_judged(stopping: Stopping) -> None:
                await judged.publish(judges, number, judging, conversions, stopping)

            conversions.run_alongside("judged", publish_judged, _nothing)
    if settings.web_enabled and store is not None:
        assert current is not None
        registry = Registry(store.redis, base_app_id(settings))

        async def generations() -> dict[str, Any]:
            listed = await registry.all()
            progress = {g.number: await registry.progress(g.number) for g in listed}
            return {
                "current": await registry.current_number(),
                "generations": [{**g.summary(), "progress": progress[g.number]} for g in listed],
            }

        register_routes(
            conversions.app,
            store,
            alerting,
            config,
            conversions.metrics,
            experiment_reader=alerting,
            access=Access.from_settings(settings),
            allowed_hosts=allowed_hosts(settings.web_host, settings.web_allowed_hosts),
            cap=settings.breakdown_cap,
            forget=functools.partial(_forget_over_http, settings),
            current=current.source,
            generations=generations,
        )
    if settings.collector_enabled:
        collector = from_settings(settings, conversions.metrics.registry)
        conversions.run_alongside("collector", _starter(collector), collector.stop)
    return conversions


def _current_generation(
    settings: Settings, config: CompiledConfig, redis: RedisClient, own: Any
) -> CurrentGeneration:
    def reader_for(app_id: str) -> Any:
        return counter_store(settings.model_copy(update={"app_id": app_id}), redis)

    def stop() -> None:  # the ordinary shutdown, as an orchestrator's SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)

    registry = Registry(redis, base_app_id(settings))
    return CurrentGeneration(settings, config, own, registry, reader_for, stop)


async def _nothing() -> None:
    pass


async def _reads_only(_: Stopping) -> None:
    """The counters run elsewhere: this worker only reads them (queries, step rates)."""


def _starter(collector: Collector) -> Callable[[Stopping], Awaitable[None]]:
    """Start the collector beside the agents (it answers 503 until its producer reaches the
    broker); a port it cannot take stops the worker with the settings to change."""

    async def start(_: Stopping) -> None:
        try:
            await collector.start()
        except OSError as exc:
            config = collector.config
            log.error(
                "the collector cannot listen on %s:%d (%s): set CONVERSIONS_COLLECTOR_HOST/PORT, "
                "or CONVERSIONS_COLLECTOR_ENABLED=false",
                config.host,
                config.port,
                exc.strerror or exc,
            )
            raise

    return start


async def _join_generation(settings: Settings, dsn: str) -> Settings:
    """The settings of the generation this worker runs (`generations.current.join`)."""
    redis = redis_client(dsn, socket_timeout=5)
    try:
        registry = Registry(redis, base_app_id(settings))
        joined, generation = await join_waiting(settings, registry, REDIS_UNAVAILABLE, "worker")
    finally:
        await redis.aclose()
    if generation is not None:
        log.info("worker: generation %d (%s), %s", generation.number, joined.app_id, generation.state)
    return joined


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is stopped (SIGTERM / Ctrl-C)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if settings.redis_dsn:
        settings = loop.run_until_complete(_join_generation(settings, settings.redis_dsn))
    config = compile_config(load_config(settings.funnels))
    log.info("starting worker %s (%s) with settings %s", settings.app_id, build_kind(), settings.redacted())
    if settings.create_topics:
        loop.run_until_complete(ensure_topics(settings))
    sources = loop.run_until_complete(source_partitions(settings))
    log.info("event time waits for %d source partitions: %s", len(sources), ", ".join(sources))
    conversions = compose(settings, config, sources)
    worker = faust.Worker(
        conversions.app,
        loop=loop,
        loglevel=settings.log_level.lower(),
        quiet=True,
        override_logging=False,
    )
    worker.execute_from_commandline()


async def _forget_over_http(settings: Settings, user_id: str | None, anonymous_id: str | None) -> Erasure:
    return await erasures.forget(settings, user_id=user_id, anonymous_id=anonymous_id, requested_by="http")
