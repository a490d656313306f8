"""`conversions report`: a funnel from the Redis counters, as a terminal table."""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from streams.core.counters import FunnelReport, bucket_of
from streams.core.events import from_epoch_ms, to_epoch_ms
from streams.core.matching import CompiledFunnel
from streams.counters.redis_store import counter_store
from streams.settings import Settings


def _pct(rate: float | None) -> str:
    return "" if rate is None else f"{rate:.1%}"


def render(report: FunnelReport) -> Table:
    start, end = from_epoch_ms(report.start_ms), from_epoch_ms(report.end_ms)
    table = Table(
        title=f"{report.funnel}  {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC", title_justify="left"
    )
    for column in ("step", "entered", "users", "from previous", "overall", "dropped", "stalled"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in report.steps:
        table.add_row(
            step.name,
            str(step.entered),
            str(step.unique_users),
            _pct(step.rate_from_previous),
            _pct(step.rate_overall),
            str(step.dropped),
            str(step.stalled),
        )
    for value, steps in report.breakdown.items():
        table.add_section()
        for step in steps:
            table.add_row(
                f"{report.by}={value or '(none)'}  {step.name}",
                str(step.entered),
                "",
                _pct(step.rate_from_previous),
                _pct(step.rate_overall),
                str(step.dropped),
                str(step.stalled),
            )
    return table


async def funnel_report(
    settings: Settings, funnel: CompiledFunnel, window_ms: int, end: datetime | None, by: str | None
) -> FunnelReport:
    dsn = settings.redis_dsn
    assert dsn, "REDIS_URL must be set"
    client = aioredis.from_url(dsn)
    try:
        store = counter_store(settings, client)
        if end is not None:
            end_ms = to_epoch_ms(end)
        else:
            latest = await store.latest_event_ms()
            end_ms = (bucket_of(latest, store.bucket_ms) + store.bucket_ms) if latest is not None else 0
        return await store.funnel_report(funnel, end_ms - window_ms, end_ms, by=by)
    finally:
        await client.aclose()


def print_report(report: FunnelReport) -> None:
    Console().print(render(report))
