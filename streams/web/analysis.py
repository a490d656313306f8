"""The analysis views: a step's trend against its alert, the channels and landing pages table,
in-progress vs dropped attempts with a projected rate, and time-to-convert distributions.

Plain functions over `ports.CounterReader` (and `ports.AlertReader` for the alert marks), like
`views`: each answers an HTTP status and a JSON body, and refuses a parameter it does not know
or cannot use with a 400 that says what to change. The arithmetic is `core.insights`.

The trend's alert overlay recomputes what the rule judges at the end of each bucket from the
counters: the rate over the rule's `window`, and over its `baseline` (the stretch before the
window, or with weekly seasonality the same span in each of the previous weeks). While the rule
fires it is judged against the baseline it fired with (`Alert.baseline_rate`, from the alerts
service), and the overlay shows that one. What it does not redo: the evaluator also leaves an
incident's minutes out of the baseline after it resolves, so just after a long incident the
line can sit a little lower than the evaluator's baseline; the fired and resolved marks are the
evaluator's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.core.config.durations import format_duration_ms, parse_duration_ms
from streams.core.config.matching import CompiledConfig, CompiledFunnel
from streams.core.config.model import AlertRule
from streams.core.input.event import to_epoch_ms
from streams.core.measures.counters import TABLE_DIMS, VISITOR_TYPE, counter_name
from streams.core.measures.insights import (
    CHANNEL_BASES,
    CHANNEL_COLUMNS,
    cdf,
    channel_rows,
    histogram,
    progress,
    sliding_grids,
    sliding_sums,
    thresholds,
    time_to_convert,
)
from streams.errors import QueryTooLarge
from streams.ports import AlertReader, CounterReader
from streams.web.views import Answer, BadQuery, resolve_window

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
SERIES_BUCKETS_MS = (MINUTE_MS, 5 * MINUTE_MS, HOUR_MS, 3 * HOUR_MS, 6 * HOUR_MS, DAY_MS)
"""Automatic trend buckets: minutes up to a few hours, then whole hours, which the counters'
hour rollups answer in one key each."""
TARGET_POINTS = 100
MAX_POINTS = 1_000
CURVE_LOOKBACK_MS = 7 * DAY_MS
MAX_CHANNEL_ROWS = 500
WINDOW_PARAMETERS = ("window", "start", "end")


def _unknown(query: dict[str, str], allowed: Sequence[str]) -> Answer | None:
    unknown = sorted(set(query) - set(allowed) - set(WINDOW_PARAMETERS))
    if unknown:
        return 400, {
            "error": f"unknown parameter {unknown[0]!r}",
            "parameters": [*WINDOW_PARAMETERS, *allowed],
        }
    return None


def _funnel(config: CompiledConfig, name: str) -> CompiledFunnel | Answer:
    chosen = config.funnels_by_name.get(name)
    if chosen is None:
        return 404, {"error": f"no funnel {name!r}", "funnels": sorted(config.funnels_by_name)}
    return chosen


# ---- a step's trend ---------------------------------------------------------------------------


def _rules_for(config: CompiledConfig, funnel: str, step: str) -> list[AlertRule]:
    return [r for r in config.source.alerts if r.funnel == funnel and r.step == step]


def default_step(config: CompiledConfig, funnel: CompiledFunnel) -> str:
    """The step of the funnel's first alert rule, else its last step."""
    rules = [r for r in config.source.alerts if r.funnel == funnel.name]
    return rules[0].step if rules else funnel.steps[-1].name


def _bucket(query: dict[str, str], span: int, finest: int) -> int:
    if "bucket" in query:
        try:
            size = parse_duration_ms(query["bucket"])
        except ValueError as exc:
            raise BadQuery(f"bucket: {exc}") from None
        if size % finest:
            raise BadQuery(f"bucket must be a multiple of the counters' {format_duration_ms(finest)}")
    else:
        fitting = [b for b in SERIES_BUCKETS_MS if b % finest == 0 and span / b <= TARGET_POINTS]
        size = fitting[0] if fitting else max(SERIES_BUCKETS_MS[-1], finest)
    if -(-span // size) > MAX_POINTS:
        raise BadQuery(
            f"{-(-span // size)} buckets; at most {MAX_POINTS}: widen the bucket or narrow the window"
        )
    return size


async def series(
    store: CounterReader,
    config: CompiledConfig,
    alert_reader: AlertReader | None,
    name: str,
    query: dict[str, str],
) -> Answer:
    """A step's rate from the step before, per bucket over the window, with the alert overlay."""
    refused = _unknown(query, ("step", "by", "value", "bucket"))
    if refused:
        return refused
    funnel = _funnel(config, name)
    if not isinstance(funnel, CompiledFunnel):
        return funnel
    steps = [s.name for s in funnel.steps]
    step = query.get("step") or default_step(config, funnel)
    if step not in steps:
        return 400, {"error": f"{name} has no step {step!r}", "steps": steps}
    k = steps.index(step)
    if k == 0:
        return 400, {
            "error": f"{step!r} is the funnel's first step: a rate needs a step before it",
            "steps": steps,
        }
    by, value = query.get("by"), query.get("value")
    if by is not None and by not in funnel.breakdowns:
        return 400, {"error": f"{name} has no breakdown {by!r}", "breakdowns": list(funnel.breakdowns)}
    if (by is None) != (value is None):
        return 400, {"error": "by and value go together: by=<breakdown>&value=<one of its values>"}
    try:
        start, end = await resolve_window(store, query)
        size = _bucket(query, end - start, store.bucket_ms)
        body = await _series(store, config, alert_reader, funnel, k, start, end, size, by, value)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    except QueryTooLarge as exc:
        return 400, {"error": str(exc)}
    return 200, body


async def _series(
    store: CounterReader,
    config: CompiledConfig,
    alert_reader: AlertReader | None,
    funnel: CompiledFunnel,
    k: int,
    start: int,
    end: int,
    size: int,
    by: str | None,
    value: str | None,
) -> dict[str, Any]:
    count = -(-(end - start) // size)
    end = -(-end // size) * size  # whole buckets: the last one may still be filling
    start = end - count * size
    suffix = f"|{by}={value}" if by is not None else ""
    fields = [f"e:{k - 1}{suffix}", f"e:{k}{suffix}"]
    family = f"f:{counter_name(funnel)}:{{b}}"
    step = funnel.steps[k].name
    rules = _rules_for(config, funnel.name, step)
    rule = next((r for r in rules if r.by == ([by] if by else [])), None)
    plans: list[tuple[int, int]] = []
    overlay_note = None
    if rule is not None:
        window = max(size, round(rule.window / size) * size)
        if rule.seasonality == "weekly":
            half = (rule.baseline - rule.window) // 2 // MINUTE_MS * MINUTE_MS
            spans = [
                (-s * WEEK_MS - rule.window - half, -s * WEEK_MS + half) for s in range(1, rule.seasons + 1)
            ]
        else:
            spans = [(-rule.baseline, -rule.window)]
        spans = [(_round(lo, size), _round(hi, size)) for lo, hi in spans]
        spans = [(lo, max(hi, lo + size)) for lo, hi in spans]
        plans = [(-window, 0), *spans]
        if (
            window != rule.window
            or any(lo % MINUTE_MS or hi % MINUTE_MS for lo, hi in spans)
            or size > rule.window
        ):
            overlay_note = (
                f"at {format_duration_ms(size)} buckets the rule's {format_duration_ms(rule.window)} "
                f"window is drawn as {format_duration_ms(window)}: a shorter window shows the exact judgement"
            )
    first_end = start + size
    grids = [(start, count, size)]
    layouts = [sliding_grids(first_end, count, size, lo, hi) for lo, hi in plans]
    for layout in layouts:
        grids += layout
    read = await store.read_grids(family, fields, grids)
    chart, rest = read[0], read[1:]
    buckets = [
        {
            "start_ms": start + i * size,
            "entered_previous": int(before),
            "entered": int(now),
            # arrivals from earlier buckets can outnumber a bucket's entries: a rate is at most 1,
            # like the alert's; the counts beside it stay as counted
            "rate": min(1.0, now / before) if before else None,
        }
        for i, (before, now) in enumerate(chart)
    ]
    body: dict[str, Any] = {
        "funnel": funnel.name,
        "step": step,
        "step_index": k,
        "previous_step": funnel.steps[k - 1].name,
        "by": by,
        "value": value,
        "start_ms": start,
        "end_ms": end,
        "bucket_ms": size,
        "buckets": buckets,
        "alert": None,
        "rules": [{"by": r.by, "window": format_duration_ms(r.window)} for r in rules],
    }
    if rule is None:
        return body
    sums: list[list[list[float]]] = []
    for (lo, hi), layout in zip(plans, layouts, strict=True):
        sums.append(sliding_sums(rest[: len(layout)], count, size, lo, hi))
        rest = rest[len(layout) :]
    changes = _changes(
        alert_reader, funnel.name, step, {by: value} if by is not None and value is not None else {}
    )
    frozen = _frozen_spans(changes)
    points = []
    for i in range(count):
        t = first_end + i * size
        w_before, w_now = sums[0][i]
        b_before = sum(season[i][0] for season in sums[1:])
        b_now = sum(season[i][1] for season in sums[1:])
        baseline_rate = b_now / b_before if b_before else None
        baseline_entered = int(b_before)
        held = next(
            (rate for fired, resolved, rate in frozen if fired <= t and (resolved is None or t <= resolved)),
            None,
        )
        if held is not None:
            baseline_rate = held
        fire, resolve = thresholds(
            rule, baseline_rate if held is not None or baseline_entered >= rule.min_entered else None
        )
        points.append(
            {
                "end_ms": t,
                "entered_previous": int(w_before),
                "entered": int(w_now),
                "rate": w_now / w_before if w_before else None,
                "judged": w_before >= rule.min_entered,
                "baseline_entered_previous": baseline_entered,
                "baseline_rate": baseline_rate,
                "frozen": held is not None,
                "fire_below": fire,
                "resolve_above": resolve,
            }
        )
    body["alert"] = {
        "rule": rule.model_dump(mode="json", exclude={"funnel", "step"})
        | {"window": format_duration_ms(rule.window), "baseline": format_duration_ms(rule.baseline)},
        "note": overlay_note,
        "points": points,
        "changes": [c for c in changes if start <= c["timestamp_ms"] <= end],
    }
    return body


def _round(offset: int, size: int) -> int:
    return round(offset / size) * size


def _changes(
    reader: AlertReader | None, funnel: str, step: str, by: dict[str, str | None]
) -> list[dict[str, Any]]:
    """The alert service's fired and resolved alerts of this rule and value, oldest first."""
    if reader is None:
        return []
    seen: dict[str, dict[str, Any]] = {}
    for alert in [*reader.history, *reader.firing.values()]:
        if alert.funnel != funnel or alert.step != step or alert.by != by:
            continue
        seen[alert.id] = {
            "id": alert.id,
            "timestamp_ms": to_epoch_ms(alert.timestamp),
            "state": alert.state,
            "rate": alert.rate,
            "baseline_rate": alert.baseline_rate,
            "entered": alert.entered,
            "p_value": alert.p_value,
        }
    return sorted(seen.values(), key=lambda c: (c["timestamp_ms"], c["state"] == "fired"))


def _frozen_spans(changes: list[dict[str, Any]]) -> list[tuple[int, int | None, float]]:
    """[fired, resolved] spans with the baseline rate each fired with (resolved None: firing)."""
    spans: list[tuple[int, int | None, float]] = []
    for change in changes:
        if change["state"] == "fired" and change["baseline_rate"] is not None:
            spans.append((change["timestamp_ms"], None, change["baseline_rate"]))
        elif change["state"] == "resolved" and spans and spans[-1][1] is None:
            fired, _, rate = spans[-1]
            spans[-1] = (fired, change["timestamp_ms"], rate)
    return spans


# ---- in progress, dropped, projected ----------------------------------------------------------


async def progress_view(
    store: CounterReader, config: CompiledConfig, name: str, query: dict[str, str]
) -> Answer:
    """The attempts that opened in the window, per step: reached the next step, dropped, still in
    progress, and the projected rate (core.insights)."""
    refused = _unknown(query, ())
    if refused:
        return refused
    funnel = _funnel(config, name)
    if not isinstance(funnel, CompiledFunnel):
        return funnel
    try:
        start, end = await resolve_window(store, query)
        size, cohorts = await store.cohorts(counter_name(funnel), start, end)
        waiting_ms, waiting = await store.cohorts(counter_name(funnel), start, end, family="r")
        lookback = min(funnel.window or CURVE_LOOKBACK_MS, CURVE_LOOKBACK_MS)
        curve_fields = await store.window_sums(f"t:{counter_name(funnel)}:{{b}}", end - lookback, end)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    except QueryTooLarge as exc:
        return 400, {"error": str(exc)}
    latest = await store.latest_event_ms()
    as_of = min(end, latest) if latest is not None else end
    steps = [s.name for s in funnel.steps]
    chained = funnel.order != "any"
    curves = {k: cdf(histogram(curve_fields, k, of="g")) for k in range(1, len(steps))}
    rows = progress(cohorts, size, as_of, steps, curves, waiting, waiting_ms)
    body: dict[str, Any] = {
        "funnel": funnel.name,
        "order": funnel.order,
        "chained": chained,
        "start_ms": start,
        "end_ms": end,
        "as_of_ms": as_of,
        "cohort_bucket_ms": size,
        "curve_lookback_ms": lookback,
        "curve_conversions": {
            steps[k]: sum(c for _, c in histogram(curve_fields, k, of="g")) for k in curves
        },
        "projection": "the open attempts of each step are aged from reaching it; the curve is the time "
        "from the step to the next over the lookback (core.insights)",
        "steps": rows
        if chained
        else [{"step": r["step"], "index": r["index"], "entered": r["entered"]} for r in rows],
    }
    if chained and rows:
        first = rows[0]
        projected = 1.0
        for row in rows[:-1]:
            projected = projected * row["rate_projected"] if row["rate_projected"] is not None else 0.0
        body["overall"] = {
            "entered": first["entered"],
            "completed": rows[-1]["entered"],
            "in_progress": sum(r["in_progress"] for r in rows),
            "dropped": sum(r["dropped"] for r in rows),
            "rate_observed": rows[-1]["entered"] / first["entered"] if first["entered"] else None,
            "rate_projected": projected if first["entered"] else None,
        }
    else:
        body["note"] = (
            "order: any reports each step once in any order: its steps do not chain, so no step has a next"
        )
    return 200, body


# ---- time to convert --------------------------------------------------------------------------


async def time_to_convert_view(
    store: CounterReader, config: CompiledConfig, name: str, query: dict[str, str]
) -> Answer:
    """Per step after the first, the time from the attempt's opening to the step, for the steps
    reached in the window: histogram, mean, median and p90."""
    refused = _unknown(query, ())
    if refused:
        return refused
    funnel = _funnel(config, name)
    if not isinstance(funnel, CompiledFunnel):
        return funnel
    try:
        start, end = await resolve_window(store, query)
        fields = await store.window_sums(f"t:{counter_name(funnel)}:{{b}}", start, end)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    except QueryTooLarge as exc:
        return 400, {"error": str(exc)}
    return 200, {
        "funnel": funnel.name,
        "start_ms": start,
        "end_ms": end,
        "measured_from": "the opening of the attempt (its first step-1 event)",
        "steps": time_to_convert(fields, [s.name for s in funnel.steps]),
    }


# ---- channels and landing pages ---------------------------------------------------------------


async def channels(store: CounterReader, config: CompiledConfig, query: dict[str, str]) -> Answer:
    """Sessions, conversions, rate, value, decision time and micro/macro ratio per channel or
    landing page (optionally split by visitor type), sorted."""
    refused = _unknown(query, ("dimension", "goal", "split", "sort", "order", "limit"))
    if refused:
        return refused
    dim = query.get("dimension", "channel")
    if dim not in TABLE_DIMS:
        return 400, {
            "error": f"dimension must be one of {', '.join(TABLE_DIMS)}",
            "dimensions": list(TABLE_DIMS),
        }
    goals = [g.name for g in config.goals]
    goal = query.get("goal") or (goals[0] if goals else "")
    if goal not in goals:
        return 400, {"error": f"no goal {goal!r}", "goals": goals}
    split = query.get("split")
    if split not in (None, "", VISITOR_TYPE):
        return 400, {"error": f"split must be {VISITOR_TYPE} (or absent)"}
    sort = query.get("sort", "sessions")
    if sort not in (*CHANNEL_COLUMNS, dim):
        return 400, {"error": f"cannot sort by {sort!r}", "columns": [dim, *CHANNEL_COLUMNS]}
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return 400, {"error": "order must be asc or desc"}
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        return 400, {"error": "limit must be a whole number"}
    if not 1 <= limit <= MAX_CHANNEL_ROWS:
        return 400, {"error": f"limit must be between 1 and {MAX_CHANNEL_ROWS}"}
    try:
        start, end = await resolve_window(store, query)
        fields = await store.window_sums("c:{b}", start, end)
    except BadQuery as exc:
        return 400, {"error": str(exc)}
    except QueryTooLarge as exc:
        return 400, {"error": str(exc)}
    rows, totals = channel_rows(fields, dim, goal, bool(split))
    known = sorted(
        (r for r in rows if r[sort] is not None),
        key=lambda r: (r[sort], str(r[dim])),
        reverse=order == "desc",
    )
    rows = known + sorted((r for r in rows if r[sort] is None), key=lambda r: str(r[dim]))  # none last
    return 200, {
        "start_ms": start,
        "end_ms": end,
        "dimension": dim,
        "goal": goal,
        "goals": goals,
        "split": split or None,
        "sort": sort,
        "order": order,
        "columns": [dim, *([VISITOR_TYPE] if split else []), *CHANNEL_COLUMNS],
        "rows": rows[:limit],
        "truncated": len(rows) > limit,
        "totals": totals,
        "bases": CHANNEL_BASES,
        "dimensions": list(TABLE_DIMS),
    }
