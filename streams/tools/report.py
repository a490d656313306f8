"""`conversions report`: a funnel, or an experiment, from the Redis counters, as a terminal table.

An experiment's report (`--experiment NAME`) is recomputed from the counters, not read from the
worker: the variant field is an implicit breakdown of the experiment's funnel, so the counters
hold, per minute, the attempts that reached each step per variant, and `core.experiments.replay`
feeds those minutes, in order, to the same evaluator the worker runs. With one-minute buckets
and the experiment's whole history still in Redis (the counters' TTL), the looks are the
worker's looks, so the running p-value and confidence sequence are the worker's too, and they
are as fresh as the counters. The last record on `conversions.experiments` would be the worker's
figures exactly, but only as of the last decision change, which may be days old (README
"Experiments").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.core.config.matching import CompiledConfig, CompiledFunnel
from streams.core.config.model import Experiment
from streams.core.input.event import from_epoch_ms, to_epoch_ms
from streams.core.measures.counters import FunnelReport, bucket_of
from streams.core.measures.experiments import describe, replay
from streams.core.records.outputs import ExperimentUpdate
from streams.counters.base import CounterReads
from streams.counters.redis_store import counter_store, redis_client
from streams.errors import ConversionsError
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


class NothingCounted(ConversionsError, LookupError):
    """The counters under this application id hold no event yet: there is no "latest" to end a
    default window at (a report would otherwise show an empty table dated 1970)."""


async def _after_latest(settings: Settings, store: Any) -> int:
    """The end of the bucket of the latest event the counters counted: a report's default end."""
    latest = await store.latest_event_ms()
    if latest is None:
        raise NothingCounted(
            f"nothing counted yet under CONVERSIONS_APP_ID={settings.app_id!r} in REDIS_URL's Redis: is a "
            "worker (or `conversions counters`) running against this Redis with this application id? "
            "Outputs reach the counters a few seconds after their events"
        )
    return int(bucket_of(latest, store.bucket_ms) + store.bucket_ms)


async def funnel_report(
    settings: Settings, funnel: CompiledFunnel, window_ms: int, end: datetime | None, by: str | None
) -> FunnelReport:
    dsn = settings.redis_dsn
    assert dsn, "REDIS_URL must be set"
    client = redis_client(dsn)
    try:
        store = counter_store(settings, client)
        if end is not None:
            end_ms = to_epoch_ms(end)
        else:
            end_ms = await _after_latest(settings, store)
        return await store.funnel_report(funnel, end_ms - window_ms, end_ms, by=by)
    finally:
        await client.aclose()


def print_report(report: FunnelReport) -> None:
    Console().print(render(report))


@dataclass
class ExperimentReport:
    """An experiment judged again from the counters over [start, end): its state at the end and
    its decision changes on the way (empty `state`: no attempt in the range)."""

    config: CompiledConfig
    experiment: Experiment
    steps: list[str]
    start_ms: int
    end_ms: int
    state: ExperimentUpdate | None
    changes: list[ExperimentUpdate] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """`describe`'s JSON (the shape `/experiments` serves), with the range replayed."""
        return {
            **describe(self.config, self.experiment, self.state, self.changes),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
        }


async def experiment_from_counters(
    store: CounterReads, config: CompiledConfig, name: str, start_ms: int, end_ms: int
) -> ExperimentReport:
    """Read the experiment's funnel minute by minute over [start, end) and judge it again."""
    experiment = next(e for e in config.source.experiments if e.name == name)
    funnel = config.funnels_by_name[experiment.funnel]
    buckets = await store.funnel_buckets(funnel, start_ms, end_ms)
    state, changes = replay(config, name, buckets)
    return ExperimentReport(
        config, experiment, [s.name for s in funnel.steps], start_ms, end_ms, state, changes
    )


async def experiment_report(
    settings: Settings, config: CompiledConfig, name: str, window_ms: int | None, end: datetime | None
) -> ExperimentReport:
    """From Redis: by default everything the counters still hold (their TTL) up to the latest
    counted event."""
    dsn = settings.redis_dsn
    assert dsn, "REDIS_URL must be set"
    client = redis_client(dsn)
    try:
        store = counter_store(settings, client)
        if end is not None:
            end_ms = to_epoch_ms(end)
        else:
            end_ms = await _after_latest(settings, store)
        start_ms = end_ms - (window_ms if window_ms is not None else settings.counter_ttl_s * 1000)
        return await experiment_from_counters(store, config, name, start_ms, end_ms)
    finally:
        await client.aclose()


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def render_experiment(report: ExperimentReport) -> Table:
    start, end = from_epoch_ms(report.start_ms), from_epoch_ms(report.end_ms)
    experiment = report.experiment
    judged = experiment.step or report.steps[-1]
    level = 1 - experiment.alpha
    table = Table(
        title=(
            f"{experiment.name}: {experiment.funnel}, {report.steps[0]} -> {judged} by {experiment.variant}"
            f"  {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC"
        ),
        title_justify="left",
        caption=_caption(report),
        caption_justify="left",
    )
    table.add_column("variant")
    for column in (*report.steps, "rate", f"{level:.0%} interval", "lift", "difference"):
        table.add_column(column, justify="right")
    table.add_column(f"{level:.0%} sequence", justify="right")
    table.add_column("p (always valid)", justify="right")
    table.add_column("decision")
    state = report.state
    for v in state.variants if state is not None else []:
        table.add_row(
            v.variant,
            *(str(v.steps.get(step, 0)) for step in report.steps),
            _pct(v.rate),
            f"{v.rate_low:.1%} .. {v.rate_high:.1%}"
            if v.rate_low is not None and v.rate_high is not None
            else "",
            "" if v.lift is None else f"{v.lift:+.1%}",
            "" if v.difference is None else f"{v.difference:+.2%}",
            (
                f"{v.difference_low:+.2%} .. {v.difference_high:+.2%}"
                if v.difference_low is not None and v.difference_high is not None
                else ""
            ),
            _number(v.p_value, ".3g"),
            v.decision,
        )
    return table


def _caption(report: ExperimentReport) -> str:
    state = report.state
    if state is None:
        return "no attempt of this funnel in the counters over this range"
    lines = [
        f"judged up to {state.timestamp:%Y-%m-%d %H:%M} UTC; {state.unassigned} attempts without a variant"
    ]
    for change in report.changes[-5:]:
        decisions = ", ".join(
            f"{v.variant} {v.decision}" for v in change.variants if v.variant in change.changed
        )
        lines.append(f"{change.timestamp:%Y-%m-%d %H:%M}  {decisions}")
    return "\n".join(lines)


def print_experiment(report: ExperimentReport) -> None:
    Console().print(render_experiment(report))
