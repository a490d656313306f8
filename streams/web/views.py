"""The worker's read-only web server: the live dashboard, funnel and goal reports as JSON,
alerts, Prometheus metrics."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.core.counters import bucket_of
from streams.core.durations import parse_duration_ms
from streams.core.events import to_epoch_ms
from streams.counters.redis_store import CounterStore
from streams.errors import ConversionsError, QueryTooLarge

if TYPE_CHECKING:
    from faust.web import Request, Response, View

    from streams.pipeline.app import ConversionsApp

DEFAULT_WINDOW = "15m"
DASHBOARD_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}


log = logging.getLogger(__name__)
Handler = Callable[..., Awaitable["Response"]]


def redis_outage_as_503(handler: Handler) -> Handler:
    """While Redis is down the counters wait (see `apply_with_retry`); queries say so plainly."""

    @functools.wraps(handler)
    async def wrapped(web: View, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(web, request, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("query %s: Redis unavailable (%s)", request.url, exc.__class__.__name__)
            return web.json({"error": "Redis is unavailable; counters resume when it is back"}, status=503)

    return wrapped


def dashboard_asset(name: str) -> bytes:
    return resources.files("streams.web").joinpath("dashboard", name).read_bytes()


class BadQuery(ConversionsError, ValueError):
    """A query the views cannot answer: the message says what to change (HTTP 400)."""


def _moment(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return to_epoch_ms(datetime.fromisoformat(text))
    except ValueError:
        raise BadQuery(f"unreadable time {text!r}: use RFC 3339 or epoch milliseconds") from None


async def resolve_window(store: CounterStore, query: dict[str, str]) -> tuple[int, int]:
    """[start, end) in event time: explicit `start`/`end`, else the last `window` up to the latest
    event time counted (so a replay of history reads like live traffic)."""
    try:
        window = parse_duration_ms(query.get("window", DEFAULT_WINDOW))
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    if "end" in query:
        end = _moment(query["end"])
    else:
        latest = await store.latest_event_ms()
        if latest is None:
            latest = to_epoch_ms(datetime.now().astimezone())
        end = bucket_of(latest, store.bucket_ms) + store.bucket_ms
    start = _moment(query["start"]) if "start" in query else end - window
    if start >= end:
        raise BadQuery("start must be before end")
    try:
        store.check_window(start, end)
    except QueryTooLarge as exc:
        raise BadQuery(str(exc)) from None
    return start, end


def register_views(conversions: ConversionsApp) -> None:
    app = conversions.app
    funnels = conversions.config.funnels_by_name
    goals = [g.name for g in conversions.config.goals]

    counting = conversions.counting
    assert counting is not None, "the views read the counters"

    def store() -> CounterStore:
        return counting.store

    @redis_outage_as_503
    async def report(web: View, request: Request, name: str) -> Response:
        funnel = funnels.get(name)
        if funnel is None:
            return web.json({"error": f"no funnel {name!r}", "funnels": sorted(funnels)}, status=404)
        query = dict(request.query)
        by = query.get("by")
        if by is not None and by not in funnel.breakdowns:
            return web.json(
                {"error": f"{name} has no breakdown {by!r}", "breakdowns": list(funnel.breakdowns)},
                status=400,
            )
        try:
            start, end = await resolve_window(store(), query)
        except BadQuery as exc:
            return web.json({"error": str(exc)}, status=400)
        result = await store().funnel_report(funnel, start, end, by=by)
        return web.json(result.as_dict())

    @redis_outage_as_503
    async def overview(web: View, request: Request) -> Response:
        try:
            start, end = await resolve_window(store(), dict(request.query))
        except BadQuery as exc:
            return web.json({"error": str(exc)}, status=400)
        body: dict[str, Any] = {"start_ms": start, "end_ms": end, "funnels": {}}
        for name, funnel in funnels.items():
            body["funnels"][name] = (await store().funnel_report(funnel, start, end)).as_dict()
        body["goals"] = await store().goals_report(goals, start, end)
        return web.json(body)

    @redis_outage_as_503
    async def goals_view(web: View, request: Request) -> Response:
        try:
            start, end = await resolve_window(store(), dict(request.query))
        except BadQuery as exc:
            return web.json({"error": str(exc)}, status=400)
        return web.json(await store().goals_report(goals, start, end))

    alerting = conversions.alerting

    def alerts_body() -> dict[str, Any]:
        if alerting is None:
            return {"rules": 0, "firing": [], "recent": []}
        return {
            "rules": len(conversions.config.source.alerts),
            "watermark_ms": alerting.watermark(),
            "firing": [a.model_dump(mode="json") for a in alerting.firing.values()],
            "recent": [a.model_dump(mode="json") for a in alerting.history],
        }

    async def alerts_view(web: View, request: Request) -> Response:
        return web.json(alerts_body())

    @redis_outage_as_503
    async def live(web: View, request: Request) -> Response:
        """Everything the dashboard shows, in one request: every funnel (the chosen one broken
        down by `by`), the goals, recent macroconversions and alerts."""
        query = dict(request.query)
        try:
            start, end = await resolve_window(store(), query)
        except BadQuery as exc:
            return web.json({"error": str(exc)}, status=400)
        chosen, by = query.get("funnel"), query.get("by") or None
        body: dict[str, Any] = {
            "start_ms": start,
            "end_ms": end,
            "latest_event_ms": await store().latest_event_ms(),
            "funnels": {},
        }
        for name, funnel in funnels.items():
            breakdown = by if name == chosen and by in funnel.breakdowns else None
            report = await store().funnel_report(funnel, start, end, by=breakdown)
            body["funnels"][name] = {"breakdowns": list(funnel.breakdowns), **report.as_dict()}
        body["goals"] = await store().goals_report(goals, start, end)
        body["recent_macros"] = await store().recent_macros()
        body["alerts"] = alerts_body()
        return web.json(body)

    async def dashboard(web: View, request: Request) -> Response:
        return web.html(dashboard_asset("index.html").decode())

    async def asset(web: View, request: Request, name: str) -> Response:
        if name not in DASHBOARD_FILES:
            return web.text("not found", status=404)
        return web.text(dashboard_asset(name).decode(), content_type=DASHBOARD_FILES[name])

    async def metrics(web: View, request: Request) -> Response:
        return web.bytes(conversions.metrics.render(), content_type="text/plain; version=0.0.4")

    app.page("/funnels/{name}")(report)
    app.page("/funnels")(overview)
    app.page("/goals")(goals_view)
    app.page("/metrics")(metrics)
    app.page("/alerts")(alerts_view)
    app.page("/live")(live)
    app.page("/")(dashboard)
    app.page("/dashboard/{name}")(asset)
