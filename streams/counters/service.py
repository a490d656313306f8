"""`conversions counters`: the counters consumer as a process of its own.

In the worker the counters share one event loop with the journeys: every batch of outputs they
decode, turn into increments and fold is time the journeys wait. Run here instead (the workers
with `CONVERSIONS_COUNTERS_ENABLED=false`), they get a process and a core of their own, and
scale apart: the same consumer group (`<app_id>-counters`, or `CONVERSIONS_COUNTERS_GROUP`) and
the same effectively-once rules as in the worker (`consumer`), so any number of these processes
split the output partitions, and one may replace the in-worker counters at any time. The
workers still answer the queries (they read the same Redis). With `metrics_port`, Prometheus
metrics of this process (`conversions_counter_messages_total`, `conversions_redis_apply_seconds`,
`conversions_redis_up`) are served at `/metrics` there.

Like a worker, the process joins a generation (`generations.current.join`, issue 26): its
`CONVERSIONS_GENERATION`, else the current one, whose application id names its group, output
topics and counter keys and whose recorded configuration it counts with; once that generation
is retired (a `deploy` cut over past it, or a rollback), it stops on its own, and a supervisor
restarting it brings it into the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from prometheus_client import start_http_server

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.counters.consumer import Counting
from streams.counters.redis_store import REDIS_UNAVAILABLE, redis_client, redis_counter_store
from streams.generations.current import join_waiting, until_retired
from streams.generations.naming import base_app_id
from streams.generations.registry import Registry
from streams.metrics import Metrics
from streams.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""After SIGTERM, how long the current batch may take to be applied and committed (a Redis
outage would hold it forever); then it is abandoned, uncommitted, for the next consumer."""


async def serve(settings: Settings, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Count until `stop` is set, or until the generation counted is retired."""
    assert settings.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(settings.redis_dsn, socket_timeout=5)
    registry = Registry(redis, base_app_id(settings))
    try:
        settings, generation = await join_waiting(settings, registry, REDIS_UNAVAILABLE, "counters")
        if generation is not None:
            log.info("counters: generation %d (%s), %s", generation.number, settings.app_id, generation.state)
        retired = asyncio.create_task(until_retired(registry, settings.generation or 0, stop.is_set))
        try:
            await _count(settings, stop, retired, metrics)
        finally:
            retired.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retired
    finally:
        await redis.aclose()


async def _count(
    settings: Settings, stop: asyncio.Event, retired: asyncio.Task[bool], metrics: Metrics | None
) -> None:
    config = compile_config(load_config(settings.funnels))
    counting = Counting(settings, config, metrics or Metrics(), redis_counter_store(settings))
    # What is alive now (modules, the configuration, the clients) lives as long as the process:
    # out of the cyclic collector's sight, its full collections walk only a batch's objects.
    gc.collect()
    gc.freeze()
    # A batch's decoded outputs and folded slots are many small containers that all die with the
    # batch: young collections every 50,000 allocations instead of 700 (8 % less CPU measured
    # over the bench's batches, `python -m bench.counters --process`).
    gc.set_threshold(50_000, 50, 100)

    def retire(task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.result():
            log.warning("counters: generation %d is retired; stopping", settings.generation or 0)
            stop.set()

    retired.add_done_callback(retire)
    running = asyncio.create_task(counting.run(stop.is_set))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            done, _ = await asyncio.wait({running}, timeout=STOP_GRACE_S)
            if not done:
                log.warning("counters: the batch in hand is not applied after %.0f s; stopping", STOP_GRACE_S)
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        if not running.cancelled():
            running.result()
    finally:
        stopped.cancel()
        await counting.close()
    log.info("counters: stopped")


def run_counters(settings: Settings, metrics_port: int | None = None) -> None:
    """Blocks until SIGTERM or Ctrl-C."""
    log.info("starting counters %s with settings %s", settings.app_id, settings.redacted())
    metrics = Metrics()
    if metrics_port is not None:
        start_http_server(metrics_port, addr=settings.web_host, registry=metrics.registry)
        log.info("counters: metrics on http://%s:%d/metrics", settings.web_host, metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop, metrics)

    asyncio.run(main())
