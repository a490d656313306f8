"""The generic webhook: every alert state change POSTed as its JSON (the `funnel.alerts`
record). It cannot deduplicate a re-send: consumers that care use the alert's `id` (one per state
change) and `incident_id` (shared by a fire and its resolution)."""

from __future__ import annotations

import aiohttp
from pydantic import SecretStr

from streams.alerts.delivery import post_json
from streams.core.records.outputs import Alert


class Webhook:
    name = "webhook"
    resend_s: float | None = None

    def __init__(self, url: SecretStr) -> None:
        self._url = url  # may hold a token: kept out of logs

    async def send(self, http: aiohttp.ClientSession, alert: Alert, resend: bool) -> None:
        await post_json(http, self._url.get_secret_value(), alert.to_json())
