"""The counters consumer: output events in, Redis counters out, effectively once.

A plain aiokafka consumer in a group of its own (`<app_id>-counters`), run beside the worker's
agents: it fetches the output topics in batches, turns each message into counter increments
(`core.counters`), applies each partition's share of a batch in one Lua call that also
records the applied offsets (`redis_store`), and commits to Kafka only after Redis has the
batch. A message delivered again (a crash between apply and commit) is skipped by the recorded
offsets; a Redis outage is waited out with the batch held and nothing committed. Faust's
per-message machinery is not needed here: this is a batch job on a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError

from streams.core.config.matching import CompiledConfig
from streams.core.measures.cardinality import ValueCap
from streams.core.measures.counters import pseudonymizer
from streams.counters.base import CountedMessage
from streams.counters.redis_store import REDIS_UNAVAILABLE, CounterStore, apply_with_retry
from streams.counters.tally import Tallier
from streams.kafka.clients import new_consumer, start_with_retry
from streams.kafka.undecodable import DeadLetterProducer, GuardedConsumer, SkippedBatches, undecodable
from streams.metrics import Metrics
from streams.ports import Publisher, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

COUNTED = ("micro", "macro", "dropoff", "session")


LINGER_BYTES = 1 << 20
"""What a lingering fetch waits for at most (`counter_linger_ms`): at a live pace the linger ends
it first; a backlog fills it at once."""


def lingering(settings: Settings) -> dict[str, int]:
    """The counters consumer's fetch options for `counter_linger_ms` (none when 0)."""
    if not settings.counter_linger_ms:
        return {}
    return {"fetch_min_bytes": LINGER_BYTES, "fetch_max_wait_ms": settings.counter_linger_ms}


class Counting:
    def __init__(
        self,
        settings: Settings,
        config: CompiledConfig,
        metrics: Metrics,
        store: CounterStore,
        publisher: Publisher | None = None,
    ) -> None:
        """`publisher` sends the dead letters of undecodable batches: the worker's pipeline, or
        (None) a producer of the counters' own, started when one comes."""
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.store = store
        key = settings.pseudonymize_key
        self._pseudonym = pseudonymizer(key.get_secret_value().encode()) if key is not None else None
        self._cap = ValueCap(settings.breakdown_cap)
        self._tallier = Tallier(config, settings.counter_bucket_s * 1_000, self._pseudonym, self._cap)
        self._kafka: AIOKafkaConsumer | None = None
        self._committing = asyncio.Lock()
        self._closing = False
        self.topics = sorted({settings.output_topics[k] for k in COUNTED})
        self._own_producer = DeadLetterProducer(settings) if publisher is None else None
        self._skipped = SkippedBatches("counters", metrics, publisher or self._own_producer)

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return new_consumer(
            s,
            *self.topics,
            cls=GuardedConsumer,
            group_id=s.counters_group or f"{s.app_id}-counters",
            auto_offset_reset="earliest",
            max_poll_records=s.counter_batch_size,
            **lingering(s),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
        )

    async def run(self, stopping: Stopping) -> None:
        consumer = self._kafka = self._new_consumer()
        if not await start_with_retry(consumer, "counters", stopping):
            return
        log.info("counters: consuming %s", ", ".join(self.topics))
        while not stopping():
            try:
                batch = await self._gather(consumer, stopping)
            except ConsumerStoppedError:
                return
            if batch:
                await self._apply(batch)
                async with self._committing:
                    if self._closing:
                        return  # applied, not committed: the next owner skips it by offset
                    await consumer.commit()

    async def _gather(self, consumer: AIOKafkaConsumer, stopping: Stopping) -> dict[Any, list[Any]]:
        """Up to `counter_batch_size` records, or what came within `counter_batch_window_s` of
        the first: a fetch hands over whatever arrived since the last (a few dozen records of
        live traffic), and each batch costs a Lua call per shard and a commit, whatever its size."""
        size, window = self.settings.counter_batch_size, self.settings.counter_batch_window_s
        batch: dict[Any, list[Any]] = await consumer.getmany(timeout_ms=int(window * 1000), max_records=size)
        gathered = sum(map(len, batch.values()))
        loop = asyncio.get_running_loop()
        until = loop.time() + window
        while batch and gathered < size and not stopping():
            left = until - loop.time()
            if left <= 0:
                break
            more = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=size - gathered)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                gathered += len(records)
        return batch

    async def publish_step_rates(self) -> None:
        await publish_step_rates(self.store, self.config, self.metrics)

    async def close(self) -> None:
        self._closing = True
        if self._kafka is not None:
            # a commit in flight finishes first: stopping the consumer under it closes its
            # connection, and aiokafka logs that as an error
            async with self._committing:
                with contextlib.suppress(Exception):
                    await self._kafka.stop()
        if self._own_producer is not None:
            await self._own_producer.close()
        await self.store.redis.aclose()

    async def _apply(self, batch: dict[Any, list[Any]]) -> None:
        by_shard: dict[int, list[CountedMessage]] = defaultdict(list)
        decode = self._tallier.decode
        for tp, messages in batch.items():
            counted = by_shard[tp.partition]
            for message in messages:
                bad = undecodable(message)
                if bad is not None:  # its offsets are committed with the batch's
                    await self._skipped.report(tp.topic, tp.partition, bad)
                    continue
                output_id, planned = decode(message.value or b"{}")
                counted.append(CountedMessage(tp.topic, message.offset, output_id, planned or ()))
        for shard, counted in by_shard.items():
            started = time.perf_counter()
            applied, skipped = await apply_with_retry(self.store, shard, counted)
            self.metrics.redis_apply.observe(time.perf_counter() - started)
            self.metrics.redis_up.set(1)
            self.metrics.counter_messages.labels("applied").inc(applied)
            self.metrics.counter_messages.labels("skipped").inc(skipped)
            if skipped:
                log.info("counters: skipped %d already-applied messages in shard %d", skipped, shard)


async def publish_step_rates(store: CounterStore, config: CompiledConfig, metrics: Metrics) -> None:
    """Each step's rate over the last 15 minutes of event time, for Prometheus rules: a read of
    the counters, so whichever process answers the queries publishes it (the worker, wherever
    the counters are applied)."""
    try:
        latest = await store.latest_event_ms()
        if latest is None:
            return
        end = latest - latest % store.bucket_ms + store.bucket_ms
        for funnel in config.funnels:
            report = await store.funnel_report(funnel, end - 15 * 60_000, end)
            for step in report.steps[1:]:
                if step.rate_from_previous is not None:
                    metrics.step_rate.labels(funnel.name, step.name).set(step.rate_from_previous)
        metrics.redis_up.set(1)
    except REDIS_UNAVAILABLE as exc:
        metrics.redis_up.set(0)
        log.warning("step rates not refreshed: Redis unavailable (%s)", exc.__class__.__name__)
