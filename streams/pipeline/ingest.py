"""The ingest agent: raw clickstream messages in, repartitioned batches of valid events out.

Each raw message is decoded once (`core.events.decode_message`: an event or a collector's batch
array); what is invalid is dead-lettered; the valid events are repartitioned by identity
(`user_id`, else `anonymous_id`): ONE message per source and target partition per run
(`core.repartition.RepartitionBatch`), carrying the source's watermark, each event with the
offset of the input message it came from. A timer repeats the watermarks to partitions that got
no events, and says when a source has gone idle, so event time moves on everywhere.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.types import TP

from streams.core.engine import partition_for
from streams.core.events import ClickEvent, Rejection, decode_message
from streams.core.formats.detect import format_for
from streams.core.repartition import PendingBatch, RepartitionBatch, source_name
from streams.metrics import Metrics
from streams.settings import Settings

log = logging.getLogger(__name__)

SendBatch = Callable[[int, RepartitionBatch], Awaitable[None]]
"""Send a batch to a partition of the internal events topic."""
DeadLetter = Callable[[Iterable[Rejection], Any], Awaitable[None]]
"""Publish the rejections of a message (the Faust message they came from) as dead letters."""


class Ingest:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        send: SendBatch,
        dead_letter: DeadLetter,
        assignment: Callable[[], set[TP]],
        home_partition: Callable[[ClickEvent], int] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._home_partition = home_partition or (
            lambda click: partition_for(click.identity, settings.partitions)
        )
        self._send = send
        self._dead_letter = dead_letter
        self._assignment = assignment
        self.source_topics = frozenset(map(settings.topic, settings.topic_clickstream))
        self._input_formats = settings.input_formats  # CONVERSIONS_INPUT_FORMAT, by topic
        # per source, how far its event time has got and when it last had input
        self._source_watermarks: dict[str, int] = {}
        self._source_seen_at: dict[str, float] = {}
        self._announced: dict[tuple[str, int], tuple[int | None, float]] = {}

    async def repartition(self, messages: list[Any]) -> None:
        """Repartition the valid events of a run of clickstream messages: one batch per source
        and target partition (more when they grow past `max_message_bytes`), each sent with
        its source's watermark once it holds every event that watermark covers."""
        latest_ms = int((time.time() + self.settings.max_future_skew_s) * 1000)
        pending: dict[tuple[str, int], PendingBatch] = {}
        watermarks: dict[str, int] = {}
        for message in messages:
            decoded = decode_message(
                message.value,
                max_bytes=self.settings.max_message_bytes,
                max_batch=self.settings.max_batch_events,
                latest_ms=latest_ms,
                format=format_for(self._input_formats, message.topic),
            )
            if decoded.ignored:  # valid, nothing for the engine: Segment's group calls
                self.metrics.ignored.labels(decoded.format).inc(decoded.ignored)
            if decoded.rejects:
                await self._dead_letter(decoded.rejects, message)
            self.metrics.events_in.inc(len(decoded.events))
            source = source_name(message.topic, message.partition)
            self._source_seen_at[source] = time.monotonic()
            if not decoded.events:
                continue
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for click in decoded.events:
                by_partition[self._home_partition(click)].append(click.to_json_dict())
            size = len(message.value or b"")
            before = watermarks.get(source, self._source_watermarks.get(source, 0))
            for partition in by_partition:
                batch = pending.get((source, partition))
                if batch is not None and batch.size + size > self.settings.max_message_bytes:
                    # the watermark so far covers what it holds, and nothing it lacks
                    await self._send_batch(partition, batch.build(source, before))
                    del pending[(source, partition)]
            watermarks[source] = max(before, *(c.ts_ms for c in decoded.events))
            for partition, items in by_partition.items():
                pending.setdefault((source, partition), PendingBatch()).add(items, message.offset, size)
        for (source, partition), batch in pending.items():
            await self._send_batch(partition, batch.build(source, watermarks[source]))
        # Only now may the heartbeat timer repeat them: had it run during the sends above, a
        # partition could learn a watermark before receiving the events it covers.
        self._source_watermarks.update(watermarks)

    async def _send_batch(self, partition: int, batch: RepartitionBatch) -> None:
        """Ingest's send: remembered as announced, for the heartbeat timer."""
        self._announced[(batch.source, partition)] = (
            None if batch.idle else batch.watermark,
            time.monotonic(),
        )
        await self._send(partition, batch)

    async def announce_watermarks(self) -> None:
        """Tell every partition how far each of our sources has got, or that it is idle.

        A source is ours while this worker's consumer is assigned it. A change is sent at
        once; an unchanged state again every `watermark_refresh_s`, so that a journey
        partition that moved to another worker learns it too.
        """
        now = time.monotonic()
        ours = {
            source_name(tp.topic, tp.partition) for tp in self._assignment() if tp.topic in self.source_topics
        }
        for source in set(self._source_seen_at) - ours:  # revoked: its new owner speaks for it
            self._source_seen_at.pop(source)
            self._source_watermarks.pop(source, None)
        for source in ours:
            self._source_seen_at.setdefault(source, now)
        idle_before = now - self.settings.source_idle_s
        stale_before = now - self.settings.watermark_refresh_s
        for source, seen_at in list(self._source_seen_at.items()):
            idle = seen_at < idle_before
            watermark = None if idle else self._source_watermarks.get(source)
            if watermark is None and not idle:
                continue  # assigned, no event yet, not idle yet: nothing to say
            if idle and any(
                self._announced.get((source, p), (-1, 0.0))[0] is not None
                for p in range(self.settings.partitions)
            ):
                log.info(
                    "source %s is idle (nothing for %.0f s): event time no longer waits for it",
                    source,
                    self.settings.source_idle_s,
                )
            for partition in range(self.settings.partitions):
                announced, sent_at = self._announced.get((source, partition), (-1, 0.0))
                if announced != watermark or sent_at < stale_before:
                    await self._send_batch(partition, RepartitionBatch(source, watermark, [], idle=idle))
