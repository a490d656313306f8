"""The Faust app: topics, the journeys table, and the ingest and journey agents.

A thin adapter. Parsing lives in `core.events`, journeys in `core.engine`; this module moves
bytes between Kafka and those functions.

Faust's cost is per message, not per event, so both agents take runs of messages
(`take_events`, up to `agent_batch_messages` or `agent_batch_window_s`) and Faust acks a run
once it is done. Ingest reads raw clickstream messages, dead-letters what is invalid, and
repartitions the valid events by identity: ONE message per source and target partition per
run (`RepartitionBatch`), carrying the source's watermark; a timer repeats the watermarks to
partitions that got no events, and says when a source has gone idle. The journey agent
applies each event to the identity's journey, held in a changelog-backed table whose
changelog partition is the message's partition, publishes the outputs keyed by identity,
and writes each journey the run changed once.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from pydantic import ValidationError

from streams.alerts.service import WATERMARK_HEADER, Alerting
from streams.core.deadletter import dead_letter
from streams.core.engine import Engine, partition_for
from streams.core.events import ClickEvent, Rejection, decode_message
from streams.core.matching import CompiledConfig
from streams.core.outputs import OutputEvent
from streams.core.repartition import PendingBatch, RepartitionBatch, source_name
from streams.counters.consumer import Counting
from streams.kafka import consumer_options
from streams.metrics import Metrics
from streams.pipeline import stores, transport
from streams.pipeline.durable_table import DurableTable
from streams.settings import Settings
from streams.web.views import register_views

log = logging.getLogger(__name__)

MARKER_PREFIX = "\x00"  # identities cannot contain control characters, so this never collides


def applied_marker(partition: int, source: str) -> str:
    """The journeys-table key holding the highest source offset applied to a partition."""
    return f"{MARKER_PREFIX}applied:{partition}:{source}"


def marker_value(offset: int, watermark: int | None) -> bytes:
    """An applied marker's value: the source offset applied, and the source's watermark then."""
    return f"{offset} {watermark}".encode() if watermark is not None else str(offset).encode()


def parse_marker(raw: bytes) -> tuple[int, int | None]:
    offset, _, watermark = raw.decode().partition(" ")
    return int(offset), int(watermark) if watermark else None


def partition_of_key(key: str, partitions: int) -> int:
    """The journeys-table partition a key belongs to: a marker names it, an identity hashes to it."""
    if key.startswith(MARKER_PREFIX):
        return int(key.split(":", 2)[1])
    return partition_for(key, partitions)


def faust_broker_url(bootstrap: str, scheme: str = "kafka") -> str:
    return ";".join(f"{scheme}://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def broker_credentials(settings: Settings) -> Any:
    context = settings.ssl_context()
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


class ConversionsApp:
    """Builds the Faust app for one settings object and one compiled funnel configuration."""

    def __init__(self, settings: Settings, config: CompiledConfig, sources: Iterable[str]) -> None:
        assert settings.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS must be set"
        self.settings = settings
        self.config = config
        self.metrics = Metrics()
        self.app = faust.App(
            settings.app_id,
            broker=faust_broker_url(
                settings.kafka_bootstrap_servers, transport.register(settings.fetch_max_wait_ms)
            ),
            broker_credentials=broker_credentials(settings),
            store=stores.register(settings.table_store),
            datadir=str(settings.data_dir),
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=False,
            table_standby_replicas=settings.table_standby_replicas,
            processing_guarantee=settings.processing_guarantee,
            broker_rebalance_timeout=settings.rebalance_timeout_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.heartbeat_interval_s,
            broker_commit_interval=settings.commit_interval_s,
            broker_commit_every=settings.commit_every,
            broker_max_poll_records=settings.max_poll_records,
            consumer_auto_offset_reset="earliest",
            web_enabled=settings.web_enabled,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            producer_max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
            consumer_max_fetch_size=max(settings.max_message_bytes * 2, 4_194_304),
        )
        self.source = self._raw_topic(*map(settings.topic, settings.topic_clickstream))
        self.events_topic = self._raw_topic(settings.topic(settings.topic_events))
        self.output_topics = {kind: self._raw_topic(name) for kind, name in settings.output_topics.items()}
        self.journeys = self.app.Table(
            "journeys",
            default=None,
            partitions=settings.partitions,
            key_type=str,
            value_type=bytes,  # raw bytes: journeys serialize themselves compactly
        )
        self.source_topics = frozenset(map(settings.topic, settings.topic_clickstream))
        self.state = DurableTable(self.journeys, lambda key: partition_of_key(key, settings.partitions))
        self.engine = Engine(config, self.state, settings.partitions, expected_sources=sources)
        self._active_partitions: set[int] = set()
        if isinstance(self.journeys.data, stores.ReadsItsChangelog):
            self.journeys.data.reader = self._read_changelog
            self.journeys.data.partitions_of = self._changelog_partitions
            self.journeys.data.key_partition = self.state.partition_of
        self.journeys.on_recover(self._rebuild_deadlines)
        self.app.agent(self.source, name="ingest")(self._ingest)
        self.app.agent(self.events_topic, name="journeys")(self._journeys)
        self.app.timer(settings.watermark_interval_s, name="watermarks")(self._announce_watermarks)
        # ingest side: per source, how far its event time has got and when it last had input
        self._source_watermarks: dict[str, int] = {}
        self._source_seen_at: dict[str, float] = {}
        self._announced: dict[tuple[str, int], tuple[int | None, float]] = {}
        self.counting = Counting(self) if settings.counters_enabled else None
        self.alerting = Alerting(self) if config.source.alerts else None
        if settings.web_enabled and self.counting is not None:
            register_views(self)
        self.app.timer(5.0, name="lag")(self._measure_lag)

    def _raw_topic(self, *names: str) -> faust.TopicT:
        return self.app.topic(*names, key_serializer="raw", value_serializer="raw")

    # ---- ingest -----------------------------------------------------------------------

    async def _runs(self, stream: faust.StreamT[bytes]) -> AsyncIterator[list[Any]]:
        """The stream's messages, a run at a time; Faust acks a run when the next is asked for."""
        size, window = self.settings.agent_batch_messages, self.settings.agent_batch_window_s
        async for events in stream.take_events(size, within=window):
            yield [event.message for event in events]

    async def _ingest(self, stream: faust.StreamT[bytes]) -> None:
        async for messages in self._runs(stream):
            await self._ingest_messages(messages)

    async def _ingest_messages(self, messages: list[Any]) -> None:
        """Repartition the valid events of a run of clickstream messages: one batch per source
        and target partition (more when they grow past `max_message_bytes`), each sent with
        its source's watermark once it holds every event that watermark covers."""
        partitions = self.settings.partitions
        latest_ms = int((time.time() + self.settings.max_future_skew_s) * 1000)
        pending: dict[tuple[str, int], PendingBatch] = {}
        watermarks: dict[str, int] = {}
        for message in messages:
            decoded = decode_message(
                message.value,
                max_bytes=self.settings.max_message_bytes,
                max_batch=self.settings.max_batch_events,
                latest_ms=latest_ms,
            )
            if decoded.rejects:
                await self._dead_letter(decoded.rejects, message)
            self.metrics.events_in.inc(len(decoded.events))
            source = source_name(message.topic, message.partition)
            self._source_seen_at[source] = time.monotonic()
            if not decoded.events:
                continue
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for click in decoded.events:
                by_partition[partition_for(click.identity, partitions)].append(click.to_json_dict())
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
        await self._send_repartitioned(partition, batch)

    async def _send_repartitioned(self, partition: int, batch: RepartitionBatch) -> None:
        await self.events_topic.send(key=str(partition).encode(), value=batch.encode(), partition=partition)

    async def _announce_watermarks(self) -> None:
        """Tell every partition how far each of our sources has got, or that it is idle.

        A source is ours while this worker's consumer is assigned it. A change is sent at
        once; an unchanged state again every `watermark_refresh_s`, so that a journey
        partition that moved to another worker learns it too.
        """
        now = time.monotonic()
        ours = {
            source_name(tp.topic, tp.partition)
            for tp in self.app.consumer.assignment()
            if tp.topic in self.source_topics
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

    async def _dead_letter(self, rejects: Iterable[Rejection], message: Any) -> None:
        moment = datetime.fromtimestamp(message.timestamp, UTC) if message.timestamp else datetime.now(UTC)
        for rejection in rejects:
            record = dead_letter(
                rejection,
                source_topic=message.topic,
                source_partition=message.partition,
                source_offset=message.offset,
                timestamp=moment,
            )
            log.debug(
                "dead-lettered %s:%s@%s: %s",
                message.topic,
                message.partition,
                message.offset,
                rejection.reason,
            )
            await self.publish([record])

    # ---- journeys ---------------------------------------------------------------------

    async def _journeys(self, stream: faust.StreamT[bytes]) -> None:
        async for messages in self._runs(stream):
            await self._apply_to_journeys(messages)

    async def _apply_to_journeys(self, messages: list[Any]) -> None:
        """Apply a run of repartition batches: outputs published and journeys written to the
        changelog once for the run, each partition's outputs before its journeys and applied
        markers, so a crash in between repeats outputs (deduplicated downstream by id) but
        never loses them."""
        assigned = self.app.consumer.assignment()
        outputs: dict[int, list[OutputEvent]] = defaultdict(list)
        applied_now: dict[str, tuple[int, int | None]] = {}
        for message in messages:
            try:
                batch = RepartitionBatch.decode(message.value)
            except ValueError as exc:  # only a foreign producer on the internal topic
                await self._dead_letter([Rejection("invalid_json", str(exc), message.value or b"")], message)
                continue
            partition = message.partition
            if partition not in self._active_partitions or message.tp not in assigned:
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
            for item, offset in zip(batch.events, batch.event_offsets(), strict=True):
                if offset is not None and offset <= applied:
                    continue  # applied before, in a batch gathered differently
                try:
                    click = ClickEvent.model_validate(item)
                except ValidationError as exc:
                    await self._dead_letter(
                        [Rejection("invalid_event", str(exc), orjson.dumps(item))], message
                    )
                    continue
                produced.extend(self.engine.process(click, partition))
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
        # The markers go last, after every journey of the run in their changelog partitions: a
        # crash part way through the writes then leaves them behind, and the replay re-applies
        # events whose journeys were written (their event ids make that harmless) rather than
        # skipping events whose journeys were not.
        for marker, (offset, watermark) in applied_now.items():
            self.state[marker] = marker_value(offset, watermark)
        for partition, produced in outputs.items():
            await self.publish(produced, partition)
        await self.state.write_changelog()

    async def _rebuild_deadlines(self) -> None:
        """After recovery (start or rebalance): index the deadlines of the partitions this worker
        now owns, and drop what it keeps of partitions it neither owns nor stands by for.

        The journeys agent writes the store directly (`DurableTable`), past Faust's key-to-
        partition bookkeeping, so a memory store would otherwise keep revoked journeys, and
        their deadlines would fire here as well as on their new owner."""
        topic = self.settings.topic(self.settings.topic_events)
        assignor = self.app.assignor
        active = {tp.partition for tp in assignor.assigned_actives() if tp.topic == topic}
        standby = {tp.partition for tp in assignor.assigned_standbys() if tp.topic == topic}
        self._active_partitions = active
        released = set(range(self.settings.partitions)) - active
        # before evicting: a store on disk must not keep a position past what it has dropped
        self.state.forget_partitions(released - standby)
        by_partition: dict[int, list[str]] = defaultdict(list)
        markers: list[tuple[int, str]] = []
        dropped = 0
        for key in list(self.state):
            partition = partition_of_key(key, self.settings.partitions)
            if partition in active:
                if key.startswith(MARKER_PREFIX):
                    markers.append((partition, key))
                else:
                    by_partition[partition].append(key)
            elif partition not in standby:
                self.state.evict(key)
                dropped += 1
        self.engine.release_partitions(released)
        total = sum(self.engine.rebuild_deadlines(p, by_partition.get(p, [])) for p in sorted(active))
        await self._remind_watermarks(markers)
        changelog = self.journeys.changelog_topic.get_topic_name()
        positions = {p: self.journeys.persisted_offset(TP(changelog, p)) for p in sorted(active)}
        log.info(
            "journeys recovered: %d journeys in partitions %s indexed for deadlines "
            "(changelog positions %s; standby for %s; %d keys of other workers' partitions dropped)",
            total,
            sorted(active),
            positions,
            sorted(standby) or "none",
            dropped,
        )

    async def _remind_watermarks(self, markers: list[tuple[int, str]]) -> None:
        """Tell each recovered partition again how far its sources had got, as heartbeats on its
        own input: the journeys agent then fires what that makes due. A source whose input is
        all consumed and committed would otherwise never speak again, and the deadlines it had
        made due before a restart would wait for it to go idle."""
        for partition, key in markers:
            _, watermark = parse_marker(self.state[key])
            if watermark is not None:
                source = key.split(":", 2)[2]  # the marker's key: see `applied_marker`
                await self._send_repartitioned(partition, RepartitionBatch(source, watermark, []))

    def _changelog_partitions(self, assigned: set[TP]) -> list[int]:
        topics = {
            self.settings.topic(self.settings.topic_events),
            self.journeys.changelog_topic.get_topic_name(),
        }
        return sorted({tp.partition for tp in assigned if tp.topic in topics})

    async def _read_changelog(self, store: Any, partitions: list[int]) -> None:
        """Read journeys changelog partitions from where the store is to their true end."""
        if not partitions:
            return
        changelog = self.journeys.changelog_topic.get_topic_name()
        consumer = AIOKafkaConsumer(
            **consumer_options(self.settings),
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8_388_608,
        )
        started = time.monotonic()
        await consumer.start()
        try:
            tps = [TopicPartition(changelog, p) for p in partitions]
            consumer.assign(tps)
            reported = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, store.position(TP(changelog, tp.partition)) + 1)
            applied = read = 0
            while batch := await consumer.getmany(timeout_ms=300, max_records=20_000):
                before = read
                for tp, records in batch.items():
                    read += len(records)
                    keys = (r.key or b"null" for r in records)
                    if isinstance(store, stores.JourneyMemoryStore):
                        keys = (orjson.loads(key) for key in keys)
                    applied += store.apply_read(
                        TP(tp.topic, tp.partition),
                        ((key, r.value, r.offset) for key, r in zip(keys, records, strict=True)),
                        reported[tp],
                    )
                if read // 250_000 > before // 250_000:
                    log.info("journeys: %d changelog records read so far", read)
            for tp in tps:  # nothing past what Faust will be told
                store.apply_read(TP(tp.topic, tp.partition), (), reported[tp])
            log.info(
                "journeys: read %d changelog records (%d applied) of partitions %s in %.1f s",
                read,
                applied,
                partitions,
                time.monotonic() - started,
            )
        finally:
            await consumer.stop()

    # ---- output -----------------------------------------------------------------------

    async def _measure_lag(self) -> None:
        consumer = self.app.consumer
        # Faust keeps the committed offsets privately; a missing attribute means no reading.
        committed_offsets = getattr(consumer, "_committed_offset", {})
        for tp in consumer.assignment():
            committed = committed_offsets.get(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not fetched yet: no reading
                continue
            if highwater is not None:
                self.metrics.consumer_lag.labels(tp.topic, tp.partition).set(
                    max(0, highwater - (committed or 0))
                )
        for partition in range(self.settings.partitions):
            watermark = self.engine.watermark(partition)
            if watermark is not None:
                self.metrics.watermark.labels(partition).set(watermark / 1000)

    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        """Send outputs keyed by identity. From a journey partition they go to the output partition
        of the same number, with the partition's watermark in a header on each topic's last
        record: everything that partition will ever emit earlier than that watermark is already
        before that record (see `alerting`)."""
        outputs = list(outputs)
        watermark = self.engine.watermark(partition) if partition is not None else None
        topic_of = self.settings.output_topics
        # on each topic's last record only: records before it may precede later, earlier ones
        last = {topic_of[output.type]: i for i, output in enumerate(outputs)} if watermark is not None else {}
        for i, output in enumerate(outputs):
            self.metrics.outputs.labels(output.type).inc()
            identity = output.identity
            await self.output_topics[output.type].send(
                key=identity.encode() if identity is not None else None,
                value=output.to_json(),
                partition=partition,
                headers=(
                    [(WATERMARK_HEADER, str(watermark).encode())]
                    if last.get(topic_of[output.type]) == i
                    else None
                ),
            )
