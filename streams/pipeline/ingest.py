"""The ingest agent: raw clickstream messages in, repartitioned batches of valid events out.

Each raw message is decoded once (`core.events.decode_message`: an event or a collector's batch
array); what is invalid is dead-lettered; the valid events are repartitioned by identity
(`user_id`, else `anonymous_id`): ONE message per source and target partition per run
(`core.repartition.RepartitionBatch`), carrying the source's watermark, each event with the
offset of the input message it came from. Right after each run, the partitions that got no
events of a source learn how far it has got (`announce_when_moved`), and a timer repeats the
watermarks and says when a source has gone idle, so event time moves on everywhere.

The hold watermark of a journey partition (what a stitched event held there waits for at most) is
the slowest of every source's progress as every partition has seen it: had a partition that got
nothing of a source learnt its watermark only at the next tick of the timer, every held event
would wait up to that interval for it. With stitching, an event carrying both ids also gives its
user's partition a link notice (`core.journeys.notices`), in the batch of its source for that
partition: what lets a person's held events wait only for the partitions they could conflict
with.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from faust.types import TP

from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.input.formats.detect import format_for
from streams.core.input.rejection import Rejection
from streams.core.input.repartition import PendingBatch, RepartitionBatch, source_name
from streams.core.journeys.engine import partition_for
from streams.core.journeys.notices import Notice
from streams.metrics import Metrics
from streams.ports import Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

UNREAD = -(2**62)
"""`Ingest.held_at` of a source nothing was read from yet."""

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
        late_tolerance_ms: int = 10 * 60_000,
        notice_for: Callable[[ClickEvent], tuple[int, Notice] | None] | None = None,
    ) -> None:
        """`notice_for` (the engine's, with identity stitching across partitions): the link
        notice an event carrying both ids gives its user's partition (`core.journeys.notices`),
        sent in the same batch as the source's other events for that partition."""
        self.settings = settings
        self.late_tolerance_ms = late_tolerance_ms
        self._flush_after_ms = max(1, late_tolerance_ms // 2)
        self.metrics = metrics
        self._home_partition = home_partition or (
            lambda click: partition_for(click.identity, settings.partitions)
        )
        self._notice_for = notice_for
        self._send = send
        self._dead_letter = dead_letter
        self._assignment = assignment
        self.source_topics = frozenset(map(settings.topic, settings.topic_clickstream))
        self._input_formats = settings.input_formats  # CONVERSIONS_INPUT_FORMAT, by topic
        self.enricher = settings.enrichment().build()
        self.ready: asyncio.Event | None = None
        """Set once the erased ids are loaded (`streams.kafka.erasures`): ingest waits for it."""
        """Audience, IP mode, bots, consent and erasures, before anything is repartitioned."""
        # per source, how far its event time has got and when it last had input
        self._source_watermarks: dict[str, int] = {}
        self._source_seen_at: dict[str, float] = {}
        self._announced: dict[tuple[str, int], tuple[int | None, float]] = {}
        # per source, messages decoded but held back for the next run, and the offset after
        # the last message handled
        self._carried: dict[str, list[tuple[int, Any, list[ClickEvent]]]] = defaultdict(list)
        self._handled_next: dict[str, int] = {}
        self._moved = asyncio.Event()  # a run moved a source's watermark on
        # per source, the latest event time read (sent or carried): how far it has been read
        self._read_to: dict[str, int] = {}
        self._unkeyed = False  # once a run held one person's events in two sources

    def read_to(self, source: str) -> int | None:
        """The latest event time read from the source (sent or carried), None before any."""
        return self._read_to.get(source)

    def held_at(self, source: str) -> int | None:
        """Where a source with records still to read holds event time back: the latest event
        time read from it; before anything was read from it, the earliest there is (what comes
        may be anything); None when what was read held no event (a partition of invalid or
        screened messages must not stop the others)."""
        at = self._read_to.get(source)
        if at is None and source not in self._handled_next:
            return UNREAD
        return at

    async def repartition(self, messages: list[Any], holding: Collection[str] | None = None) -> None:
        """Repartition the valid events of a run of clickstream messages: one batch per source
        and target partition (more when they grow past `max_message_bytes`), each sent with
        its source's watermark once it holds every event that watermark covers.

        Messages are taken in event-time order across the sources (each source's own order
        kept). When a person's events are spread over the sources (unkeyed producers), a
        pending batch holding a person's events is sent before another source's next event of
        theirs joins its own batch (a person is in one pending batch of a partition at a time),
        so that the journey gets them in event-time order. Without `holding`, a source's
        messages more than half the late tolerance past where another source of the run stops
        are carried to the next run (`resume_offset`). A run without new messages sends what
        was carried. Keyed input, and live traffic, make one send a run and carry nothing.

        `holding` (the ingest consumer's) names the sources that still hold event time back:
        assigned, with records known past what was read. No message is then sent whose
        earliest event is later than where every holding source has been read to (in this run
        or an earlier one): what such a source delivers next is not earlier than that (each
        partition in time order), so a person's events reach their journey in event-time order
        across the sources, however the input is keyed (whether it is cannot be known before
        the first runs have been sent). A source read to its end holds nothing back."""
        if self.ready is not None and not self.ready.is_set():
            await self.ready.wait()
        latest_ms = self.settings.latest_accepted_ms()
        by_source, self._carried = self._carried, defaultdict(list)
        for source in by_source:  # what was carried is news from its source too
            self._source_seen_at[source] = time.monotonic()
        for message in messages:
            decoded = decode_message(
                message.value,
                max_bytes=self.settings.max_message_bytes,
                max_batch=self.settings.max_batch_events,
                max_nesting=self.settings.max_nesting,
                latest_ms=latest_ms,
                format=format_for(self._input_formats, message.topic),
                enricher=self.enricher,
            )
            if decoded.screened:
                for reason, count in decoded.screened.items():
                    self.metrics.screened.labels(reason).inc(count)
            bots = decoded.screened.get("bot", 0) + sum(
                1 for click in decoded.events if click.audience is not None and click.audience.bot
            )
            if bots:
                self.metrics.bots.inc(bots)
            if decoded.ignored:  # valid, nothing for the engine: Segment's group calls
                self.metrics.ignored.labels(decoded.format).inc(decoded.ignored)
            if decoded.unknown_fields:
                for name in self.metrics.count_unknown_fields(decoded.unknown_fields):
                    log.warning(
                        "events on %s[%d] carry a field the contract does not have, %s: ignored, and "
                        "counted in conversions_unknown_fields_total (a typo of a contract field?)",
                        message.topic,
                        message.partition,
                        ascii(name),
                    )
            if decoded.rejects:
                await self._dead_letter(decoded.rejects, message)
            self.metrics.events_in.inc(len(decoded.events))
            source = source_name(message.topic, message.partition)
            self._source_seen_at[source] = time.monotonic()
            self._handled_next[source] = message.offset + 1
            if decoded.events:
                earliest = min(c.ts_ms for c in decoded.events)
                latest = max(c.ts_ms for c in decoded.events)
                self._read_to[source] = max(latest, self._read_to.get(source, latest))
                by_source[source].append((earliest, message, decoded.events))
        spread = self._unkeyed = self._unkeyed or _spread_over_sources(by_source)
        until = None
        if holding is not None:
            # a holding source nothing was read from yet may hold anything: carry all
            found = [at for at in map(self.held_at, holding) if at is not None]
            until = min(found, default=None)
        elif messages and spread:
            until = min(found[-1][0] for found in by_source.values() if found) + self._flush_after_ms
        pending: dict[tuple[str, int], PendingBatch] = {}
        # per journey partition and person, the pending batch their events are in (spread input)
        holders: dict[tuple[int, str | None], tuple[str, PendingBatch]] = {}
        watermarks: dict[str, int] = {}
        in_time_order = heapq.merge(*by_source.values(), key=lambda found: found[0])
        for earliest, message, events in in_time_order:
            source = source_name(message.topic, message.partition)
            if (until is not None and earliest > until) or source in self._carried:
                self._carried[source].append((earliest, message, events))
                continue
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            people: list[tuple[int, str | None]] = []
            notice_for = self._notice_for
            for click in events:
                partition = self._home_partition(click)
                by_partition[partition].append(click.to_json_dict())
                people.append((partition, click.anonymous_id or click.user_id))
                if notice_for is not None and (noticed := notice_for(click)) is not None:
                    by_partition[noticed[0]].append(noticed[1].encode())
            if spread:
                for other, partition in _interleaved(people, source, holders, pending):
                    # the person's earlier events, from another source, go first
                    earlier = pending.pop((other, partition))
                    await self._send_batch(partition, earlier.build(other, watermarks[other]))
            size = len(message.value or b"")
            before = watermarks.get(source, self._source_watermarks.get(source, 0))
            for partition in by_partition:
                batch = pending.get((source, partition))
                if batch is not None and batch.size + size > self.settings.max_message_bytes:
                    # the watermark so far covers what it holds, and nothing it lacks
                    await self._send_batch(partition, batch.build(source, before))
                    del pending[(source, partition)]
            watermarks[source] = max(before, *(c.ts_ms for c in events))
            for partition, items in by_partition.items():
                pending.setdefault((source, partition), PendingBatch()).add(items, message.offset, size)
            if spread:
                for person in people:
                    holders[person] = (source, pending[(source, person[0])])
        await self._send_pending(pending, watermarks)
        # Only now may the heartbeat timer repeat them: had it run during the sends above, a
        # partition could learn a watermark before receiving the events it covers.
        moved = any(self._source_watermarks.get(source) != at for source, at in watermarks.items())
        self._source_watermarks.update(watermarks)
        now = time.monotonic()
        for source in watermarks:  # what was carried is news from its source too
            self._source_seen_at[source] = now
        if moved:
            self._moved.set()

    async def announce_when_moved(self, stopping: Stopping, poll_s: float = 0.5) -> None:
        """Announce the watermarks (`announce_watermarks`: only what changed) right after each
        run that moved one, until `stopping`: a service beside the ingest consumer."""
        while not stopping():
            try:
                await asyncio.wait_for(self._moved.wait(), poll_s)
            except TimeoutError:
                continue
            self._moved.clear()
            await self.announce_watermarks()

    def skipped(self, source: str, next_offset: int) -> None:
        """Offsets up to `next_offset` of the source were dealt with outside a run (an
        undecodable batch, dead-lettered)."""
        self._handled_next[source] = max(self._handled_next.get(source, 0), next_offset)

    def carrying(self) -> bool:
        """Whether messages were held back for the next run."""
        return any(self._carried.values())

    def resume_offset(self, source: str) -> int | None:
        """Where a successor must start reading the source: the first message carried to the
        next run, else the one after the last handled (None: nothing handled yet)."""
        carried = self._carried.get(source)
        return carried[0][1].offset if carried else self._handled_next.get(source)

    def forget_sources(self, sources: Iterable[str]) -> None:
        """Revoked: what was carried of them is their new owner's to read."""
        for source in sources:
            self._carried.pop(source, None)
            self._handled_next.pop(source, None)
            self._read_to.pop(source, None)

    async def _send_pending(
        self, pending: dict[tuple[str, int], PendingBatch], watermarks: dict[str, int]
    ) -> None:
        """Send every pending batch with its source's watermark so far, and forget them."""
        for (source, partition), batch in pending.items():
            await self._send_batch(partition, batch.build(source, watermarks[source]))
        pending.clear()

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
            idle = seen_at < idle_before and not self._carried.get(source)  # carried: read, not sent
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


def _interleaved(
    people: Iterable[tuple[int, str | None]],
    source: str,
    holders: Mapping[tuple[int, str | None], tuple[str, PendingBatch]],
    pending: Mapping[tuple[str, int], PendingBatch],
) -> list[tuple[str, int]]:
    """The pending batches (source, journey partition) of other sources that hold earlier events
    of these people (journey partition, identity)."""
    found = set()
    for person in people:
        held = holders.get(person)
        if held is not None and held[0] != source and pending.get((held[0], person[0])) is held[1]:
            found.add((held[0], person[0]))
    return sorted(found)


def _spread_over_sources(by_source: Mapping[str, list[tuple[int, Any, list[ClickEvent]]]]) -> bool:
    """Whether some identity has events from two sources: unkeyed input, whose order across the
    sources the run must keep."""
    seen: dict[str | None, str] = {}
    for source, found in by_source.items():
        for _, _, events in found:
            for click in events:
                if seen.setdefault(click.anonymous_id or click.user_id, source) != source:
                    return True
    return False
