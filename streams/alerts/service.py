"""The alert evaluator in the worker: milestone microconversions in, `funnel.alerts` out.

Every worker reads all of `conversions.micro` (manually assigned, from the beginning, so a
restarted worker rebuilds the same state) and keeps the evaluator (`core.alerts`) up to date;
only the leader publishes (and POSTs to the webhook), so a failover loses nothing and repeats
nothing that ids do not dedupe. The service sees the pipeline only as a `ports.Publisher` and a
`ports.LeaderCheck`, and the web sees it as a `ports.AlertReader`.

A minute is judged once it is complete. Journey partition p writes its outputs to micro
partition p, each record carrying p's aligned watermark in a header
(`kafka.headers.WATERMARK_HEADER`), so every microconversion p will ever emit before that
watermark is already behind the record. Event time for the alerts is the lowest of those
watermarks over the partitions; a partition silent for `source_idle_s` (it has nothing pending)
stops holding it back.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.alerts.webhook import Webhook
from streams.core.alerts import AlertEvaluator
from streams.core.matching import CompiledConfig
from streams.core.outputs import Alert
from streams.kafka.clients import new_consumer, start_with_retry
from streams.kafka.headers import WATERMARK_HEADER
from streams.metrics import Metrics
from streams.ports import LeaderCheck, Publisher, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)


class Alerting:
    def __init__(
        self,
        settings: Settings,
        config: CompiledConfig,
        metrics: Metrics,
        publisher: Publisher,
        leader: LeaderCheck,
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self._publisher = publisher
        self._leader = leader
        self.evaluator = AlertEvaluator(config)
        self.topic = settings.output_topics["micro"]
        self._kafka: AIOKafkaConsumer | None = None
        url = settings.alert_webhook_url
        self._webhook = (
            Webhook(url, settings.alert_webhook_timeout_s, settings.output_topics["alert"])
            if url is not None
            else None
        )
        self._watermarks: dict[int, int] = {}
        self._heard_at: dict[int, float] = {}
        self.firing: dict[tuple[str, str, str], Alert] = {}
        self.history: deque[Alert] = deque(maxlen=20)

    def watermark(self) -> int | None:
        """The lowest partition watermark, ignoring partitions silent for `source_idle_s`; None
        until every partition has spoken once."""
        if len(self._watermarks) < self.settings.partitions:
            return None
        idle_before = time.monotonic() - self.settings.source_idle_s
        active = [w for p, w in self._watermarks.items() if self._heard_at.get(p, 0.0) >= idle_before]
        return min(active) if active else max(self._watermarks.values())

    async def run(self, stopping: Stopping) -> None:
        consumer = self._kafka = new_consumer(self.settings)
        if not await start_with_retry(consumer, "alerts", stopping):
            return
        partitions = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        log.info("alerts: judging %d rules from %s", len(self.config.source.alerts), self.topic)
        while not stopping():
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            now = time.monotonic()
            for tp, messages in batch.items():
                for message in messages:
                    self.evaluator.observe(orjson.loads(message.value or b"{}"))
                    for name, value in message.headers or ():
                        if name == WATERMARK_HEADER:
                            self._watermarks[tp.partition] = max(
                                self._watermarks.get(tp.partition, 0), int(value)
                            )
                self._heard_at[tp.partition] = now
            watermark = self.watermark()
            if watermark is not None:
                await self._publish(self.evaluator.advance(watermark))
                self.metrics.alert_watermark.set(watermark / 1000)

    async def _publish(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            by = ",".join(f"{k}={v}" for k, v in alert.by.items())
            self.history.appendleft(alert)
            if alert.state == "fired":
                self.firing[(alert.funnel, alert.step, by)] = alert
            else:
                self.firing.pop((alert.funnel, alert.step, by), None)
            self.metrics.alert_firing.labels(alert.funnel, alert.step, by).set(
                1 if alert.state == "fired" else 0
            )
            log.warning(
                "alert %s: %s -> %s%s rate %.3f (baseline %s, %d entered) at %s",
                alert.state,
                alert.funnel,
                alert.step,
                f" [{by}]" if by else "",
                alert.rate or 0.0,
                f"{alert.baseline_rate:.3f}" if alert.baseline_rate is not None else "n/a",
                alert.entered,
                alert.timestamp.isoformat(),
            )
        if alerts and self._leader.is_leader():
            await self._publisher.publish(alerts)
            if self._webhook is not None:
                for alert in alerts:
                    await self._webhook.post(alert)

    async def close(self) -> None:
        if self._webhook is not None:
            await self._webhook.close()
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
