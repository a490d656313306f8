"""Alerts delivered to every configured receiver, without ever blocking the pipeline.

Each receiver has its own queue and task: `submit` only enqueues. A delivery that fails is
retried with exponential backoff (capped at `MAX_BACKOFF_S`) until `alert_delivery_give_up_s`
has passed, then given up with an error log; `conversions_alert_deliveries{receiver,outcome}`
counts delivered, retried and given_up. A receiver that answers a request as malformed (a 4xx
other than 408 and 429) is not retried. Receivers that want the alert again while it fires
(Alertmanager resolves what is not re-sent) say so with `resend_s`, and get every firing alert
at that interval.

Delivery is at least once: a leader that dies after sending and before its successor knows
repeats nothing the receivers cannot tell apart (Alertmanager by labels, PagerDuty by dedup key
= the incident id); Slack and the generic webhook cannot deduplicate, and every message carries
the alert id and incident id for whoever reads them.

Secrets (routing keys, webhook URLs) stay inside the receivers: the logs name the receiver,
the alert id and the HTTP status or exception class, never a URL or a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp

from streams.core.records.outputs import Alert
from streams.errors import ConversionsError
from streams.metrics import Metrics

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
QUEUE_LIMIT = 10_000
"""Alerts waiting per receiver; beyond it the oldest waiting one is dropped (and counted)."""


class DeliveryError(ConversionsError):
    """A failed delivery; `permanent` when retrying cannot help (the receiver refused the body)."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Receiver(Protocol):
    name: str
    resend_s: float | None

    async def send(self, http: aiohttp.ClientSession, alert: Alert, resend: bool) -> None:
        """Deliver one alert state change (or, with resend, repeat a firing one); raise
        DeliveryError on failure."""


async def post_json(http: aiohttp.ClientSession, url: str, body: bytes) -> None:
    """POST a JSON body; DeliveryError on anything but 2xx (with the status, never the URL)."""
    try:
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            if response.status < 300:
                return
            permanent = 400 <= response.status < 500 and response.status not in (408, 429)
            raise DeliveryError(f"HTTP {response.status}", permanent)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(exc.__class__.__name__) from None


class Delivery:
    def __init__(
        self,
        receivers: Iterable[Receiver],
        metrics: Metrics,
        timeout_s: float,
        give_up_s: float,
        firing: Callable[[], Iterable[Alert]],
    ) -> None:
        self.receivers = list(receivers)
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._give_up_s = give_up_s
        self._firing = firing
        self._queues: dict[str, asyncio.Queue[tuple[Alert, bool]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self._tasks or not self.receivers:
            return
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        for receiver in self.receivers:
            queue: asyncio.Queue[tuple[Alert, bool]] = asyncio.Queue()
            self._queues[receiver.name] = queue
            self._tasks.append(
                asyncio.create_task(self._deliver(receiver, queue), name=f"alerts-{receiver.name}")
            )
            if receiver.resend_s is not None:
                self._tasks.append(
                    asyncio.create_task(self._resend(receiver, queue), name=f"resend-{receiver.name}")
                )

    def submit(self, alerts: Iterable[Alert]) -> None:
        """Queue state changes for every receiver; returns at once."""
        self.start()
        for alert in alerts:
            for receiver in self.receivers:
                self._put(receiver.name, alert, False)

    def _put(self, name: str, alert: Alert, resend: bool) -> None:
        queue = self._queues[name]
        if queue.qsize() >= QUEUE_LIMIT:
            queue.get_nowait()
            self._metrics.alert_deliveries.labels(name, "dropped").inc()
        queue.put_nowait((alert, resend))

    async def idle(self) -> None:
        """Wait until every queued alert has been delivered or given up (tests, shutdown)."""
        for queue in self._queues.values():
            await queue.join()

    async def _resend(self, receiver: Receiver, queue: asyncio.Queue[tuple[Alert, bool]]) -> None:
        assert receiver.resend_s is not None
        while True:
            await asyncio.sleep(receiver.resend_s)
            for alert in list(self._firing()):
                self._put(receiver.name, alert, True)

    async def _deliver(self, receiver: Receiver, queue: asyncio.Queue[tuple[Alert, bool]]) -> None:
        assert self._http is not None
        while True:
            alert, resend = await queue.get()
            try:
                await self._deliver_one(receiver, alert, resend)
            finally:
                queue.task_done()

    async def _deliver_one(self, receiver: Receiver, alert: Alert, resend: bool) -> None:
        assert self._http is not None
        counter = self._metrics.alert_deliveries
        deadline = time.monotonic() + self._give_up_s
        backoff = FIRST_BACKOFF_S
        while True:
            try:
                await receiver.send(self._http, alert, resend)
            except DeliveryError as exc:
                if exc.permanent or time.monotonic() + backoff > deadline:
                    counter.labels(receiver.name, "given_up").inc()
                    log.error(
                        "alert %s (%s %s) not delivered to %s: %s; given up%s",
                        alert.id,
                        alert.state,
                        alert.incident_id,
                        receiver.name,
                        exc,
                        "" if exc.permanent else f" after {self._give_up_s:g} s",
                    )
                    return
                counter.labels(receiver.name, "retried").inc()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            else:
                counter.labels(receiver.name, "delivered").inc()
                return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
