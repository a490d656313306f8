"""The read-only views, as plain functions over the read protocols (`ports.CounterReader`,
`ports.AlertReader`): each takes the query and answers an HTTP status and a JSON body, knowing
nothing of Faust or Redis. `routes` serves them; the tests call them with the in-memory store.

Windows are in event time: explicit `start`/`end`, else the last `window` up to the latest event
time counted, so a replay of history reads like live traffic. Breakdown values come from clients:
each answer names at most `cap` of a breakdown's values (`CONVERSIONS_BREAKDOWN_CAP`), the rest
summed as `(other)` (streams/core/measures/cardinality.py).
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any

from streams.core.config.durations import parse_duration_ms
from streams.core.config.matching import CompiledConfig
from streams.core.input.event import to_epoch_ms
from streams.core.measures.cardinality import BREAKDOWN_CAP
from streams.core.measures.counters import bucket_of
from streams.errors import ConversionsError, QueryTooLarge
from streams.ports import AlertReader, CounterReader

DEFAULT_WINDOW = "15m"
DASHBOARD_FILES = {
    "dashboard.js": "text/javascript",
    "panels.js": "text/javascript",
    "generations.js": "text/javascript",
    "dashboard.css": "text/css",
    "login.css": "text/css",
}

Answer = tuple[int, dict[str, Any]]
"""An HTTP status and a JSON body."""


class BadQuery(ConversionsError, ValueError):
    """A query the views cannot answer: the message says what to change (HTTP 400)."""


def dashboard_asset(name: str) -> bytes:
    return resources.files("streams.web").joinpath("dashboard", name).read_bytes()


def _moment(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return to_epoch_ms(datetime.fromisoformat(text))
    except ValueError:
        raise BadQuery(f"unreadable time {text!r}: use RFC 3339 or epoch milliseconds") from None


async def resolve_window(store: CounterReader, query: dict[str, str]) -> tuple[int, int]:
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


async def funnel(
    store: CounterReader, config: CompiledConfig, name: str, query: dict[str, str], cap: int = BREAKDOWN_CAP
) -> Answer:
    """One funnel's steps over the window, broken down `by` one of its breakdowns if asked."""
    funnels = config.funnels_by_name
    chosen = funnels.get(name)
    if chosen is None:
        return 404, {"error": f"no funnel {name!r}", "funnels": sorted(funnels)}
    by = query.get("by")
    if by is not None and by not in chosen.breakdowns:
        return 400, {"error": f"{name} has no breakdown {by!r}", "breakdowns": list(chosen.breakdowns)}
    try:
        start, end = await resolve_window(store, query)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    version = query.get("version")
    if version is not None and version != chosen.version and version not in await store.funnel_versions(name):
        return 404, {"error": f"no counters of {name} version {version!r}", "version": chosen.version}
    return 200, (await store.funnel_report(chosen, start, end, by=by, version=version, cap=cap)).as_dict()


def _goal_names(config: CompiledConfig) -> list[str]:
    return [g.name for g in config.goals]


async def overview(
    store: CounterReader, config: CompiledConfig, query: dict[str, str], cap: int = BREAKDOWN_CAP
) -> Answer:
    """Every funnel and the goals over the window."""
    try:
        start, end = await resolve_window(store, query)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    body: dict[str, Any] = {"start_ms": start, "end_ms": end, "funnels": {}}
    for name, compiled in config.funnels_by_name.items():
        body["funnels"][name] = (await store.funnel_report(compiled, start, end)).as_dict()
    body["goals"] = await store.goals_report(_goal_names(config), start, end, cap=cap)
    return 200, body


async def goals(
    store: CounterReader, config: CompiledConfig, query: dict[str, str], cap: int = BREAKDOWN_CAP
) -> Answer:
    try:
        start, end = await resolve_window(store, query)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    return 200, await store.goals_report(_goal_names(config), start, end, cap=cap)


def alerts(reader: AlertReader | None, config: CompiledConfig) -> dict[str, Any]:
    """The rules, the evaluator's event time, the alerts firing now and the latest changes."""
    if reader is None:
        return {"rules": 0, "firing": [], "recent": []}
    return {
        "rules": len(config.source.alerts),
        "watermark_ms": reader.watermark(),
        "firing": [a.model_dump(mode="json") for a in reader.firing.values()],
        "recent": [a.model_dump(mode="json") for a in reader.history],
    }


async def live(
    store: CounterReader,
    config: CompiledConfig,
    alert_reader: AlertReader | None,
    query: dict[str, str],
    cap: int = BREAKDOWN_CAP,
) -> Answer:
    """Everything the dashboard shows, in one request: every funnel (the chosen one broken
    down by `by`), the goals, recent macroconversions and alerts."""
    try:
        start, end = await resolve_window(store, query)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    chosen, by = query.get("funnel"), query.get("by") or None
    body: dict[str, Any] = {
        "start_ms": start,
        "end_ms": end,
        "latest_event_ms": await store.latest_event_ms(),
        "funnels": {},
    }
    for name, compiled in config.funnels_by_name.items():
        breakdown = by if name == chosen and by in compiled.breakdowns else None
        report = await store.funnel_report(compiled, start, end, by=breakdown, cap=cap)
        body["funnels"][name] = {"breakdowns": list(compiled.breakdowns), **report.as_dict()}
    body["goals"] = await store.goals_report(_goal_names(config), start, end, cap=cap)
    body["recent_macros"] = await store.recent_macros()
    body["alerts"] = alerts(alert_reader, config)
    return 200, body
