"""The alert and experiment evaluators in the worker: milestone microconversions in,
`funnel.alerts` and `conversions.experiments` out.

Every worker reads all of `conversions.micro` (manually assigned, from the beginning, so a
restarted worker rebuilds the same state) and keeps both evaluators (`core.alerts`,
`core.experiments`) up to date from the one consumer, in the same event time; only the leader
publishes, and hands alerts to the receivers (`streams.alerts.delivery`), so a failover repeats
nothing that ids and dedup keys do not dedupe. The alert state changes a worker judges while it
follows are kept too (the latest per rule and value) and, once it leads, published and delivered
if they still fire or resolved within `alert_failover_lookback_s` of event time: an alert the
previous leader judged but died before sending reaches every receiver. A worker rebuilds its
state before the group has made it the leader, so the experiment updates it judges while
following are kept (the latest `UNSENT_EXPERIMENT_UPDATES`) and published once it leads: an
update the previous leader judged but died before sending is not
lost, and those it did send come again with the same ids. A microconversion delivered twice
counts once for the experiments (the evaluator remembers the ids of the minutes it has not
judged yet). The service sees the pipeline only as a `ports.Publisher` and a
`ports.LeaderCheck`, and the web sees it as a `ports.AlertReader` and a `ports.ExperimentReader`.

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
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.alerts.alertmanager import Alertmanager
from streams.alerts.delivery import Delivery, Receiver
from streams.alerts.pagerduty import PagerDuty
from streams.alerts.slack import Slack
from streams.alerts.webhook import Webhook
from streams.core.config.matching import CompiledConfig
from streams.core.input.event import to_epoch_ms
from streams.core.measures.alerts import AlertEvaluator, stale_incidents
from streams.core.measures.cardinality import OTHER_LABEL, Admitted
from streams.core.measures.experiments import MINUTE_MS, ExperimentEvaluator
from streams.core.records.outputs import Alert, ExperimentUpdate
from streams.kafka.changelog import read_to_end
from streams.kafka.clients import new_consumer, start_with_retry
from streams.kafka.headers import WATERMARK_HEADER
from streams.kafka.undecodable import GuardedConsumer, SkippedBatches, undecodable
from streams.metrics import Metrics
from streams.ports import GenerationCheck, LeaderCheck, Publisher, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

UNSENT_EXPERIMENT_UPDATES = 1_000
"""Experiment updates a worker keeps while it does not lead, and publishes once it does."""


def receivers(settings: Settings) -> list[Receiver]:
    """Every receiver the settings configure, any number at once."""
    dashboard = settings.alert_dashboard_url or f"http://{settings.web_host}:{settings.web_port}"
    out: list[Receiver] = []
    if settings.alert_alertmanager_url:
        out.append(
            Alertmanager(
                settings.alert_alertmanager_url,
                settings.alert_severity,
                dashboard,
                settings.alert_alertmanager_resend_s,
            )
        )
    if settings.alert_pagerduty_routing_key is not None:
        out.append(
            PagerDuty(
                settings.alert_pagerduty_routing_key,
                settings.alert_pagerduty_url,
                settings.alert_severity,
                settings.app_id,
                dashboard,
            )
        )
    if settings.alert_slack_webhook_url is not None:
        out.append(Slack(settings.alert_slack_webhook_url, dashboard))
    if settings.alert_webhook_url is not None:
        out.append(Webhook(settings.alert_webhook_url))
    return out


class Alerting:
    def __init__(
        self,
        settings: Settings,
        config: CompiledConfig,
        metrics: Metrics,
        publisher: Publisher,
        leader: LeaderCheck,
        generation: GenerationCheck | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self._publisher = publisher
        self._leader = leader
        self._generation = generation
        cap = settings.breakdown_cap
        self.evaluator = AlertEvaluator(config, by_cap=cap)
        self.experiment_evaluator = ExperimentEvaluator(config, max_variants=cap)
        # label values come from clients: a bounded set per metric, then `other`
        self._by_labels: Admitted[str] = Admitted(cap, OTHER_LABEL)
        self._variant_labels: Admitted[str] = Admitted(cap, OTHER_LABEL)
        self.topic = settings.output_topics["micro"]
        self._kafka: AIOKafkaConsumer | None = None
        self.delivery = Delivery(
            receivers(settings),
            metrics,
            timeout_s=settings.alert_webhook_timeout_s,
            give_up_s=settings.alert_delivery_give_up_s,
            firing=lambda: list(self.firing.values()) if self.may_send() else [],
        )
        self._skipped = SkippedBatches("alerts", metrics, publisher)
        self._unsent_alerts: dict[tuple[str, str, str, str], Alert] = {}
        """While following: the latest state change judged per rule and value."""
        self._watermarks: dict[int, int] = {}
        self._heard_at: dict[int, float] = {}
        self.firing: dict[tuple[str, str, str], Alert] = {}
        self.history: deque[Alert] = deque(maxlen=20)
        self.experiment_changes: deque[ExperimentUpdate] = deque(maxlen=20)
        self._unsent: deque[ExperimentUpdate] = deque(maxlen=UNSENT_EXPERIMENT_UPDATES)
        self._judged_minute: int | None = None

    def watermark(self) -> int | None:
        """The lowest partition watermark, ignoring partitions silent for `source_idle_s`; None
        until every partition has spoken once."""
        if len(self._watermarks) < self.settings.partitions:
            return None
        idle_before = time.monotonic() - self.settings.source_idle_s
        active = [w for p, w in self._watermarks.items() if self._heard_at.get(p, 0.0) >= idle_before]
        return min(active) if active else max(self._watermarks.values())

    async def run(self, stopping: Stopping) -> None:
        consumer = self._kafka = new_consumer(self.settings, cls=GuardedConsumer)
        if not await start_with_retry(consumer, "alerts", stopping):
            return
        partitions = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        log.info(
            "alerts: judging %d rules and %d experiments from %s",
            len(self.config.source.alerts),
            len(self.config.source.experiments),
            self.topic,
        )
        await self._end_stale_incidents()
        evaluators = [e for e in (self.evaluator, self.experiment_evaluator) if e.active]
        while not stopping():
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            now = time.monotonic()
            for tp, messages in batch.items():
                for message in messages:
                    skipped = undecodable(message)
                    if skipped is not None:  # every worker reads it: the leader reports it
                        if self._leader.is_leader():
                            await self._skipped.report(tp.topic, tp.partition, skipped)
                        continue
                    output = orjson.loads(message.value or b"{}")
                    for evaluator in evaluators:
                        evaluator.observe(output)
                    for name, value in message.headers or ():
                        if name == WATERMARK_HEADER:
                            self._watermarks[tp.partition] = max(
                                self._watermarks.get(tp.partition, 0), int(value)
                            )
                self._heard_at[tp.partition] = now
            watermark = self.watermark()
            self.metrics.alert_leader.set(1 if self._leader.is_leader() else 0)
            if watermark is not None and self.evaluator.active:
                await self._publish(self.evaluator.advance(watermark))
            if self._unsent_alerts and self._leader.is_leader():
                await self._publish([])
            if watermark is not None:
                if self.experiment_evaluator.active:
                    await self._publish_experiments(self.experiment_evaluator.advance(watermark))
                    self._experiment_metrics(watermark)
                self.metrics.alert_watermark.set(watermark / 1000)
            elif self._unsent:
                await self._publish_experiments([])

    def may_send(self) -> bool:
        """Whether what is judged now goes to the receivers (`alerts.delivery`: Alertmanager,
        PagerDuty, Slack, the webhook): this worker leads and its generation is current. A
        generation reprocessing history, or retired, judges and records (its own topics) but
        sends nothing."""
        current = self._generation is None or self._generation.is_current()
        return current and self._leader.is_leader()

    async def _end_stale_incidents(self) -> None:
        """Incidents the alerts topic leaves firing that this configuration no longer judges (a
        rule removed or changed, its funnel's version changed) are resolved with the same dedup
        key, so that no receiver keeps them open (`measures.alerts.stale_incidents`)."""
        published: list[dict[str, Any]] = []

        def keep(partition: int, records: Sequence[Any], end: int) -> int:
            published.extend(orjson.loads(r.value) for r in records if r.value and not undecodable(r))
            return len(records)

        topic = self.settings.output_topics["alert"]
        await read_to_end(
            self.settings, topic, list(range(self.settings.partitions)), lambda p: -1, keep, "alerts"
        )
        published.sort(key=lambda alert: (str(alert.get("timestamp")), str(alert.get("id"))))
        stale = stale_incidents(published, self.config)
        if stale:
            log.info(
                "alerts: %d incidents fired under another definition are resolved (definition_changed)",
                len(stale),
            )
            await self._publish(stale)

    def experiments(self) -> list[ExperimentUpdate]:
        """Each experiment's state now (`ports.ExperimentReader`)."""
        return self.experiment_evaluator.snapshot()

    async def _publish_experiments(self, updates: list[ExperimentUpdate]) -> None:
        for update in updates:
            self.experiment_changes.appendleft(update)
            log.info(
                "experiment %s at %s: %s",
                update.experiment,
                update.timestamp.isoformat(),
                ", ".join(
                    f"{v.variant} {v.decision}" + (f" (p {v.p_value:.3g})" if v.p_value is not None else "")
                    for v in update.variants
                    if v.variant in update.changed
                ),
            )
        self._unsent.extend(updates)
        if self._unsent and self._leader.is_leader():
            await self._publisher.publish(list(self._unsent))
            self._unsent.clear()

    def _experiment_metrics(self, watermark: int) -> None:
        """The always-valid p-values, once per minute of event time judged."""
        minute = watermark // MINUTE_MS
        if minute == self._judged_minute:
            return
        self._judged_minute = minute
        for state in self.experiment_evaluator.snapshot():
            for variant in state.variants:
                if variant.p_value is not None:
                    label = self._variant_labels(variant.variant)
                    self.metrics.experiment_p_value.labels(state.experiment, label).set(variant.p_value)

    async def _publish(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            by = ",".join(f"{k}={v}" for k, v in alert.by.items())
            self.history.appendleft(alert)
            if alert.state == "fired":
                self.firing[(alert.funnel, alert.step, by)] = alert
            else:
                self.firing.pop((alert.funnel, alert.step, by), None)
            self.metrics.alert_firing.labels(alert.funnel, alert.step, self._by_labels(by)).set(
                1 if alert.state == "fired" else 0
            )
            log.warning(
                "alert %s: %s -> %s%s rate %.3f (baseline %s, %d entered) at %s%s",
                alert.state,
                alert.funnel,
                alert.step,
                f" [{by}]" if by else "",
                alert.rate or 0.0,
                f"{alert.baseline_rate:.3f}" if alert.baseline_rate is not None else "n/a",
                alert.entered,
                alert.timestamp.isoformat(),
                f"; {alert.root_cause.summary}" if alert.root_cause is not None else "",
            )
        if not self._leader.is_leader():
            for alert in alerts:
                self._unsent_alerts[
                    (alert.funnel, alert.step, alert.method, repr(sorted(alert.by.items())))
                ] = alert
            return
        if self._unsent_alerts:
            alerts = [*self._taken_over(), *alerts]
        if alerts:
            await self._publisher.publish(alerts)
            if self.may_send():
                self.delivery.submit(alerts)

    def _taken_over(self) -> list[Alert]:
        """What this worker judged while following and must send now it leads: per rule and
        value, the latest state change, if it fires or resolved within the lookback."""
        latest = max((to_epoch_ms(a.timestamp) for a in self._unsent_alerts.values()), default=0)
        horizon = latest - self.settings.alert_failover_lookback_s * 1000
        kept = [
            a
            for a in self._unsent_alerts.values()
            if a.state == "fired" or to_epoch_ms(a.timestamp) >= horizon
        ]
        self._unsent_alerts.clear()
        if kept:
            log.info("alerts: leading now; sending %d alert state changes judged while following", len(kept))
        return sorted(kept, key=lambda a: (a.timestamp, a.id))

    async def close(self) -> None:
        await self.delivery.close()
        if self._kafka is not None:
            with contextlib.suppress(Exception):
                await self._kafka.stop()
