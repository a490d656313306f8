"""The alert evaluator in the worker: milestone microconversions in, `funnel.alerts` out.

Every worker reads all of `conversions.micro` (manually assigned, from the beginning, so a
restarted worker rebuilds the same state) and keeps the evaluator up to date; only the
leader publishes, so a failover loses nothing and repeats nothing that ids do not dedupe.

A minute is judged once it is complete. Journey partition p writes its outputs to micro
partition p, each record carrying p's aligned watermark in a header, so every microconversion
p will ever emit before that watermark is already behind the record. Event time for the
alerts is the lowest of those watermarks over the partitions; a partition silent for
`source_idle_s` (it has nothing pending) stops holding it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from streams.core.alerts import AlertEvaluator
from streams.core.outputs import Alert
from streams.kafka import consumer_options

WATERMARK_HEADER = "conversions-watermark"

if TYPE_CHECKING:
    from streams.pipeline.app import ConversionsApp

log = logging.getLogger(__name__)


class AlertsService(Service):
    def __init__(self, alerting: Alerting) -> None:
        super().__init__()
        self.alerting = alerting

    @Service.task
    async def _evaluate_forever(self) -> None:
        service: Any = self  # mode's Service attributes are invisible to mypy
        await self.alerting.run(lambda: bool(service.should_stop))

    async def on_stop(self) -> None:
        await self.alerting.close()


class Alerting:
    def __init__(self, conversions: ConversionsApp) -> None:
        self.conversions = conversions
        self.settings = conversions.settings
        self.evaluator = AlertEvaluator(conversions.config)
        self.topic = self.settings.output_topics["micro"]
        self._kafka: AIOKafkaConsumer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._watermarks: dict[int, int] = {}
        self._heard_at: dict[int, float] = {}
        self.firing: dict[tuple[str, str, str], Alert] = {}
        self.history: deque[Alert] = deque(maxlen=20)
        conversions.app.add_dependency(AlertsService(self))

    def watermark(self) -> int | None:
        """The lowest partition watermark, ignoring partitions silent for `source_idle_s`; None
        until every partition has spoken once."""
        if len(self._watermarks) < self.settings.partitions:
            return None
        idle_before = time.monotonic() - self.settings.source_idle_s
        active = [w for p, w in self._watermarks.items() if self._heard_at.get(p, 0.0) >= idle_before]
        return min(active) if active else max(self._watermarks.values())

    async def run(self, stopping: Callable[[], bool]) -> None:
        consumer = self._kafka = AIOKafkaConsumer(
            **consumer_options(self.settings), enable_auto_commit=False, group_id=None
        )
        while not stopping():
            try:
                await consumer.start()
                break
            except KafkaError as exc:
                log.warning("alerts: Kafka not reachable yet (%s); retrying in 2 s", exc.__class__.__name__)
                await asyncio.sleep(2)
        partitions = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        log.info("alerts: judging %d rules from %s", len(self.conversions.config.source.alerts), self.topic)
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
                self.conversions.metrics.alert_watermark.set(watermark / 1000)

    async def _publish(self, alerts: list[Alert]) -> None:
        metrics = self.conversions.metrics
        for alert in alerts:
            by = ",".join(f"{k}={v}" for k, v in alert.by.items())
            self.history.appendleft(alert)
            if alert.state == "fired":
                self.firing[(alert.funnel, alert.step, by)] = alert
            else:
                self.firing.pop((alert.funnel, alert.step, by), None)
            metrics.alert_firing.labels(alert.funnel, alert.step, by).set(1 if alert.state == "fired" else 0)
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
        if alerts and self.conversions.app.is_leader():
            await self.conversions.publish(alerts)
            if self.settings.alert_webhook_url is not None:
                for alert in alerts:
                    await self._post(alert)

    async def _post(self, alert: Alert) -> None:
        """POST one alert; three tries, then a warning: the alert is on the topic regardless."""
        assert self.settings.alert_webhook_url is not None
        url = self.settings.alert_webhook_url.get_secret_value()
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.alert_webhook_timeout_s)
            )
        for attempt in range(3):
            try:
                async with self._http.post(
                    url, data=alert.to_json(), headers={"Content-Type": "application/json"}
                ) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = exc.__class__.__name__
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning(
            "alert webhook failed (%s) for alert %s; it is on %s regardless",
            problem,
            alert.id,
            self.settings.output_topics["alert"],
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
