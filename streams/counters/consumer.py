"""The counters consumer: output events in, Redis counters out, effectively once.

A plain aiokafka consumer in a group of its own (`<app_id>-counters`), run as a task of the
worker: it fetches the output topics in batches, turns each message into counter increments
(`core.counters`), applies each partition's share of a batch in one Lua call that also
records the applied offsets, and commits to Kafka only after Redis has the batch. A message
delivered again (a crash between apply and commit) is skipped by the recorded offsets; a
Redis outage is waited out with the batch held and nothing committed. Faust's per-message
machinery is not needed here: this is a batch job on a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from mode import Service
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.core.counters import increments, pseudonymizer
from streams.counters.redis_store import CountedMessage, CounterStore, apply_with_retry
from streams.kafka import consumer_options

if TYPE_CHECKING:
    from streams.pipeline.app import ConversionsApp

log = logging.getLogger(__name__)


def counter_store(settings: Any, redis: aioredis.Redis) -> CounterStore:
    return CounterStore(
        redis=redis,
        app_id=settings.app_id,
        shards=settings.partitions,
        bucket_ms=settings.counter_bucket_s * 1_000,
        ttl_s=settings.counter_ttl_s,
        dedupe_s=settings.counter_dedupe_s,
    )


class CountersService(Service):
    """Runs the counters with the Faust app (as a child service of it), and stops them with it."""

    def __init__(self, counting: Counting) -> None:
        super().__init__()
        self.counting = counting

    @Service.task
    async def _count_forever(self) -> None:
        service: Any = self  # mode's Service attributes are invisible to mypy
        await self.counting.run(lambda: bool(service.should_stop))

    async def on_stop(self) -> None:
        await self.counting.close()


class Counting:
    def __init__(self, conversions: ConversionsApp) -> None:
        self.conversions = conversions
        self.settings = conversions.settings
        self.metrics = conversions.metrics
        self._store: CounterStore | None = None
        key = self.settings.pseudonymize_key
        self._pseudonym = pseudonymizer(key.get_secret_value().encode()) if key is not None else None
        self._kafka: AIOKafkaConsumer | None = None
        self.topics = sorted(
            {self.settings.output_topics[k] for k in ("micro", "macro", "dropoff", "session")}
        )
        conversions.app.add_dependency(CountersService(self))
        conversions.app.timer(15.0, name="step_rates")(self._publish_step_rates)

    @property
    def store(self) -> CounterStore:
        if self._store is None:
            dsn = self.settings.redis_dsn
            assert dsn, "REDIS_URL must be set for the counters"
            self._store = counter_store(self.settings, aioredis.from_url(dsn, socket_timeout=5))
        return self._store

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            *self.topics,
            **consumer_options(s),
            group_id=s.counters_group or f"{s.app_id}-counters",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.counter_batch_size,
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
        )

    async def run(self, stopping: Callable[[], bool]) -> None:
        consumer = self._kafka = self._new_consumer()
        while not stopping():
            try:
                await consumer.start()
                break
            except KafkaError as exc:
                log.warning("counters: Kafka not reachable yet (%s); retrying in 2 s", exc.__class__.__name__)
                await asyncio.sleep(2)
        log.info("counters: consuming %s", ", ".join(self.topics))
        while not stopping():
            batch = await consumer.getmany(
                timeout_ms=int(self.settings.counter_batch_window_s * 1000),
                max_records=self.settings.counter_batch_size,
            )
            if batch:
                await self._apply(batch)
                await consumer.commit()

    async def _publish_step_rates(self) -> None:
        """Each step's rate over the last 15 minutes of event time, for Prometheus rules."""
        try:
            latest = await self.store.latest_event_ms()
            if latest is None:
                return
            end = latest - latest % self.store.bucket_ms + self.store.bucket_ms
            for funnel in self.conversions.config.funnels:
                report = await self.store.funnel_report(funnel, end - 15 * 60_000, end)
                for step in report.steps[1:]:
                    if step.rate_from_previous is not None:
                        self.metrics.step_rate.labels(funnel.name, step.name).set(step.rate_from_previous)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.metrics.redis_up.set(0)
            log.warning("step rates not refreshed: Redis unavailable (%s)", exc.__class__.__name__)

    async def close(self) -> None:
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
        if self._store is not None:
            await self._store.redis.aclose()

    async def _apply(self, batch: dict[Any, list[Any]]) -> None:
        bucket_ms = self.settings.counter_bucket_s * 1_000
        config = self.conversions.config
        by_shard: dict[int, list[CountedMessage]] = defaultdict(list)
        for tp, messages in batch.items():
            for message in messages:
                output = orjson.loads(message.value or b"{}")
                by_shard[tp.partition].append(
                    CountedMessage(
                        tp.topic,
                        message.offset,
                        str(output.get("id", "")),
                        increments(output, config, bucket_ms, self._pseudonym),
                    )
                )
        for shard, counted in by_shard.items():
            started = time.perf_counter()
            applied, skipped = await apply_with_retry(self.store, shard, counted)
            self.metrics.redis_apply.observe(time.perf_counter() - started)
            self.metrics.redis_up.set(1)
            self.metrics.counter_messages.labels("applied").inc(applied)
            self.metrics.counter_messages.labels("skipped").inc(skipped)
            if skipped:
                log.info("counters: skipped %d already-applied messages in shard %d", skipped, shard)
