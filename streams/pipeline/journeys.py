"""The journeys agent: repartitioned batches in, outputs out, journeys kept in a changelog-backed
table.

Each event is applied to its identity's journey (`core.engine.Engine`, in event time); the
batch's watermark moves the partition's event time, which fires the deadlines it makes due
(drop-offs, closed sessions). A run's outputs are published first, then each journey the run
changed is written to the changelog once, then the applied markers (`core.markers`), all
awaited before the run is acked, so a crash repeats outputs (deduplicated downstream by id) but
never loses them, and redelivered input is skipped by the markers.

With identity stitching the run also forwards what belongs to people whose journeys live on
other partitions (`core.identity`): the items each partition's events produced, then how far
the partition has got through its own input (its forwarder watermark, `journeys/N`), sent after
the outputs and before the journeys and markers are written, so a crash repeats them (the
receiving partition's marker for `journeys/N` skips what it has applied) but never loses them.

After every rebalance the deadlines of the partitions this worker now owns are indexed again,
what it keeps of other partitions is dropped, and each recovered partition is reminded of the
watermarks its sources had reached. Before Faust's recovery, the journeys store reads its
changelog partitions to their true end itself (`read_changelog`, through `kafka.changelog`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from faust.types import TP

from streams.core.config.model import FunnelConfig
from streams.core.config.versions import Definition, config_fingerprint, diff_configs
from streams.core.input.deadletter import placed, with_original
from streams.core.input.event import ClickEvent
from streams.core.input.rejection import Rejection
from streams.core.input.repartition import PendingBatch, RepartitionBatch, source_of
from streams.core.journeys.engine import Engine
from streams.core.journeys.identity import forwarder_source, is_forwarder
from streams.core.journeys.markers import (
    applied_marker,
    config_marker,
    is_config_marker,
    is_marker,
    marker_source,
    marker_value,
    parse_marker,
    partition_of_key,
)
from streams.core.journeys.notices import is_notice
from streams.core.records.outputs import DeadLetter as DeadLetterRecord
from streams.core.records.outputs import OutputEvent
from streams.kafka.changelog import read_to_end
from streams.pipeline.durable_table import DurableTable
from streams.pipeline.ingest import DeadLetter, SendBatch
from streams.pipeline.stores import JourneyMemoryStore
from streams.ports import Publisher
from streams.settings import Settings

log = logging.getLogger(__name__)

ReadSource = Callable[[str, int, int], Awaitable[bytes | None]]
"""Reads a source message's value back by topic, partition and offset (`kafka.SourceReader`)."""

READ_BACK_BUDGET_S = 5.0
"""How long one run may spend reading late events' source messages back for their dead letters."""

MAX_DEFINITIONS = 64
"""Funnel versions a partition remembers the definition of (the latest; an attempt written under
an older one ends as `definition_changed` with its step as #k)."""


def _erased(erased: dict[str, int], click: ClickEvent) -> bool:
    for identity in (click.user_id, click.anonymous_id):
        at = erased.get(identity) if identity is not None else None
        if at is not None and click.ts_ms <= at:
            return True
    return False


class Journeys:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        state: DurableTable,
        table: Any,
        publisher: Publisher,
        send: SendBatch,
        dead_letter: DeadLetter,
        assignment: Callable[[], set[TP]],
        assignor: Callable[[], Any],
        read_source: ReadSource | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.state = state
        self.table = table
        self._publisher = publisher
        self._send = send
        self._dead_letter = dead_letter
        self._assignment = assignment
        self._assignor = assignor
        self._read_source = read_source
        self.active_partitions: set[int] = set()
        self.lock = asyncio.Lock()
        """Held by each run and by an erasure, so that an erasure's changelog writes never go
        out in the middle of a run (before the run's outputs are published)."""
        self.erased: dict[str, int] = {}
        """Erased ids and the moment of their erasure (ms), shared with ingest
        (`streams.kafka.erasures`): their events stamped before it, repartitioned before the
        erasure was known, are not applied either."""
        self._progress_sent: dict[tuple[int, int], tuple[int | None, float]] = {}

    async def apply(self, messages: list[Any]) -> None:
        """Apply a run of repartition batches: outputs published and journeys written to the
        changelog once for the run, each partition's outputs before its journeys and applied
        markers, so a crash in between repeats outputs (deduplicated downstream by id) but
        never loses them."""
        async with self.lock:
            await self._apply(messages)

    async def forget(self, identity: str, at_ms: int) -> int:
        """An erasure: the person's journey and link stubs held on this worker's partitions
        deleted (tombstones in the changelog); the number of journeys deleted."""
        self.erased[identity] = max(at_ms, self.erased.get(identity, at_ms))
        async with self.lock:
            deleted = self.engine.forget(identity)
            self.engine.flush()
            if deleted:
                await self.state.write_changelog()
        return len(deleted)

    async def forget_recovered(self) -> None:
        """After a recovery: what was erased is deleted again from the partitions recovered (a
        changelog not yet compacted may have brought a journey back from before its tombstone)."""
        for identity, at_ms in list(self.erased.items()):
            await self.forget(identity, at_ms)

    async def _apply(self, messages: list[Any]) -> None:
        assigned = self._assignment()
        outputs: dict[int, list[OutputEvent]] = defaultdict(list)
        applied_now: dict[str, tuple[int, int | None]] = {}
        forwards: dict[tuple[int, int], PendingBatch] = {}
        for message in messages:
            try:
                batch = RepartitionBatch.decode(message.value)
            except ValueError as exc:  # only a foreign producer on the internal topic
                self.engine.flush()  # nothing of the run waits in the engine across an await
                await self._dead_letter([Rejection("invalid_json", str(exc), message.value or b"")], message)
                continue
            partition = message.partition
            if partition not in self.active_partitions or message.tp not in assigned:
                continue  # revoked while in flight: its new owner processes it
            marker = applied_marker(partition, batch.source)
            known = applied_now.get(marker)
            if known is None:
                raw = self.state.get(marker)
                known = parse_marker(raw) if raw is not None else (-1, None)
            applied, watermark = known
            if batch.offset is not None and batch.offset <= applied:
                continue  # redelivered (ingest or journeys crashed): already in the table
            produced = outputs[partition]
            forwarded = is_forwarder(batch.source)
            source_position = None if forwarded else source_of(batch.source)
            for item, offset in zip(batch.events, batch.event_offsets(), strict=True):
                if offset is not None and offset <= applied:
                    continue  # applied before, in a batch gathered differently
                try:
                    if forwarded:
                        produced.extend(self.engine.accept(partition, item))
                        continue
                    if is_notice(item):
                        self.engine.notice(partition, item)
                        continue
                    click = ClickEvent.trusted(item)  # ours, validated at ingest
                    if self.erased and _erased(self.erased, click):
                        continue
                except (TypeError, ValueError) as exc:
                    self.engine.flush()
                    await self._dead_letter(
                        [Rejection("invalid_event", str(exc), orjson.dumps(item))], message
                    )
                    continue
                where = (*source_position, offset) if source_position is not None else None
                refused_or_not = self.engine.process(click, partition, where)
                if refused_or_not and source_position is not None:
                    refused_or_not = placed(refused_or_not, *source_position, offset)
                produced.extend(refused_or_not)
            for target, forward in self.engine.outbox:
                forwards.setdefault((partition, target), PendingBatch()).add(
                    [forward.encode()], message.offset, 0
                )
            self.engine.outbox.clear()
            if batch.idle:
                produced.extend(self.engine.forget_source(partition, batch.source))
            elif batch.watermark is not None:
                produced.extend(self.engine.observe(partition, batch.source, batch.watermark))
            # heartbeats move the remembered watermark too: some partitions only ever hear
            # a source's last watermark from one
            advanced = not batch.idle and (batch.watermark or 0) > (watermark or 0)
            if batch.offset is not None or advanced:
                applied_now[marker] = (
                    applied if batch.offset is None else batch.offset,
                    batch.watermark if advanced else watermark,
                )
        # The run's journeys, decoded once, are written to the table once each (the engine's
        # cache), then the markers, after every journey of the run in their changelog partitions: a
        # crash part way through the writes then leaves them behind, and the replay re-applies
        # events whose journeys were written (their event ids make that harmless) rather than
        # skipping events whose journeys were not.
        self.engine.flush()
        for marker, (offset, watermark) in applied_now.items():
            self.state[marker] = marker_value(offset, watermark)
        read_back_until = time.monotonic() + READ_BACK_BUDGET_S
        for partition, produced in outputs.items():
            if self._read_source is not None and any(o.type == "deadletter" for o in produced):
                produced[:] = [await self._with_source_bytes(output, read_back_until) for output in produced]
            await self._publisher.publish(produced, partition)
        await self._forward(forwards)
        await self.state.write_changelog()

    async def _with_source_bytes(self, output: OutputEvent, until: float) -> OutputEvent:
        """A dead letter the engine made (a late event) with the source message's own bytes,
        read back from where ingest read it: the engine only had the event re-encoded. Past
        `until` (the run's budget: a replay can make many late events at once, and the run waits
        on every read), the re-encoded event stays."""
        if not isinstance(output, DeadLetterRecord) or output.source_offset is None:
            return output
        if time.monotonic() >= until:
            return output
        if output.reason != "late_event" or output.source_topic is None or output.source_partition is None:
            return output
        assert self._read_source is not None
        original = await self._read_source(output.source_topic, output.source_partition, output.source_offset)
        return with_original(output, original)

    async def _forward(self, forwards: dict[tuple[int, int], PendingBatch]) -> None:
        """Send each partition's items for others, each batch with the partition's progress
        through its own input; then that progress, where it changed, to every other partition
        (and again every `watermark_refresh_s`, for a partition that moved to another worker)."""
        if not self.engine.forwarding:
            return
        now = time.monotonic()
        stale_before = now - self.settings.watermark_refresh_s
        for (partition, target), pending in forwards.items():
            batch = pending.build(forwarder_source(partition), self.engine.progress(partition))
            await self._send(target, batch)
            self._progress_sent[(partition, target)] = (batch.watermark, now)
        for partition in sorted(self.active_partitions):
            progress = self.engine.progress(partition)
            if progress is None:
                continue
            for target in range(self.settings.partitions):
                if target == partition:
                    continue
                sent, sent_at = self._progress_sent.get((partition, target), (None, 0.0))
                if sent != progress or sent_at < stale_before:
                    await self._send(target, RepartitionBatch(forwarder_source(partition), progress, []))
                    self._progress_sent[(partition, target)] = (progress, now)

    async def rebuild_deadlines(self) -> None:
        """After recovery (start or rebalance): index the deadlines of the partitions this worker
        now owns, and drop what it keeps of partitions it neither owns nor stands by for.

        The journeys agent writes the store directly (`DurableTable`), past Faust's key-to-
        partition bookkeeping, so a memory store would otherwise keep revoked journeys, and
        their deadlines would fire here as well as on their new owner."""
        topic = self.settings.topic(self.settings.topic_events)
        assignor = self._assignor()
        active = {tp.partition for tp in assignor.assigned_actives() if tp.topic == topic}
        standby = {tp.partition for tp in assignor.assigned_standbys() if tp.topic == topic}
        self.active_partitions = active
        released = set(range(self.settings.partitions)) - active
        # before evicting: a store on disk must not keep a position past what it has dropped
        self.state.forget_partitions(released - standby)
        by_partition: dict[int, list[str]] = defaultdict(list)
        markers: list[tuple[int, str]] = []
        dropped = 0
        for key in list(self.state):
            partition = partition_of_key(key, self.settings.partitions)
            if partition in active:
                if is_config_marker(key):
                    continue
                if is_marker(key):
                    markers.append((partition, key))
                else:
                    by_partition[partition].append(key)
            elif partition not in standby:
                self.state.evict(key)
                dropped += 1
        self.engine.release_partitions(released)
        await self._settle_versions(sorted(active))
        total = sum(self.engine.rebuild_deadlines(p, by_partition.get(p, [])) for p in sorted(active))
        self._notices_lost(markers)
        await self._remind_watermarks(markers)
        changelog = self.table.changelog_topic.get_topic_name()
        positions = {p: self.table.persisted_offset(TP(changelog, p)) for p in sorted(active)}
        log.info(
            "journeys recovered: %d journeys in partitions %s indexed for deadlines "
            "(changelog positions %s; standby for %s; %d keys of other workers' partitions dropped)",
            total,
            sorted(active),
            positions,
            sorted(standby) or "none",
            dropped,
        )

    async def _settle_versions(self, partitions: list[int]) -> None:
        """Before any journey is read: learn the funnel versions the partitions' journeys were
        written under (their attempts are then carried over or ended by the version rules), log
        what changed since (what `conversions diff-config` says), and record the current ones."""
        current = self.engine.config.source
        fingerprint = config_fingerprint(current)
        changed: dict[str, FunnelConfig] = {}
        definitions: dict[str, Definition] = {}
        for partition in partitions:
            raw = self.state.get(config_marker(partition))
            if raw is None:
                continue
            saved = orjson.loads(raw)
            definitions.update({d["version"]: Definition.from_json(d) for d in saved["definitions"]})
            if saved["fingerprint"] != fingerprint:
                changed.setdefault(saved["fingerprint"], FunnelConfig.from_dump(saved["config"]))
        self.engine.machine.remember(definitions.values())
        for before in changed.values():
            log.info("the configuration differs from the one the journeys were written under:")
            for change in diff_configs(before, current):
                if change.status != "unchanged":
                    log.info("  %s", change.line())
        for definition in self.engine.config.funnels:
            if definition.definition is not None:
                definitions[definition.version] = definition.definition
        record = orjson.dumps(
            {
                "fingerprint": fingerprint,
                "config": current.model_dump(mode="json"),
                "definitions": [d.to_json() for d in list(definitions.values())[-MAX_DEFINITIONS:]],
            }
        )
        for partition in partitions:
            if self.state.get(config_marker(partition)) != record:
                self.state[config_marker(partition)] = record
        await self.state.write_changelog()

    def _notices_lost(self, markers: list[tuple[int, str]]) -> None:
        """The link notices a recovered partition was sent before are not kept: up to how far
        its own sources had got (its applied markers), its held events wait for every partition
        again (`Engine.notices_lost_until`)."""
        reached: dict[int, int] = {}
        for partition, key in markers:
            if is_forwarder(marker_source(key)):
                continue
            _, watermark = parse_marker(self.state[key])
            if watermark is not None:
                reached[partition] = max(watermark, reached.get(partition, watermark))
        for partition, at in reached.items():
            self.engine.notices_lost_until(partition, at)

    async def _remind_watermarks(self, markers: list[tuple[int, str]]) -> None:
        """Tell each recovered partition again how far its sources had got, as heartbeats on its
        own input: the journeys agent then fires what that makes due. A source whose input is
        all consumed and committed would otherwise never speak again, and the deadlines it had
        made due before a restart would wait for it to go idle."""
        for partition, key in markers:
            _, watermark = parse_marker(self.state[key])
            if watermark is not None:
                await self._send(partition, RepartitionBatch(marker_source(key), watermark, []))

    def changelog_partitions(self, assigned: set[TP]) -> list[int]:
        topics = {
            self.settings.topic(self.settings.topic_events),
            self.table.changelog_topic.get_topic_name(),
        }
        return sorted({tp.partition for tp in assigned if tp.topic in topics})

    async def read_changelog(self, store: Any, partitions: list[int]) -> None:
        """Read journeys changelog partitions from where the store is to their true end."""
        changelog = self.table.changelog_topic.get_topic_name()
        json_keys = isinstance(store, JourneyMemoryStore)

        def apply(partition: int, records: Sequence[Any], reported_end: int) -> int:
            keys: Any = (r.key or b"null" for r in records)
            if json_keys:
                keys = (orjson.loads(key) for key in keys)
            applied: int = store.apply_read(
                TP(changelog, partition),
                ((key, r.value, r.offset) for key, r in zip(keys, records, strict=True)),
                reported_end,
            )
            return applied

        await read_to_end(
            self.settings,
            changelog,
            partitions,
            lambda partition: int(store.position(TP(changelog, partition))),
            apply,
            name="journeys",
        )
