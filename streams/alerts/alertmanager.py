"""Prometheus Alertmanager: `POST /api/v2/alerts`, as Prometheus itself sends them.

Labels identify the alert (alertname, funnel, step, each `by` value, severity), so the same rule
and value is the same alert in Alertmanager, grouped and deduplicated there. A firing alert is
re-sent every `alert_alertmanager_resend_s` with endsAt four intervals ahead (Prometheus does the
same): if the leader dies and nobody re-sends, Alertmanager resolves it by itself, and the
successor's re-send opens it again. A resolution is sent with endsAt = the event time it
resolved at (or now, if that is later than the clock)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson

from streams.alerts import text
from streams.alerts.delivery import post_json
from streams.core.records.outputs import Alert

ALERTNAME = "ConversionDrop"
RESEND_VALIDITY = 4  # endsAt while firing: this many resend intervals ahead


def label_name(path: str) -> str:
    """A breakdown path as a Prometheus label name (context.platform -> context_platform)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", path)
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


def labels(alert: Alert, severity: str) -> dict[str, str]:
    out = {"alertname": ALERTNAME, "funnel": alert.funnel, "step": alert.step}
    for path, value in alert.by.items():
        out[label_name(path)] = "" if value is None else value
    out["severity"] = severity
    return out


class Alertmanager:
    name = "alertmanager"

    def __init__(self, url: str, severity: str, dashboard: str | None, resend_s: float) -> None:
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self._severity = severity
        self._dashboard = dashboard
        self.resend_s: float | None = resend_s

    def body(self, alert: Alert, now: datetime | None = None) -> list[dict[str, object]]:
        now = now or datetime.now(UTC)
        link = text.dashboard_link(self._dashboard, alert)
        annotations = {
            "summary": text.summary(alert),
            "description": text.description(alert, link),
            "root_cause": text.root_cause(alert),
            "incident_id": alert.incident_id or "",
            "alert_id": alert.id,
        }
        if link:
            annotations["dashboard"] = link
        if alert.state == "resolved":
            # not after now: Alertmanager keeps the later endsAt of an alert not yet resolved
            ends = min(alert.timestamp, now)
        else:
            assert self.resend_s is not None
            ends = now + timedelta(seconds=self.resend_s * RESEND_VALIDITY)
        item: dict[str, object] = {
            "labels": labels(alert, self._severity),
            "annotations": annotations,
            "endsAt": ends.isoformat().replace("+00:00", "Z"),
        }
        if alert.state == "fired":
            item["startsAt"] = alert.timestamp.isoformat().replace("+00:00", "Z")
        if link:
            item["generatorURL"] = link
        return [item]

    async def send(self, http: aiohttp.ClientSession, alert: Alert, resend: bool) -> None:
        await post_json(http, self._url, orjson.dumps(self.body(alert)))
