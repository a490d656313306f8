"""PagerDuty Events API v2: a fire triggers, its resolution resolves, both under the incident's
`dedup_key` (the alert's `incident_id`, a function of the rule and the moment it fired), so a
re-sent trigger joins the open incident instead of opening a second, and a resolve closes it."""

from __future__ import annotations

import aiohttp
import orjson
from pydantic import SecretStr

from streams.alerts import text
from streams.alerts.delivery import post_json
from streams.core.records.outputs import Alert

SUMMARY_LIMIT = 1_024  # PagerDuty truncates payload.summary there


class PagerDuty:
    name = "pagerduty"
    resend_s: float | None = None

    def __init__(
        self, routing_key: SecretStr, url: str, severity: str, source: str, dashboard: str | None
    ) -> None:
        self._key = routing_key  # a secret: kept out of logs
        self._url = url
        self._severity = severity
        self._source = source
        self._dashboard = dashboard

    def body(self, alert: Alert) -> dict[str, object]:
        key = self._key.get_secret_value()
        dedup = alert.incident_id or alert.id
        if alert.state == "resolved":
            return {"routing_key": key, "event_action": "resolve", "dedup_key": dedup}
        summary = text.summary(alert)
        if len(summary) >= SUMMARY_LIMIT:
            summary = summary[: SUMMARY_LIMIT - 2] + "…"
        link = text.dashboard_link(self._dashboard, alert)
        details: dict[str, object] = {
            "rate": alert.rate,
            "baseline_rate": alert.baseline_rate,
            "entered": alert.entered,
            "baseline_entered": alert.baseline_entered,
            "by": alert.by,
            "method": alert.method,
            "evidence": text.evidence(alert),
            "root_cause": text.root_cause(alert),
            "alert_id": alert.id,
            "incident_id": alert.incident_id,
        }
        if alert.method == "cusum":
            details |= {
                "statistic": alert.statistic,
                "threshold": alert.threshold,
                "trials": alert.trials,
                "failures": alert.failures,
                "resolution_delay": alert.resolution_delay,
            }
        else:
            details |= {"window": alert.window, "p_value": alert.p_value, "p_threshold": alert.p_threshold}
        if alert.root_cause is not None:
            details["segments"] = [s.model_dump(mode="json") for s in alert.root_cause.segments]
        body: dict[str, object] = {
            "routing_key": key,
            "event_action": "trigger",
            "dedup_key": dedup,
            "payload": {
                "summary": summary,
                "source": self._source,
                "severity": self._severity,
                "timestamp": alert.timestamp.isoformat().replace("+00:00", "Z"),
                "component": alert.funnel,
                "group": alert.step,
                "class": "conversion_drop",
                "custom_details": details,
            },
        }
        if link:
            body["links"] = [{"href": link, "text": "Conversion dashboard"}]
        return body

    async def send(self, http: aiohttp.ClientSession, alert: Alert, resend: bool) -> None:
        await post_json(http, self._url, orjson.dumps(self.body(alert)))
