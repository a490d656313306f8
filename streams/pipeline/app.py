"""The Faust app: topics, the journeys table, the journeys agent, ingest beside it, and publishing.

A thin adapter: parsing lives in `core.events`, journeys in `core.engine`; this module moves
bytes between Kafka and those functions. Faust's cost is per message, not per event, so ingest
reads the clickstream with a plain consumer in batches (`ingest_consumer`) and repartitions it
by identity, and the journeys agent takes runs of repartitioned batches (`take_events`, up to
`agent_batch_messages` or `agent_batch_window_s`), applies them to the journeys table,
publishes the outputs (whole record batches, `record_batches`), and Faust acks the run.

The app is also what the other rooms see of the pipeline, through the protocols in `ports`: it
publishes (`Publisher`), knows whether it leads (`LeaderCheck`) and runs timers and services
beside its agents (`Scheduler`). It imports nothing of counters, alerts or web; the worker
(`streams.worker`) composes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import faust
from aiokafka.errors import KafkaError

from streams.core.config.matching import CompiledConfig
from streams.core.input.deadletter import dead_letter
from streams.core.input.rejection import Rejection
from streams.core.input.repartition import RepartitionBatch
from streams.core.journeys.engine import Engine
from streams.core.journeys.journey import write_state_version
from streams.core.journeys.markers import partition_of_key
from streams.core.records.outputs import OutputEvent
from streams.kafka.erasures import follow
from streams.kafka.headers import WATERMARK_HEADER
from streams.kafka.source_reader import SourceReader
from streams.kafka.undecodable import SkippedBatches
from streams.metrics import Metrics
from streams.pipeline import stores, transport
from streams.pipeline.durable_table import DurableTable
from streams.pipeline.ingest import Ingest
from streams.pipeline.ingest_consumer import IngestConsumer
from streams.pipeline.journeys import Journeys
from streams.pipeline.record_batches import RecordBatches
from streams.pipeline.services import BackgroundService
from streams.ports import Job, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        settings: Settings,
        config: CompiledConfig,
        sources: Iterable[str],
        metrics: Metrics | None = None,
    ) -> None:
        assert settings.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS must be set"
        self.settings = settings
        self.config = config
        self.metrics = metrics or Metrics()
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
            # Faust's own pages would show the journeys table and the key-to-worker map to
            # anyone, past the web token that guards our routes
            web_tables_enabled=False,
            web_router_enabled=False,
            producer_max_request_size=max(settings.max_message_bytes * 2, 1_048_576),
            producer_compression_type=settings.compression_type(),
            consumer_max_fetch_size=max(settings.max_message_bytes * 2, 4_194_304),
        )
        self.events_topic = self._raw_topic(settings.topic(settings.topic_events))
        self.output_topics = {kind: self._raw_topic(name) for kind, name in settings.output_topics.items()}
        self.journeys_table = self.app.Table(
            "journeys",
            default=None,
            partitions=settings.partitions,
            key_type=str,
            value_type=bytes,  # raw bytes: journeys serialize themselves compactly
        )
        self.state = DurableTable(
            self.journeys_table,
            lambda key: partition_of_key(key, settings.partitions),
            self._record_batches,
        )
        write_state_version(settings.journey_state_version)
        self.engine = Engine(
            config,
            self.state,
            settings.partitions,
            expected_sources=sources,
            forwarding=True,
            early_release=settings.early_release,
        )
        self.ingest = Ingest(
            settings,
            self.metrics,
            self.send_repartitioned,
            self._dead_letter,
            self._ingest_assignment,
            home_partition=self.engine.home_partition,
            notice_for=self.engine.notice_for if self.engine.early_release else None,
            late_tolerance_ms=config.late_tolerance,
        )
        self.ingest_consumer = IngestConsumer(
            settings, self.ingest, self._flush_producer, SkippedBatches("ingest", self.metrics, self)
        )
        self.source_reader = SourceReader(settings)
        self.journeys = Journeys(
            settings,
            self.engine,
            self.state,
            self.journeys_table,
            self,
            self.send_repartitioned,
            self._dead_letter,
            self._assignment,
            lambda: self.app.assignor,
            read_source=self.source_reader.read,
        )
        store = self.journeys_table.data
        if isinstance(store, stores.ReadsItsChangelog):
            store.reader = self.journeys.read_changelog
            store.partitions_of = self.journeys.changelog_partitions
            store.key_partition = self.state.partition_of
        self.journeys_table.on_recover(self.journeys.rebuild_deadlines)
        self.journeys_table.on_recover(self.journeys.forget_recovered)
        # erasures: one map of erased ids for ingest's screen and the journeys; ingest waits
        # until the compacted topic has been read to its end
        self.ingest.enricher.erased = self.journeys.erased
        self.ingest.ready = self.erasures_loaded = asyncio.Event()
        self.run_alongside("erasures", self._follow_erasures, self._nothing)
        self.run_alongside("ingest", self.ingest_consumer.run, self._close_consumers)
        self.run_alongside("watermarks-now", self.ingest.announce_when_moved, _nothing)
        self.app.agent(self.events_topic, name="journeys")(self._journeys)
        self.every(settings.watermark_interval_s, "watermarks", self.ingest.announce_watermarks)
        self.every(5.0, "lag", self._measure_lag)

    async def _follow_erasures(self, stopping: Stopping) -> None:
        while not stopping():
            try:
                await follow(self.settings, self._forget, self.erasures_loaded, stopping)
            except (KafkaError, OSError) as exc:  # an outage is waited out; ingest waits for it
                log.warning("erasures: Kafka unavailable (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(1.0)

    async def _forget(self, identity: str, at_ms: int) -> None:
        deleted = await self.journeys.forget(identity, at_ms)
        self.metrics.erasures.inc()
        if deleted:
            log.info("erasure: %d journeys deleted", deleted)  # no id: the log keeps none

    async def _nothing(self) -> None:
        return None

    def _raw_topic(self, *names: str) -> faust.TopicT:
        return self.app.topic(*names, key_serializer="raw", value_serializer="raw")

    def _assignment(self) -> Any:
        return self.app.consumer.assignment()

    def _ingest_assignment(self) -> Any:
        return self.ingest_consumer.assignment()

    async def _close_consumers(self) -> None:
        await self.ingest_consumer.close()
        await self.source_reader.close()

    async def _flush_producer(self) -> None:
        await self.app.producer.flush()

    # ---- the agents ---------------------------------------------------------------------

    async def _runs(self, stream: faust.StreamT[bytes]) -> AsyncIterator[list[Any]]:
        """The stream's messages, a run at a time; Faust acks a run when the next is asked for."""
        size, window = self.settings.agent_batch_messages, self.settings.agent_batch_window_s
        async for events in stream.take_events(size, within=window):
            yield [event.message for event in events]

    async def _journeys(self, stream: faust.StreamT[bytes]) -> None:
        async for messages in self._runs(stream):
            await self.journeys.apply(messages)

    async def send_repartitioned(self, partition: int, batch: RepartitionBatch) -> None:
        await self.events_topic.send(key=str(partition).encode(), value=batch.encode(), partition=partition)

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
            self.metrics.dead_letters.labels(rejection.reason).inc()
            log.debug(
                "dead-lettered %s:%s@%s: %s",
                message.topic,
                message.partition,
                message.offset,
                rejection.reason,
            )
            await self.publish([record])

    # ---- what the other rooms see (ports.Publisher, LeaderCheck, Scheduler) ----------------

    def is_leader(self) -> bool:
        return bool(self.app.is_leader())

    def every(self, interval_s: float, name: str, job: Job) -> None:
        self.app.timer(interval_s, name=name)(job)

    def run_alongside(self, name: str, run: Callable[[Stopping], Awaitable[None]], close: Job) -> None:
        app = self.app
        self.app.add_dependency(BackgroundService(name, run, close, lambda: bool(app.should_stop)))

    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        """Send outputs keyed by identity. From a journey partition they go to the output partition
        of the same number, with the partition's watermark in a header on each topic's last
        record: everything that partition will ever emit earlier than that watermark is already
        before that record (see `streams.alerts.service`)."""
        outputs = list(outputs)
        watermark = self.engine.watermark(partition) if partition is not None else None
        topic_of = self.settings.output_topics
        # on each topic's last record only: records before it may precede later, earlier ones
        last = {topic_of[output.type]: i for i, output in enumerate(outputs)} if watermark is not None else {}
        counted: Counter[str] = Counter(output.type for output in outputs)
        for kind, count in counted.items():
            self.metrics.outputs.labels(kind).inc(count)
        batches = self._record_batches() if partition is not None else None
        for i, output in enumerate(outputs):
            identity = output.identity
            key = identity.encode() if identity is not None else None
            topic = topic_of[output.type]
            headers = [(WATERMARK_HEADER, str(watermark).encode())] if last.get(topic) == i else None
            if batches is not None and partition is not None:
                batches.append(topic, partition, key, output.to_json(), headers)
            else:
                await self.output_topics[output.type].send(
                    key=key, value=output.to_json(), partition=partition, headers=headers
                )
        if batches is not None:
            await batches.send_all()

    def _record_batches(self) -> RecordBatches | None:
        """Whole batches through Faust's own producer, where no transaction needs `Topic.send`."""
        if self.settings.processing_guarantee != "at_least_once":
            return None
        # the aiokafka producer Faust's own sends and its commit-time flush use
        return RecordBatches(self.app.producer._ensure_producer())

    # ---- metrics ------------------------------------------------------------------------

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
        for tp, lag in self.ingest_consumer.lag().items():
            self.metrics.consumer_lag.labels(tp.topic, tp.partition).set(lag)
        for partition in range(self.settings.partitions):
            watermark = self.engine.watermark(partition)
            if watermark is not None:
                self.metrics.watermark.labels(partition).set(watermark / 1000)


async def _nothing() -> None:
    """A service's close with nothing to close."""
