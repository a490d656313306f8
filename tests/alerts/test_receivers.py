"""Each receiver's payload against a local receiver that checks the documented fields, and
Alertmanager against the real thing; delivery retries, gives up (logged, counted) and never
writes a secret to a log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from streams.alerts.alertmanager import Alertmanager
from streams.alerts.delivery import Delivery
from streams.alerts.pagerduty import SUMMARY_LIMIT, PagerDuty
from streams.alerts.service import receivers
from streams.alerts.slack import Slack
from streams.alerts.webhook import Webhook
from streams.core.records.outputs import Alert, RootCause, SegmentDrop
from streams.metrics import Metrics
from streams.settings import Settings
from tests.alerts.receivers import Receiver, alertmanager, am_get, eventually, receiver

__all__ = ["alertmanager", "receiver"]

ROUTING_KEY = "R0UT1NGKEY-secret-0123456789abcdef"
CAUSE = RootCause(
    missing=12.5,
    segments=[
        SegmentDrop(
            breakdown="context.platform",
            value="mobile",
            share=0.91,
            missing=11.4,
            rate=0.30,
            baseline_rate=0.78,
            entered=40,
            baseline_entered=400,
            p_value=1e-5,
        )
    ],
    significance=0.01,
    min_entered=10,
    summary="context.platform=mobile: 91% of the drop (rate 0.30 vs 0.78)",
)


def fired(at: datetime | None = None, **update: object) -> Alert:
    return Alert.model_validate(
        {
            "id": "a1",
            "type": "alert",
            "state": "fired",
            "funnel": "checkout",
            "step": "payment",
            "step_index": 3,
            "by": {"context.platform": "mobile"},
            "timestamp": at or datetime(2024, 3, 13, 10, 20, tzinfo=UTC),
            "window": "12h",
            "baseline": "7d",
            "rate": 0.3,
            "baseline_rate": 0.8,
            "entered": 40,
            "baseline_entered": 400,
            "incident_id": "inc-1",
            "method": "cusum",
            "statistic": 5.1,
            "threshold": 4.7,
            "trials": 31,
            "failures": 24,
            "resolution_delay": "2h",
            "false_alarm_every": "90d",
            "root_cause": CAUSE,
            **update,
        }
    )


def resolved(at: datetime | None = None) -> Alert:
    return fired(at, id="a2", state="resolved", rate=0.75, root_cause=None, statistic=None, trials=None)


async def deliver(
    *alerts: Alert, to: object, give_up_s: float = 30.0, metrics: Metrics | None = None
) -> Metrics:
    metrics = metrics or Metrics()
    delivery = Delivery([to], metrics, timeout_s=5.0, give_up_s=give_up_s, firing=list)  # type: ignore[list-item]
    try:
        delivery.submit(alerts)
        await delivery.idle()
    finally:
        await delivery.close()
    return metrics


async def test_pagerduty_triggers_and_resolves_one_incident_by_dedup_key(receiver: Receiver) -> None:
    pagerduty = PagerDuty(
        SecretStr(ROUTING_KEY),
        f"{receiver.url}/v2/enqueue",
        "critical",
        "conversions",
        "https://dash.example",
    )
    await deliver(fired(), resolved(), to=pagerduty)
    trigger, resolve = receiver.bodies("/v2/enqueue")
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == "inc-1"
    payload = trigger["payload"]
    assert 0 < len(payload["summary"]) < SUMMARY_LIMIT
    assert "checkout -> payment [context.platform=mobile]" in payload["summary"]
    assert (payload["source"], payload["severity"]) == ("conversions", "critical")
    assert payload["timestamp"] == "2024-03-13T10:20:00Z"
    details = payload["custom_details"]
    assert (details["rate"], details["baseline_rate"], details["trials"], details["failures"]) == (
        0.3,
        0.8,
        31,
        24,
    )
    assert details["root_cause"] == CAUSE.summary and details["segments"][0]["value"] == "mobile"
    assert trigger["links"] == [
        {"href": "https://dash.example/?funnel=checkout&step=payment", "text": "Conversion dashboard"}
    ]
    long = fired(by={"context.platform": "m" * 2_000})
    assert len(pagerduty.body(long)["payload"]["summary"]) < SUMMARY_LIMIT  # type: ignore[index]


async def test_slack_gets_text_and_blocks_for_the_fire_and_the_resolution(receiver: Receiver) -> None:
    slack = Slack(SecretStr(f"{receiver.url}/services/T000/B000/XXXX"), "https://dash.example")
    await deliver(fired(), resolved(), to=slack)
    fire, resolution = receiver.bodies("/services/T000/B000/XXXX")
    for message in (fire, resolution):
        assert isinstance(message["text"], str) and message["text"]
        assert message["blocks"][0]["type"] == "section"
        assert any(
            "incident inc-1" in e["text"]
            for b in message["blocks"]
            if b["type"] == "context"
            for e in b["elements"]
        )
    assert "conversion fell to 30.0% from a baseline of 80.0%, 62% below" in fire["text"]
    assert "2024-03-13 10:20 UTC" in fire["text"]
    texts = " ".join(b["text"]["text"] for b in fire["blocks"] if b["type"] == "section")
    assert "*Root cause:* context.platform=mobile: 91% of the drop" in texts
    assert "<https://dash.example/?funnel=checkout&step=payment|Open the dashboard>" in texts
    assert resolution["text"].startswith(":white_check_mark: Resolved: checkout -> payment")


async def test_the_generic_webhook_gets_the_alert_record(receiver: Receiver) -> None:
    await deliver(fired(), to=Webhook(SecretStr(f"{receiver.url}/hook?token=s3cr3t")))
    (body,) = receiver.bodies("/hook")
    assert body == fired().model_dump(mode="json")
    assert body["id"] == "a1" and body["incident_id"] == "inc-1"


async def test_retries_with_backoff_then_delivers(receiver: Receiver) -> None:
    receiver.fail = 2
    metrics = await deliver(fired(), to=Webhook(SecretStr(f"{receiver.url}/hook")))
    assert len(receiver.bodies()) == 1
    sample = metrics.alert_deliveries.labels
    assert sample("webhook", "retried")._value.get() == 2
    assert sample("webhook", "delivered")._value.get() == 1


async def test_gives_up_after_a_bounded_time_with_an_error_and_never_logs_a_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail, receiver.status = 1_000, 503
    caplog.set_level(logging.DEBUG)
    secret_url = f"{receiver.url}/services/T000/B000/SLACKSECRET"
    metrics = Metrics()
    await deliver(fired(), to=Slack(SecretStr(secret_url), None), give_up_s=1.5, metrics=metrics)
    pagerduty = PagerDuty(SecretStr(ROUTING_KEY), f"{receiver.url}/v2/enqueue", "warning", "c", None)
    receiver.status = 400  # refused as malformed: not retried
    await deliver(fired(), to=pagerduty, metrics=metrics)
    sample = metrics.alert_deliveries.labels
    assert sample("slack", "given_up")._value.get() == 1 and sample("slack", "retried")._value.get() >= 1
    assert (
        sample("pagerduty", "given_up")._value.get() == 1 and sample("pagerduty", "retried")._value.get() == 0
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "not delivered to slack: HTTP 503" in errors[0] and "a1" in errors[0]
    assert "not delivered to pagerduty: HTTP 400" in errors[1]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "SLACKSECRET" not in logged and ROUTING_KEY not in logged
    rendered = metrics.render().decode()
    assert 'conversions_alert_deliveries_total{outcome="given_up",receiver="slack"} 1.0' in rendered
    caplog.clear()  # the two errors were the point of the test


def test_settings_configure_any_number_of_receivers_and_redact_their_secrets(tmp_path: Path) -> None:
    settings = Settings(
        alert_alertmanager_url="http://am:9093",
        alert_pagerduty_routing_key=ROUTING_KEY,
        alert_slack_webhook_url="https://hooks.slack.com/services/T/B/SLACKSECRET",
        alert_webhook_url="https://example.com/hook?token=HOOKSECRET",
    )
    assert [r.name for r in receivers(settings)] == ["alertmanager", "pagerduty", "slack", "webhook"]
    shown = str(settings.redacted())
    assert ROUTING_KEY not in shown and "SLACKSECRET" not in shown and "HOOKSECRET" not in shown
    assert receivers(Settings()) == []


async def test_a_real_alertmanager_shows_groups_and_resolves_the_alert(alertmanager: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sender = Alertmanager(alertmanager, "critical", "https://dash.example", resend_s=60)
    other = fired(now, by={"context.platform": "web"}, id="a3", incident_id="inc-2")
    await deliver(fired(now), other, to=sender)

    async def active() -> list[dict[str, Any]]:
        alerts = await am_get(alertmanager, "/api/v2/alerts?active=true")
        return [a for a in alerts if a["labels"].get("funnel") == "checkout"]

    shown = await eventually(lambda: _count(active, 2))
    assert len(shown) == 2
    mobile = next(a for a in shown if a["labels"]["context_platform"] == "mobile")
    assert mobile["labels"] == {
        "alertname": "ConversionDrop",
        "funnel": "checkout",
        "step": "payment",
        "context_platform": "mobile",
        "severity": "critical",
    }
    assert mobile["annotations"]["root_cause"] == CAUSE.summary
    assert "conversion fell to 30.0%" in mobile["annotations"]["summary"]
    assert "Root cause: context.platform=mobile" in mobile["annotations"]["description"]
    assert mobile["generatorURL"] == "https://dash.example/?funnel=checkout&step=payment"
    assert mobile["status"]["state"] == "active"
    groups = await am_get(alertmanager, "/api/v2/alerts/groups")
    (group,) = [g for g in groups if g["labels"].get("funnel") == "checkout"]
    assert group["labels"] == {"alertname": "ConversionDrop", "funnel": "checkout"}
    assert len(group["alerts"]) == 2  # both values, one group
    await deliver(resolved(now + timedelta(seconds=1)), to=sender)

    async def mobile_gone() -> bool:
        left = await active()
        return [a["labels"]["context_platform"] for a in left] == ["web"]

    assert await eventually(mobile_gone)


async def _count(probe: object, n: int) -> list[dict[str, object]] | None:
    found = await probe()  # type: ignore[operator]
    return found if len(found) >= n else None
