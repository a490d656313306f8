"""Slack incoming webhook: a message with text (the notification's fallback) and blocks, for a
fire (what fell, by how much, since when, the root cause, a link) and for its resolution. Slack
cannot deduplicate a re-send; every message carries the alert and incident ids."""

from __future__ import annotations

import aiohttp
import orjson
from pydantic import SecretStr

from streams.alerts import text
from streams.alerts.delivery import post_json
from streams.core.records.outputs import Alert


class Slack:
    name = "slack"
    resend_s: float | None = None

    def __init__(self, url: SecretStr, dashboard: str | None) -> None:
        self._url = url  # the URL is the secret
        self._dashboard = dashboard

    def body(self, alert: Alert) -> dict[str, object]:
        fired = alert.state == "fired"
        headline = (":rotating_light: " if fired else ":white_check_mark: ") + text.summary(alert)
        blocks: list[dict[str, object]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text.evidence(alert)}},
        ]
        if fired:
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"*Root cause:* {text.root_cause(alert) or 'n/a'}"},
                }
            )
        link = text.dashboard_link(self._dashboard, alert)
        if link:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": f"<{link}|Open the dashboard>"}}
            )
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"alert {alert.id} · incident {alert.incident_id}"}],
            }
        )
        return {"text": headline, "blocks": blocks}

    async def send(self, http: aiohttp.ClientSession, alert: Alert, resend: bool) -> None:
        await post_json(http, self._url.get_secret_value(), orjson.dumps(self.body(alert)))
