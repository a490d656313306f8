"""Failover of alert delivery (issue 27, item 5): two workers judge the same planted incident;
the leader is killed with SIGKILL after the fire reached the receivers and before the
resolution; the successor sends what it judged while following and then the resolution. Every
state change reaches every receiver at least once, PagerDuty and Alertmanager hold one incident
for it, and the resolve closes that same incident."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.simulate import Incident, Simulator
from streams.tools.worker_process import WorkerProcess
from tests.alerts.receivers import Receiver, alertmanager, am_get, receiver
from tests.counters.test_counters_worker import get_metric, wait_for
from tests.helpers import incident_funnels, lines_past
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, send_ticks

__all__ = ["alertmanager", "receiver"]

MOBILE = {"context.platform": "mobile"}


@pytest.mark.timeout(500)
async def test_the_successor_delivers_every_state_change_once_per_incident(
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    receiver: Receiver,
    alertmanager: str,
) -> None:
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(incident_funnels(baseline="3d", min_entered=15))
    start = datetime(2024, 3, 1, tzinfo=UTC)
    incident = Incident(start + timedelta(days=4), start + timedelta(days=11), "mobile", 0.3)
    lines = list(Simulator(seed=8, users=4_000, start=start, days=13, incident=incident).lines())
    middle = incident.start + timedelta(days=3)
    before = [line for line in lines if _at(line) < middle]
    after = [line for line in lines if _at(line) >= middle]
    end = start + timedelta(days=40)
    closing, ticks = lines_past(end)
    ports = [free_port(), free_port()]
    env = {
        **SOURCE_IDLE,
        "CONVERSIONS_FUNNELS": str(funnels),
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_ALERT_ALERTMANAGER_URL": alertmanager,
        "CONVERSIONS_ALERT_ALERTMANAGER_RESEND_S": "2",
        "CONVERSIONS_ALERT_PAGERDUTY_ROUTING_KEY": "failover-routing-key",
        "CONVERSIONS_ALERT_PAGERDUTY_URL": f"{receiver.url}/pagerduty",
        "CONVERSIONS_ALERT_SLACK_WEBHOOK_URL": f"{receiver.url}/slack",
        "CONVERSIONS_ALERT_WEBHOOK_URL": f"{receiver.url}/webhook",
        "CONVERSIONS_ALERT_FAILOVER_LOOKBACK_S": str(30 * 86_400),
    }
    await ensure_topics(settings)
    workers = [
        start_worker(name, env={**env, "CONVERSIONS_WEB_PORT": str(port)})
        for name, port in zip(("first", "second"), ports, strict=True)
    ]

    async def leader() -> int | None:
        leading = [
            i for i, port in enumerate(ports) if await get_metric(port, "conversions_alert_leader", "") == 1
        ]
        return leading[0] + 1 if len(leading) == 1 else None  # 1-based: wait_for wants a truthy value

    await produce_lines(settings, before)

    def triggers() -> list[dict[str, Any]]:
        return [
            b
            for b in receiver.bodies("/pagerduty")
            if b["event_action"] == "trigger" and b["payload"]["custom_details"]["by"] == MOBILE
        ]

    async def fired() -> list[dict[str, Any]] | None:
        return triggers() or None

    await wait_for(fired, timeout_s=180)
    first_leader = await wait_for(leader, timeout_s=30) - 1
    workers[first_leader].kill()  # mid-incident: fired and delivered, not yet resolved
    survivor = ports[1 - first_leader]
    await produce_lines(settings, after)
    await send_ticks(settings, ticks)
    await asyncio.sleep(3)
    await produce_lines(settings, closing)

    async def resolved() -> list[dict[str, Any]] | None:
        pagerduty = receiver.bodies("/pagerduty")
        return [b for b in pagerduty if b["event_action"] == "resolve"] or None

    await wait_for(resolved, timeout_s=240)
    assert await get_metric(survivor, "conversions_alert_leader", "") == 1

    webhook = [b for b in receiver.bodies("/webhook") if b["by"] == MOBILE]
    states = {(b["state"], b["incident_id"]) for b in webhook}
    incidents = {incident_id for state, incident_id in states if state == "fired"}
    in_outage = {
        b["incident_id"]
        for b in webhook
        if b["state"] == "fired" and incident.start < datetime.fromisoformat(b["timestamp"]) < incident.end
    }
    assert in_outage, webhook
    (outage,) = in_outage
    assert ("resolved", outage) in states, "the resolution reached the webhook"
    slack = " ".join(b["text"] for b in receiver.bodies("/slack"))
    assert slack.count("Resolved: checkout -> payment [context.platform=mobile]") >= 1
    assert "checkout -> payment [context.platform=mobile] conversion fell" in slack
    # PagerDuty: every trigger of the outage under one dedup key, and a resolve for it
    keys = {b["dedup_key"] for b in triggers()}
    assert outage in keys and keys <= incidents
    resolves = [b["dedup_key"] for b in receiver.bodies("/pagerduty") if b["event_action"] == "resolve"]
    assert outage in resolves
    assert all(b["routing_key"] == "failover-routing-key" for b in receiver.bodies("/pagerduty"))

    # Alertmanager: the mobile alert, one (by labels), resolved at the end
    async def am_resolved() -> bool:
        shown = await am_get(alertmanager, "/api/v2/alerts?active=true")
        return not [a for a in shown if a["labels"].get("context_platform") == "mobile"]

    assert await wait_for(am_resolved, timeout_s=30)
    groups = await am_get(alertmanager, "/api/v2/alerts/groups")
    assert all(len({str(a["labels"]) for a in g["alerts"]}) == len(g["alerts"]) for g in groups)


def _at(line: bytes) -> datetime:
    value = orjson.loads(line)
    if isinstance(value, list):
        value = value[0]
    return datetime.fromisoformat(str(value["timestamp"]).replace("Z", "+00:00"))
