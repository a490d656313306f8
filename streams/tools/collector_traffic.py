"""The simulated shop's traffic as a Segment tracker sends it: to the collector's HTTP API.

`conversions demo --via collector` drives the worker's collector instead of the broker. Each
simulated event becomes the Segment message a shop's tracker would send for it:

- `page_view` -> a `page` call (the page in its `properties` and in `context.page`, as
  analytics.js sends it); every other event -> a `track` call with that event name;
- `messageId` = the event's id, so a retried batch is applied once; `userId` and `anonymousId`
  as the event has them; `timestamp` as the event has it;
- the platform as the libraries tell it: analytics.js with a desktop or a phone's user agent for
  `web` and `mobile`, Segment's iOS and Android libraries for `ios` and `android`;
- campaign in `context.campaign`, an explicit session id in `context.sessionId` (RudderStack's).

No `sentAt` is sent: the simulated clock runs faster than real time on purpose, and the
collector's clock correction (`receivedAt - (sentAt - timestamp)`) would pull the events back
to real time.

`CollectorSink` batches the messages as the libraries do (up to 100 per request, or what came
within `flush_s`), posts them to `/v1/batch` with the write key as basic auth, one request at a
time so that one device's calls reach the topic in order, and retries a request answered 503
(after its Retry-After) or not answered at all. Malformed payloads are posted on their own and
counted when the collector refuses them (400).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)

BATCH_MESSAGES = 100
RETRY_S = 1.0
DRAIN_S = 30.0

DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
_DEVICES: dict[str, dict[str, Any]] = {
    "web": {"library": {"name": "analytics.js", "version": "next-1.84.3"}, "userAgent": DESKTOP_UA},
    "mobile": {"library": {"name": "analytics.js", "version": "next-1.84.3"}, "userAgent": PHONE_UA},
    "ios": {
        "library": {"name": "analytics-ios", "version": "4.1.8"},
        "os": {"name": "iOS", "version": "17.5"},
    },
    "android": {
        "library": {"name": "analytics-android", "version": "4.11.3"},
        "os": {"name": "Android", "version": "14"},
    },
}


def segment_message(event: dict[str, Any]) -> dict[str, Any]:
    """The Segment message a tracker sends for one simulated event (see the module docstring)."""
    context: dict[str, Any] = dict(_DEVICES.get(event.get("context", {}).get("platform", "web"), {}))
    locale = event.get("context", {}).get("locale")
    if locale:
        context["locale"] = locale
    page = {key: value for key, value in (event.get("page") or {}).items() if value}
    if page:
        context["page"] = page
    if event.get("campaign"):
        context["campaign"] = dict(event["campaign"])
    if event.get("session_id"):
        context["sessionId"] = event["session_id"]
    message: dict[str, Any] = {
        "messageId": event["event_id"],
        "timestamp": event["timestamp"],
        "context": context,
    }
    for source, target in (("user_id", "userId"), ("anonymous_id", "anonymousId")):
        if event.get(source):
            message[target] = event[source]
    properties = dict(event.get("properties") or {})
    if event["event"] == "page_view":
        message["type"] = "page"
        message["properties"] = {**page, **properties}
    else:
        message["type"] = "track"
        message["event"] = event["event"]
        message["properties"] = properties
    return message


@dataclass
class CollectorStats:
    acknowledged: int = 0
    """Messages in requests the collector answered 200 (the broker has them)."""
    requests: int = 0
    refused: int = 0
    """Malformed payloads the collector refused (400 or 413)."""
    retries: int = 0
    """Requests sent again after a 503 or no answer."""


class CollectorSink:
    """Where live traffic goes when it goes through the collector: `await start()`, then
    `send`/`send_bad`, `flush()`, `stop()`."""

    def __init__(self, url: str, write_key: str, flush_s: float = 0.2, batch: int = BATCH_MESSAGES) -> None:
        self.url = url.rstrip("/") + "/v1"
        self.stats = CollectorStats()
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self._flush_s = flush_s
        self._batch = batch
        self._pending: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[tuple[str, bytes, int] | None] = asyncio.Queue()
        self._session: aiohttp.ClientSession | None = None
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._sender = asyncio.create_task(self._send_requests())

    async def send(self, event: dict[str, Any], line: bytes) -> None:
        self._pending.append(segment_message(event))
        if len(self._pending) >= self._batch:
            self._enqueue_batch()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._enqueue_batch)

    async def send_bad(self, raw: bytes) -> None:
        """A malformed payload, posted on its own (a request is all or nothing)."""
        await self._queue.put(("/batch", raw, 0))

    async def flush(self) -> None:
        """Every message handed over so far posted and answered (waiting at most `DRAIN_S`)."""
        self._enqueue_batch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), DRAIN_S)

    async def stop(self) -> None:
        """Stop retrying, post what is still queued once, close."""
        self._closing = True
        self._enqueue_batch()
        if self._sender is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._sender, DRAIN_S)
        if self._session is not None:
            await self._session.close()

    def _enqueue_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            body = orjson.dumps({"batch": self._pending})
            self._queue.put_nowait(("/batch", body, len(self._pending)))
            self._pending = []

    async def _send_requests(self) -> None:
        while (item := await self._queue.get()) is not None:
            try:
                await self._post(*item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    async def _post(self, path: str, body: bytes, messages: int) -> None:
        """One request until the collector answers it other than 503 (retried, as the
        libraries do: nothing answered 200 is lost, nothing else was kept)."""
        assert self._session is not None
        while True:
            self.stats.requests += 1
            try:
                async with self._session.post(self.url + path, data=body) as answer:
                    status, retry_after = answer.status, answer.headers.get("Retry-After")
                    text = await answer.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, retry_after, text = 0, None, str(exc) or exc.__class__.__name__
            if status == 200:
                self.stats.acknowledged += messages
                return
            if status in (400, 413) and not messages:
                self.stats.refused += 1
                return
            if status not in (0, 503):
                log.error("the collector answered %d to %d messages: %s", status, messages, text[:300])
                return
            if self._closing:
                log.warning("stopping: %d messages not acknowledged (%s)", messages, status or text)
                return
            self.stats.retries += 1
            delay = float(retry_after) if retry_after and retry_after.isdigit() else RETRY_S
            log.info("the collector answered %s; retrying in %.0f s", status or text, delay)
            await asyncio.sleep(delay)
