"""Alerts POSTed as JSON to `CONVERSIONS_ALERT_WEBHOOK_URL` (by the leader only): three tries,
then a warning; the alert is on `funnel.alerts` regardless, so a failed POST loses nothing."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from pydantic import SecretStr

from streams.core.records.outputs import Alert

log = logging.getLogger(__name__)


class Webhook:
    def __init__(self, url: SecretStr, timeout_s: float, topic: str) -> None:
        self._url = url  # may hold a token: kept out of logs
        self._timeout_s = timeout_s
        self._topic = topic
        self._http: aiohttp.ClientSession | None = None

    async def post(self, alert: Alert) -> None:
        """POST one alert; three tries, then a warning: the alert is on the topic regardless."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        for attempt in range(3):
            try:
                async with self._http.post(
                    self._url.get_secret_value(),
                    data=alert.to_json(),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = exc.__class__.__name__
            await asyncio.sleep(0.5 * 2**attempt)
        log.warning(
            "alert webhook failed (%s) for alert %s; it is on %s regardless", problem, alert.id, self._topic
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
