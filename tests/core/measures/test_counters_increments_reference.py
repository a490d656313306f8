"""The counters' increments (`core.counters.increments`) against a frozen reference.

`increments` was rewritten for speed (issue 17: the fields of an output computed once and
stamped for each bucket resolution, a cheaper `Op`); nothing it counts may change. The
reference below is the implementation before that rewrite, copied verbatim and renamed, apart
from the engine and definition versions (issue 25: a funnel's keys carry its version, `name@version`,
and a `fv` field records the version; `_versioned` applies exactly that to the reference): every
output of a seeded simulated run (each counted type, with the example
funnels' breakdowns), decoded as the counters consumer decodes it, and seeded variations of
them (fields missing or None, unknown funnels, no identity, no value), must make exactly the
same multiset of (kind, key, field, amount, type of amount), with and without a pseudonym, at
several bucket sizes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest

from streams.core.config.loader import load_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.input.event import to_epoch_ms
from streams.core.measures.counters import (
    CHANNEL_DIMS,
    COUNTED_TYPES,
    DECISION_BUCKETS_MIN,
    RECENT_MACROS,
    TIME_TO_CONVERT_S,
    VISITOR_TYPE,
    Op,
    OpKind,
    increments,
    pseudonymizer,
)
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# ---- the reference: streams/core/measures/counters.py before the rewrite, verbatim, renamed ----------


@dataclass(frozen=True, slots=True)
class RefOp:
    kind: OpKind
    key: str
    field: str
    amount: int | float | str


def ref_bucket_of(timestamp_ms: int, bucket_ms: int) -> int:
    return timestamp_ms // bucket_ms * bucket_ms


def ref_ms(value: Any) -> int:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return to_epoch_ms(moment)


def ref_with_breakdowns(
    ops: list[RefOp],
    kind: OpKind,
    key: str,
    base: str,
    amount: int | float,
    breakdowns: Mapping[str, Any],
    dims: Iterable[str],
) -> None:
    ops.append(RefOp(kind, key, base, amount))
    for dim in dims:
        value = breakdowns.get(dim)
        ops.append(RefOp(kind, key, f"{base}|{dim}={'' if value is None else value}", amount))


def ref_time_to_convert_bucket(elapsed_ms: int) -> str:
    """The histogram bucket of a time to convert: its upper bound in seconds, or `inf`."""
    seconds = elapsed_ms / 1000
    for le in TIME_TO_CONVERT_S:
        if seconds <= le:
            return str(le)
    return "inf"


def ref_visitor_type_of(output: Mapping[str, Any]) -> str:
    """A session's or macroconversion's visitor type: the session's own (`visitor_type`), the
    breakdown's when the funnel configuration asks for it, else from the person's session count."""
    known = output.get("visitor_type") or (output.get("breakdowns") or {}).get(VISITOR_TYPE)
    if known in ("new", "returning"):
        return str(known)
    return "returning" if int(output.get("sessions") or 1) > 1 else "new"


def ref_decision_bucket(decision_ms: int) -> str:
    minutes = decision_ms / 60_000
    for le in DECISION_BUCKETS_MIN:
        if minutes <= le:
            return str(le)
    return "inf"


def ref_resolutions(bucket_ms: int) -> tuple[int, ...]:
    """The finest bucket and the hour and day rollups above it, finest first."""
    return (bucket_ms, *(r for r in (HOUR_MS, DAY_MS) if r > bucket_ms and r % bucket_ms == 0))


def ref_increments(
    output: Mapping[str, Any],
    config: CompiledConfig,
    bucket_ms: int,
    pseudonym: Callable[[str], str] | None = None,
) -> list[RefOp]:
    """The counter changes one output event makes, at every resolution (none for types not counted)."""
    if output.get("type") not in COUNTED_TYPES:
        return []
    if pseudonym is not None:
        identity = output.get("user_id") or output.get("anonymous_id")
        output = {**output, "user_id": pseudonym(identity) if identity else None, "anonymous_id": None}
    at = ref_ms(output["timestamp"])
    ops: list[RefOp] = [RefOp("m", "meta", "latest", at)]
    if output.get("type") == "macro":
        ops.append(RefOp("l", "recent", ref_recent_entry(output), RECENT_MACROS))
    for resolution in ref_resolutions(bucket_ms):
        ops += ref_bucket_increments(output, config, f"{resolution // 1000}:{ref_bucket_of(at, resolution)}")
    ops += ref_cohort_increments(output, config, bucket_ms)
    return ops


def ref_cohort_resolutions(bucket_ms: int) -> tuple[int, ...]:
    """Cohorts are kept at the finest bucket and the hour: a progress report reads each cohort
    bucket on its own (its age matters), so the day rollup would not serve it."""
    return ref_resolutions(bucket_ms)[:2]


def ref_cohort_increments(output: Mapping[str, Any], config: CompiledConfig, bucket_ms: int) -> list[RefOp]:
    """A milestone or drop-off counted under the moment its attempt opened (`started_at`), and
    under the moment it reached the step it left or stayed at."""
    kind = output.get("type")
    if kind not in ("micro", "dropoff") or output.get("started_at") is None:
        return []
    if kind == "micro" and output.get("kind") != "milestone":
        return []
    funnel = config.funnels_by_name.get(str(output.get("funnel")))
    if funnel is None:
        return []
    started = ref_ms(output["started_at"])
    k = int(output["step_index"])
    reached: list[tuple[int, str]] = []  # (when the attempt reached that step, field)
    if kind == "micro":
        reached.append((ref_ms(output["timestamp"]), f"e:{k}"))
        if k > 0 and output.get("previous_at") is not None:
            reached.append((ref_ms(output["previous_at"]), f"n:{k - 1}"))
    else:
        reached.append((started + int(output.get("time_in_funnel_ms") or 0), f"d:{k}"))
    ops: list[RefOp] = []
    for resolution in ref_cohort_resolutions(bucket_ms):
        key = f"a:{funnel.name}:{resolution // 1000}:{ref_bucket_of(started, resolution)}"
        if kind == "micro":
            ops.append(RefOp("h", key, f"e:{k}", 1))
        else:
            ops.append(RefOp("h", key, f"d:{k}", 1))
            ops.append(RefOp("h", key, f"d:{k}:{output['reason']}", 1))
        for at, name in reached:
            ops.append(
                RefOp("h", f"r:{funnel.name}:{resolution // 1000}:{ref_bucket_of(at, resolution)}", name, 1)
            )
    return ops


def ref_channel_fields(
    ops: list[RefOp], key: str, metric: str, amount: int | float, output: Mapping[str, Any]
) -> None:
    """`metric` per channel and landing page, each also split by visitor type, and per visitor type."""
    kind: OpKind = "f" if isinstance(amount, float) else "h"
    visitor = ref_visitor_type_of(output)
    audience = output.get("audience") or {}
    dims = [*CHANNEL_DIMS, *(f"audience.{n}" for n in ("device", "browser", "os", "country", "language"))]
    for dim in dims if audience else CHANNEL_DIMS:
        value = audience.get(dim[9:]) if dim.startswith("audience.") else output.get(dim)
        field = f"{metric}|{dim}={'' if value is None else value}"
        ops.append(RefOp(kind, key, field, amount))
        ops.append(RefOp(kind, key, f"{field}|{VISITOR_TYPE}={visitor}", amount))
    ops.append(RefOp(kind, key, f"{metric}|{VISITOR_TYPE}={visitor}", amount))


def ref_recent_entry(macro: Mapping[str, Any]) -> str:
    """What the dashboard lists of a macroconversion: no identity, so nothing personal is kept."""
    timestamp = macro["timestamp"]
    entry = {
        "id": macro.get("id"),
        "timestamp": timestamp.isoformat() if isinstance(timestamp, datetime) else str(timestamp),
        "goal": macro.get("goal"),
        "value": macro.get("value"),
        "currency": macro.get("currency"),
        "channel": macro.get("channel"),
        "landing_page": macro.get("landing_page"),
        "decision_time_ms": macro.get("decision_time_ms"),
        "breakdowns": macro.get("breakdowns") or {},
    }
    return orjson.dumps(entry).decode()


def ref_bucket_increments(output: Mapping[str, Any], config: CompiledConfig, b: str) -> list[RefOp]:
    kind = output.get("type")
    identity = output.get("user_id") or output.get("anonymous_id") or ""
    breakdowns = output.get("breakdowns") or {}
    ops: list[RefOp] = []
    if kind == "micro":
        ops.append(RefOp("h", f"g:{b}", "mi", 1))
        if output.get("kind") == "secondary":
            ref_with_breakdowns(ops, "h", f"g:{b}", f"m:{output['name']}", 1, breakdowns, ())
            return ops
        funnel = config.funnels_by_name.get(str(output.get("funnel")))
        if funnel is None:
            return ops
        k = int(output["step_index"])
        ref_with_breakdowns(ops, "h", f"f:{funnel.name}:{b}", f"e:{k}", 1, breakdowns, funnel.breakdowns)
        ops.append(RefOp("p", f"u:{funnel.name}:{k}:{b}", identity, 1))
        if k > 0 and output.get("started_at") is not None:
            elapsed = max(0, ref_ms(output["timestamp"]) - ref_ms(output["started_at"]))
            ops.append(RefOp("h", f"t:{funnel.name}:{b}", f"t:{k}:{ref_time_to_convert_bucket(elapsed)}", 1))
            ops.append(RefOp("h", f"t:{funnel.name}:{b}", f"ts:{k}", elapsed))
        if k > 0 and output.get("previous_at") is not None:
            waited = max(0, ref_ms(output["timestamp"]) - ref_ms(output["previous_at"]))
            ops.append(RefOp("h", f"t:{funnel.name}:{b}", f"g:{k}:{ref_time_to_convert_bucket(waited)}", 1))
            ops.append(RefOp("h", f"t:{funnel.name}:{b}", f"gs:{k}", waited))
    elif kind in ("dropoff", "stalled"):
        funnel = config.funnels_by_name.get(str(output.get("funnel")))
        if funnel is None:
            return ops
        k = int(output["step_index"])
        key = f"f:{funnel.name}:{b}"
        if kind == "stalled":
            ref_with_breakdowns(ops, "h", key, f"st:{k}", 1, breakdowns, funnel.breakdowns)
        else:
            ref_with_breakdowns(ops, "h", key, f"d:{k}", 1, breakdowns, funnel.breakdowns)
            ops.append(RefOp("h", key, f"d:{k}:{output['reason']}", 1))
    elif kind == "macro":
        goal = output["goal"]
        key = f"g:{b}"
        dims = ("channel", "landing_page", *breakdowns)
        values = {**breakdowns, "channel": output.get("channel"), "landing_page": output.get("landing_page")}
        ref_with_breakdowns(ops, "h", key, f"n:{goal}", 1, values, dims)
        if output.get("value") is not None:
            ref_with_breakdowns(ops, "f", key, f"v:{goal}", float(output["value"]), values, dims)
        decision = int(output.get("decision_time_ms") or 0)
        ops.append(RefOp("h", key, f"dt:{goal}", decision))
        ops.append(RefOp("h", key, f"dth:{goal}:{ref_decision_bucket(decision)}", 1))
        ops.append(RefOp("p", f"ug:{goal}:{b}", identity, 1))
        ref_channel_fields(ops, f"c:{b}", f"n:{goal}", 1, output)
        if output.get("value") is not None:
            ref_channel_fields(ops, f"c:{b}", f"v:{goal}", float(output["value"]), output)
        ref_channel_fields(ops, f"c:{b}", f"dt:{goal}", decision, output)
    elif kind == "session":
        key = f"s:{b}"
        values = {"landing_page": output.get("landing_page"), "channel": output.get("channel")}
        dims = ("landing_page", "channel")
        ref_with_breakdowns(ops, "h", key, "n", 1, values, dims)
        ref_with_breakdowns(ops, "h", key, "pv", int(output.get("page_views") or 0), values, dims)
        ref_with_breakdowns(ops, "h", key, "dur", int(output.get("duration_ms") or 0), values, dims)
        reached = list(output.get("conversions") or [])
        ref_channel_fields(ops, f"c:{b}", "s", 1, output)
        ref_channel_fields(ops, f"c:{b}", "mi", int(output.get("microconversions") or 0), output)
        ref_channel_fields(ops, f"c:{b}", "pv", int(output.get("page_views") or 0), output)
        ref_channel_fields(ops, f"c:{b}", "dur", int(output.get("duration_ms") or 0), output)
        if int(output.get("page_views") or 0) <= 1:
            ref_channel_fields(ops, f"c:{b}", "b", 1, output)
        if reached:
            ref_channel_fields(ops, f"c:{b}", "cv", len(reached), output)
        for goal in sorted(set(reached)):
            ref_channel_fields(ops, f"c:{b}", f"cs:{goal}", 1, output)
    return ops


# ---- the comparison ---------------------------------------------------------------------------

CONFIG = compile_config(load_config(DEFAULT_FUNNELS))
BUCKETS_MS = (60_000, 300_000, HOUR_MS, DAY_MS)
Counted = Counter[tuple[str, str, str, Any, str]]


def _multiset(ops: Iterable[Op | RefOp]) -> Counted:
    """The increments as a multiset; the amount's type too, so 1 and 1.0 differ."""
    return Counter((op.kind, op.key, op.field, op.amount, type(op.amount).__name__) for op in ops)


@pytest.fixture(scope="module")
def outputs() -> list[dict[str, Any]]:
    """Every counted output of a seeded simulated shop, as the counters consumer decodes them."""
    run = OfflineRun(CONFIG, partitions=2)
    lines = Simulator(seed=7, users=1_500, days=1, bad_rate=0.0).lines()
    return [
        orjson.loads(output.to_json())
        for output in [*run.run(lines), *run.flush()]
        if output.type in COUNTED_TYPES
    ]


def _kind(output: Mapping[str, Any]) -> str:
    kind = str(output["type"])
    if kind == "micro":
        return f"micro:{output['kind']}"
    if kind == "macro":
        return "macro:value" if output.get("value") is not None else "macro:no value"
    return kind


def _variations(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seeded variations of real outputs: the edge cases a simulated run makes rarely or never."""
    rng = random.Random(17)
    varied: list[dict[str, Any]] = []
    for output in rng.sample(outputs, 3_000):
        changed = dict(output)
        for name in rng.sample(
            [
                "funnel",
                "breakdowns",
                "user_id",
                "anonymous_id",
                "value",
                "started_at",
                "previous_at",
                "channel",
                "landing_page",
                "visitor_type",
                "sessions",
                "conversions",
                "decision_time_ms",
                "time_in_funnel_ms",
                "page_views",
            ],
            rng.randint(1, 4),
        ):
            choice = rng.random()
            if choice < 0.4:
                changed.pop(name, None)
            elif choice < 0.7:
                changed[name] = None
            elif name == "funnel":
                changed[name] = "gone"
            elif name == "breakdowns":
                changed[name] = {"context.platform": None, "visitor_type": rng.choice(["new", "x"])}
            elif name == "conversions":
                changed[name] = ["purchase", "signup", "purchase"]
            elif name in ("value", "decision_time_ms", "page_views", "sessions"):
                changed[name] = rng.choice([0, 3, 12.5])
            elif name in ("user_id", "anonymous_id", "channel", "landing_page"):
                changed[name] = rng.choice(["", "a b|c=d", "ü"])
        if "step_index" in changed and rng.random() < 0.1:
            changed["step_index"] = 0
        if changed.get("funnel") not in CONFIG.funnels_by_name:
            changed.pop("funnel_version", None)  # counted by its own breakdowns: test_counters
        varied.append(changed)
    # datetimes rather than strings, as an output's fields are before serialization
    for output in outputs[:500]:
        changed = dict(output)
        for name in ("timestamp", "started_at", "previous_at"):
            if isinstance(changed.get(name), str):
                changed[name] = datetime.fromisoformat(changed[name])
        varied.append(changed)
    return varied


def test_the_simulated_run_covers_every_counted_output(outputs: list[dict[str, Any]]) -> None:
    kinds = Counter(map(_kind, outputs))
    expected = {
        "micro:milestone",
        "micro:secondary",
        "macro:value",
        "dropoff",
        "stalled",
        "session",
    }
    assert expected <= set(kinds), kinds
    assert all(kinds[kind] >= 20 for kind in expected), kinds
    with_breakdowns = [o for o in outputs if any((o.get("breakdowns") or {}).values())]
    assert {o["type"] for o in with_breakdowns} >= {"micro", "macro", "dropoff", "stalled"}
    assert any(o.get("previous_at") and o.get("started_at") for o in outputs)


def _versioned(output: Mapping[str, Any], ops: list[RefOp]) -> list[RefOp]:
    """The reference's increments of an output of a versioned funnel: its keys under
    `name@version`, and the version's latest event time in `fv`."""
    version, funnel = output.get("funnel_version"), output.get("funnel")
    if not version or funnel not in CONFIG.funnels_by_name or output["type"] == "session":
        return ops
    out = []
    for op in ops:
        parts = op.key.split(":")
        if parts[0] in ("f", "u", "t", "a", "r") and parts[1] == funnel:
            parts[1] = f"{funnel}@{version}"
        out.append(RefOp(op.kind, ":".join(parts), op.field, op.amount))
    moment = output["timestamp"]
    at = to_epoch_ms(moment if isinstance(moment, datetime) else datetime.fromisoformat(moment))
    return [*out, RefOp("m", "fv", f"{funnel}@{version}", at)]


@pytest.mark.parametrize("bucket_ms", BUCKETS_MS)
@pytest.mark.parametrize("pseudonymized", [False, True])
def test_increments_equal_the_reference_for_every_output(
    outputs: list[dict[str, Any]], bucket_ms: int, pseudonymized: bool
) -> None:
    pseudonym: Callable[[str], str] | None = pseudonymizer(b"key") if pseudonymized else None
    counted = 0
    macros_without_value = 0
    for output in [*outputs, *_variations(outputs)]:
        expected = _versioned(output, ref_increments(output, CONFIG, bucket_ms, pseudonym))
        actual = increments(output, CONFIG, bucket_ms, pseudonym)
        assert _multiset(actual) == _multiset(expected), output
        assert all(type(op) is Op for op in actual)
        counted += len(expected)
        macros_without_value += output["type"] == "macro" and output.get("value") is None
    assert counted > 10 * len(outputs), "most outputs make many increments"
    assert macros_without_value > 0


def test_uncounted_types_make_no_increments(outputs: list[dict[str, Any]]) -> None:
    for kind in ("deadletter", "alert", "identity", "experiment", None):
        output = {**outputs[0], "type": kind}
        assert increments(output, CONFIG, 60_000) == [] == ref_increments(output, CONFIG, 60_000)
