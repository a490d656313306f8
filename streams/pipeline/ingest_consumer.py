"""Ingest's own consumer: clickstream messages read in batches with plain aiokafka, not a Faust agent.

Trackers send one event per message, and a Faust agent costs about 80 us of Python per message
before any work (its stream, event, conductor and ack machinery; bench/results: `faust_bare`),
more than decoding and repartitioning the event itself. `getmany` hands over whatever the
fetcher has, in the order of each partition, for a few microseconds a message: the raw ceiling's
path. A run takes an equal share of every assigned partition (`_next_run`), so that they stay
in step as Faust's round robin kept them. Faust still runs the journeys agent, whose input is
already in batches. Across runs, the partitions are kept at the same event time
(`pipeline.alignment`: what runs ahead is carried, then paused), which a replay of unkeyed input
needs.

At least once, as before: a run of messages is repartitioned (`Ingest.repartition`), and the
offsets after it are committed only once Faust's producer has delivered what it sent (flushed
first), every `commit_interval_s`, when partitions are revoked, and on stop. A message read
twice (a crash before the commit, or a rebalance) is harmless: the journeys skip every event at
or below the source offset they have applied (`core.markers`).

The consumer has a group of its own, `<app_id>-ingest` (Faust's assignor is Faust's, and the
two cannot share a group). A partition it has no commit for starts where Faust's group had got
(the `ingest` agent of earlier versions: adopted at start), else at the earliest offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import ConsumerStoppedError, KafkaError

from streams.core.input.repartition import source_name
from streams.generations.naming import ingest_group
from streams.kafka.assignors import IngestAssignor
from streams.kafka.clients import new_consumer, start_with_retry
from streams.kafka.undecodable import GuardedConsumer, SkippedBatches, undecodable
from streams.pipeline.alignment import Alignment
from streams.pipeline.ingest import Ingest
from streams.ports import Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)


class SourceMessage(NamedTuple):
    """What ingest and the dead letters read of a clickstream record (Faust's names: the
    timestamp in seconds)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: float | None


def ingest_assignors(settings: Settings) -> tuple[Any, ...]:
    """The ingest group's protocols (`kafka.assignors`): ours, with this worker's wish, then
    aiokafka's round robin, which earlier versions used."""
    return (IngestAssignor(settings.ingest_assignment), RoundRobinPartitionAssignor)


class IngestConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reads the clickstream topics and hands each batch to `Ingest.repartition`."""

    def __init__(
        self,
        settings: Settings,
        ingest: Ingest,
        flush: Callable[[], Awaitable[None]],
        skipped: SkippedBatches,
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self._skipped = skipped  # batches that cannot be decoded: dead-lettered, then passed
        self._flush = flush  # waits until the producer has delivered what was sent
        self.topics = sorted(map(settings.topic, settings.topic_clickstream))
        self._consumer: AIOKafkaConsumer | None = None
        self._processed: dict[TopicPartition, int] = {}  # the next offset, after what was handled
        self._committed: dict[TopicPartition, int] = {}
        self._run_lock = asyncio.Lock()
        self._committed_at = time.monotonic()
        self._closing = False
        self._alignment = Alignment(
            bound_ms=max(1, ingest.late_tolerance_ms // 2),
            idle_s=settings.source_idle_s,
            read_committed=settings.ingest_isolation_level == "read_committed",
        )

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition, how many messages are not yet committed."""
        consumer, lag = self._consumer, {}
        for tp in self.assignment():
            highwater = consumer.highwater(tp) if consumer is not None else None
            if highwater is not None:
                lag[tp] = max(0, highwater - self._committed.get(tp, self._processed.get(tp, 0)))
        return lag

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return new_consumer(
            s,
            cls=GuardedConsumer,
            group_id=ingest_group(s),
            auto_offset_reset="earliest",
            isolation_level=s.ingest_isolation_level,
            max_poll_records=s.agent_batch_messages,
            max_partition_fetch_bytes=max(s.max_message_bytes * 2, 4_194_304),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            partition_assignment_strategy=ingest_assignors(s),
        )

    async def run(self, stopping: Stopping) -> None:
        consumer = self._consumer = self._new_consumer()
        if not await start_with_retry(consumer, "ingest", stopping):
            return
        await self._adopt_faust_offsets()
        consumer.subscribe(self.topics, listener=self)
        log.info("ingest: consuming %s (group %s)", ", ".join(self.topics), ingest_group(self.settings))
        while not stopping() and not self._closing:
            try:
                batch = await self._next_run(consumer)
            except ConsumerStoppedError:
                return
            async with self._run_lock:
                if self._closing:
                    return  # fetched, not handled: the next owner reads it from the commit
                if batch or self.ingest.carrying() or consumer.paused():
                    holding = await self._alignment.holding(consumer, batch)
                    await self._repartition(batch, {source_name(tp.topic, tp.partition) for tp in holding})
                    self._alignment.pace(consumer, holding, self.ingest.read_to, self.ingest.held_at)
                if time.monotonic() - self._committed_at >= self.settings.commit_interval_s:
                    await self._commit(self.assignment())

    async def _next_run(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """Up to `agent_batch_messages` records, an equal share from each assigned partition.

        `getmany` alone drains whichever partition's fetch came back first, so one partition
        could run far ahead of the others, and a person whose events are spread over partitions
        (unkeyed producers) would see later events before earlier ones, past the late tolerance.
        Shares keep the partitions in step, as Faust's round robin did, and a partition known to
        hold more than was fetched yet (or not fetched at all) is waited for, a batch window at
        most, before a run goes without it."""
        assigned = sorted(consumer.assignment() - consumer.paused())
        share = max(1, self.settings.agent_batch_messages // max(1, len(assigned)))
        window_ms = int(self.settings.agent_batch_window_s * 1000)
        run: dict[TopicPartition, list[Any]] = {}
        for tp in assigned:
            run.update(await consumer.getmany(tp, timeout_ms=0, max_records=share))
        if not run:
            return dict(await consumer.getmany(timeout_ms=window_ms, max_records=share))
        behind = [tp for tp in assigned if tp not in run and await self._holds_more(consumer, tp)]
        if behind:
            run.update(await consumer.getmany(*behind, timeout_ms=window_ms, max_records=share))
        return run

    async def _holds_more(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Whether the partition has records past our position (or was not fetched yet)."""
        highwater: int | None = consumer.highwater(tp)
        if highwater is None:
            return True
        position: int = await consumer.position(tp)
        return highwater > position

    async def _repartition(self, batch: dict[TopicPartition, list[Any]], holding: set[str]) -> None:
        messages, skipped_to = [], {}
        for tp, records in batch.items():
            for record in records:
                skipped = undecodable(record)
                if skipped is not None:
                    await self._skipped.report(tp.topic, tp.partition, skipped)
                    skipped_to[source_name(tp.topic, tp.partition)] = skipped.last_offset + 1
                    continue
                messages.append(
                    SourceMessage(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.value,
                        record.timestamp / 1000 if record.timestamp is not None else None,
                    )
                )
        await self.ingest.repartition(messages, holding)
        for source, next_offset in skipped_to.items():
            self.ingest.skipped(source, next_offset)
        for tp in self.assignment():  # not revoked while the run was being sent
            resume = self.ingest.resume_offset(source_name(tp.topic, tp.partition))
            if resume is not None:
                self._processed[tp] = resume

    async def _commit(self, partitions: Collection[TopicPartition]) -> None:
        """Commit what was handled in these partitions, once the producer has delivered it."""
        self._committed_at = time.monotonic()
        offsets = {
            tp: offset
            for tp, offset in self._processed.items()
            if tp in partitions and offset != self._committed.get(tp)
        }
        if not offsets or self._consumer is None:
            return
        await self._flush()
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance under way: the next owner reads these again
            log.warning(
                "ingest: commit of %d partitions failed (%s); they will be read again", len(offsets), exc
            )
            return
        self._committed.update(offsets)

    # ---- the rebalance listener -----------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self._run_lock:  # the run in flight is sent and committed first
            await self._commit(revoked)
        for tp in revoked:
            self._processed.pop(tp, None)
            self._committed.pop(tp, None)
        self._alignment.forget(revoked)
        self.ingest.forget_sources(source_name(tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        # each starts at its committed offset (or as `_adopt_faust_offsets` seeded it)
        log.info(
            "ingest: reading partitions [%s] (assignment %s)",
            ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(assigned)),
            self.settings.ingest_assignment,
        )

    async def _adopt_faust_offsets(self) -> None:
        """Commit, for the ingest group, where Faust's group (the ingest agent before this
        consumer) had got in every partition the ingest group has no commit for yet."""
        faust_group = new_consumer(self.settings, group_id=self.settings.app_id)
        ours = new_consumer(self.settings, group_id=ingest_group(self.settings))
        try:
            await faust_group.start()
            await ours.start()
            await faust_group.topics()  # the cluster's metadata, with our topics' partitions
            seed: dict[TopicPartition, int] = {}
            for topic in self.topics:
                for partition in sorted(faust_group.partitions_for_topic(topic) or ()):
                    tp = TopicPartition(topic, partition)
                    if await ours.committed(tp) is None:
                        offset = await faust_group.committed(tp)
                        if offset is not None:
                            seed[tp] = offset
            if seed:
                ours.assign(list(seed))
                await ours.commit(seed)
            for tp, offset in seed.items():
                log.info(
                    "ingest: %s[%d] starts at offset %d, where the Faust agent had got",
                    tp.topic,
                    tp.partition,
                    offset,
                )
        except KafkaError as exc:
            log.warning(
                "ingest: could not adopt the Faust group's offsets (%s); new ones start at the earliest",
                exc,
            )
        finally:
            for client in (ours, faust_group):
                with contextlib.suppress(Exception):
                    await client.stop()

    async def close(self) -> None:
        """Commit what was handled (the run in flight first), then leave the group."""
        self._closing = True
        if self._consumer is None:
            return
        try:
            async with self._run_lock:
                await self._commit(self.assignment())
        except Exception as exc:  # the producer may be gone: the next owner reads them again
            log.warning("ingest: final commit failed (%s)", exc)
        with contextlib.suppress(Exception):
            await self._consumer.stop()
