"""Prometheus metrics of one worker, in a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNKNOWN_FIELD_LABELS = 20
"""Field names come from producers: only this many get a series of their own."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("conversions_events_in", "Valid clickstream events ingested", registry=r)
        self.dead_letters = Counter(
            "conversions_dead_letters", "Inputs dead-lettered", ["reason"], registry=r
        )
        self.outputs = Counter("conversions_outputs", "Output events produced", ["type"], registry=r)
        self.ignored = Counter(
            "conversions_ignored",
            "Valid input messages that carry nothing for the engine (Segment group calls), by format",
            ["format"],
            registry=r,
        )
        self.unknown_fields = Counter(
            "conversions_unknown_fields",
            "Top-level fields the contract does not have, in valid events (ignored), by name: the first "
            f"{UNKNOWN_FIELD_LABELS} names seen, the others as `(other)`",
            ["field"],
            registry=r,
        )
        self._unknown_field_labels: set[str] = set()
        self.screened = Counter(
            "conversions_screened",
            "Valid clickstream events not processed, by reason: bot (CONVERSIONS_BOTS=exclude), "
            "consent (analytics denied), erased (an erased person's events from before the erasure)",
            ["reason"],
            registry=r,
        )
        self.erasures = Counter(
            "conversions_erasures", "Erased ids read from the erasures topic (each worker)", registry=r
        )
        self.bots = Counter(
            "conversions_bot_events",
            "Clickstream events of known bots (by user agent), excluded or not",
            registry=r,
        )
        self.counter_messages = Counter(
            "conversions_counter_messages", "Output messages seen by the counters", ["result"], registry=r
        )
        self.redis_apply = Histogram(
            "conversions_redis_apply_seconds",
            "Latency of one counter batch applied to Redis",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.redis_up = Gauge("conversions_redis_up", "1 when the last Redis call succeeded", registry=r)
        self.consumer_lag = Gauge(
            "conversions_consumer_lag",
            "Messages behind the end of each assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.watermark = Gauge(
            "conversions_watermark_seconds",
            "Event-time watermark of each journey partition (epoch s)",
            ["partition"],
            registry=r,
        )
        self.step_rate = Gauge(
            "conversions_step_rate",
            "Conversion into a step from the one before, over the alert window",
            ["funnel", "step"],
            registry=r,
        )
        self.alert_watermark = Gauge(
            "conversions_alert_watermark_seconds",
            "Event time up to which alert rules are judged (epoch s)",
            registry=r,
        )
        self.alert_firing = Gauge(
            "conversions_alert_firing",
            "1 while an alert rule is firing",
            ["funnel", "step", "by"],
            registry=r,
        )
        self.alert_leader = Gauge(
            "conversions_alert_leader",
            "1 while this worker leads (publishes and delivers alerts)",
            registry=r,
        )
        self.alert_deliveries = Counter(
            "conversions_alert_deliveries",
            "Alert state changes delivered to a receiver, by outcome (delivered, retried, given_up)",
            ["receiver", "outcome"],
            registry=r,
        )
        self.experiment_p_value = Gauge(
            "conversions_experiment_p_value",
            "Always-valid (mSPRT) p-value of no difference between a variant and the control",
            ["experiment", "variant"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_unknown_fields(self, fields: dict[str, int]) -> list[str]:
        """Counts each unknown field; returns the names given a series for the first time (to log
        once), so a producer can neither add series nor log lines without bound."""
        new = []
        for name, count in fields.items():
            if (
                name not in self._unknown_field_labels
                and len(self._unknown_field_labels) < UNKNOWN_FIELD_LABELS
            ):
                self._unknown_field_labels.add(name)
                new.append(name)
            label = name if name in self._unknown_field_labels else "(other)"
            self.unknown_fields.labels(label).inc(count)
        return new
