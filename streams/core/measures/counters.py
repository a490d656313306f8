"""Rolling funnel counters as plain data: which counters an output event increments, and how
bucketed counter hashes sum up into a funnel report. No Redis here; `redis_counters` stores them.

Layout (every key also carries a shard tag, see `redis_counters`), per event-time bucket B of
every resolution R (the finest, and the hour and day rollups), written as `R:B` below:

    f:<funnel>:B   hash  e:<k> entered step k, d:<k> dropped at k, d:<k>:<reason>, st:<k> stalled,
                         each also as <field>|<breakdown>=<value>
    u:<funnel>:<k>:B  HyperLogLog of identities that entered step k
    g:B            hash  n:<goal> count, v:<goal> value sum, dt:<goal> decision-time sum (ms),
                         dth:<goal>:<le> decision-time histogram, mi total microconversions,
                         m:<name> secondary microconversions; n:<goal>|<dim>=<value>
    ug:<goal>:B    HyperLogLog of converting identities
    s:B            hash  n sessions, pv page views, dur duration ms; each also |landing_page= and |channel=
    t:<funnel>:B   hash  time to convert, by the time the step was reached: t:<k>:<le> histogram of
                         (step time - attempt start) in seconds (TIME_TO_CONVERT_S), ts:<k> sum (ms);
                         g:<k>:<le>, gs:<k> the same of (step time - the step before's)
    a:<funnel>:B   hash  cohorts, by the time the attempt *opened* (minute and hour only): e:<k>
                         reached step k, d:<k> dropped at k, d:<k>:<reason>; per cohort, entered(k) =
                         entered(k+1) + dropped(k) + still open at k, exactly
    r:<funnel>:B   hash  the same by the time the attempt *reached step k* (minute and hour): e:<k>,
                         n:<k> went on to k+1 (by `previous_at`), d:<k> dropped at k (by its last
                         progress): how long the open ones have waited at their step
    c:B            hash  the channels table, per <dim>=<value> (dim: channel, landing_page and the
                         audience fields audience.device, .browser, .os, .country, .language),
                         each also with |visitor_type=<new|returning>, and per visitor_type alone:
                         from closed sessions s| sessions, mi| their microconversions, cv| their
                         conversions, cs:<goal>| sessions that reached the goal, pv| page views,
                         dur| duration ms, b| bounces (sessions of one page view or less); from
                         macroconversions n:<goal>| count, v:<goal>| value, dt:<goal>| decision ms
    meta           hash  latest: the latest event time counted (ms)
    recent         list  the latest macroconversions, newest first (no identities), capped
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

import orjson

from streams.core.config.matching import CompiledConfig, CompiledFunnel
from streams.core.input.event import to_epoch_ms
from streams.core.measures.cardinality import ValueCap, capped_output

OpKind = Literal["h", "f", "p", "m", "l"]  # HINCRBY, HINCRBYFLOAT, PFADD, keep-the-max, capped LPUSH
RECENT_MACROS = 20
DECISION_BUCKETS_MIN = (1, 5, 15, 60, 360, 1_440, 10_080)
TIME_TO_CONVERT_S = (
    10, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 14_400, 28_800, 43_200,
    86_400, 172_800, 259_200, 432_000, 604_800,
)  # fmt: skip
"""Upper bounds (inclusive) of the time-to-convert histogram's buckets, in seconds: roughly
doubling from 10 s to 7 days, then `inf`."""
CHANNEL_DIMS = ("channel", "landing_page")
AUDIENCE_DIMS = tuple(f"audience.{name}" for name in ("device", "browser", "os", "country", "language"))
TABLE_DIMS = CHANNEL_DIMS + AUDIENCE_DIMS
"""The channels table's dimensions (`c:` fields)."""
VISITOR_TYPE = "visitor_type"
COUNTED_TYPES = frozenset({"micro", "macro", "dropoff", "stalled", "carried", "session"})


def versioned(funnel: str, version: str | None) -> str:
    """The name a funnel's counters are kept under: with its definition's version, so the history
    of one version is never relabelled or mixed with another's (an output without a version,
    written before versions existed, keeps the bare name)."""
    return f"{funnel}@{version}" if version else funnel


def counter_name(funnel: CompiledFunnel, version: str | None = None) -> str:
    """The funnel's counters of `version` (default: its current one)."""
    return versioned(funnel.name, version or funnel.version)


def _output_dims(config: CompiledConfig, output: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The breakdowns an output of a funnel is counted by (None: not counted): the funnel's, or
    for a funnel no longer configured, whose version-stamped outputs still close its accounts,
    the output's own."""
    funnel = config.funnels_by_name.get(str(output.get("funnel")))
    if funnel is not None:
        return funnel.breakdowns
    if output.get("funnel_version"):
        return tuple(output.get("breakdowns") or {})
    return None


class Op(NamedTuple):
    """One counter change: `kind` (see `OpKind`) of `field` in `key` by `amount`. A named tuple,
    built with `tuple.__new__` in the hot path: an output makes dozens of them."""

    kind: OpKind
    key: str
    field: str
    amount: int | float | str


_new_op = tuple.__new__
Item = tuple[OpKind, str, int | float | str]
"""An increment of one output without its bucket: (kind, field, amount)."""
Group = tuple[str, list[Item]]
"""The increments of one key: the key without its bucket (`f:checkout:`), and its items."""
Cohort = tuple[str, int, list[Item]]
"""A cohort's increments: the key without its bucket, the moment (ms) whose buckets it goes
under at the first `COHORT_LEVELS` resolutions, and its items."""


def bucket_of(timestamp_ms: int, bucket_ms: int) -> int:
    return timestamp_ms // bucket_ms * bucket_ms


def _ms(value: Any) -> int:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return to_epoch_ms(moment)


def _with_breakdowns(
    items: list[Item], kind: OpKind, base: str, amount: int | float, suffixes: list[str]
) -> None:
    """`base`, and `base` per breakdown: `suffixes` are `_suffixes` of the breakdowns' values."""
    items.append((kind, base, amount))
    items += [(kind, base + suffix, amount) for suffix in suffixes]


def _suffixes(values: Mapping[str, Any], dims: Iterable[str]) -> list[str]:
    """The `|<dim>=<value>` of each breakdown dimension (an empty value when None or missing)."""
    return [f"|{dim}={'' if (value := values.get(dim)) is None else value}" for dim in dims]


def time_to_convert_bucket(elapsed_ms: int) -> str:
    """The histogram bucket of a time to convert: its upper bound in seconds, or `inf`."""
    seconds = elapsed_ms / 1000
    for le in TIME_TO_CONVERT_S:
        if seconds <= le:
            return str(le)
    return "inf"


def visitor_type_of(output: Mapping[str, Any]) -> str:
    """A session's or macroconversion's visitor type: the session's own (`visitor_type`), the
    breakdown's when the funnel configuration asks for it, else from the person's session count."""
    known = output.get("visitor_type") or (output.get("breakdowns") or {}).get(VISITOR_TYPE)
    if known in ("new", "returning"):
        return str(known)
    return "returning" if int(output.get("sessions") or 1) > 1 else "new"


def decision_bucket(decision_ms: int) -> str:
    minutes = decision_ms / 60_000
    for le in DECISION_BUCKETS_MIN:
        if minutes <= le:
            return str(le)
    return "inf"


HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def resolutions(bucket_ms: int) -> tuple[int, ...]:
    """The finest bucket and the hour and day rollups above it, finest first."""
    return (bucket_ms, *(r for r in (HOUR_MS, DAY_MS) if r > bucket_ms and r % bucket_ms == 0))


def pseudonymizer(key: bytes) -> Callable[[str], str]:
    """Identity -> a keyed hash: unique-user counts stay exact per identity, and the counters
    hold nothing that names a user without the key."""

    def pseudonym(identity: str) -> str:
        return hmac.new(key, identity.encode(), hashlib.sha256).hexdigest()[:32]

    return pseudonym


class Increments:
    """One output's counter changes before they are stamped with each resolution's bucket: what
    `increments` lists, kept folded (`counters.batch` folds the groups once per finest bucket, not
    once per resolution). Iterating gives exactly `increments`' list, in its order."""

    __slots__ = ("at", "bucket_ms", "cohorts", "groups", "head")

    def __init__(
        self, at: int, bucket_ms: int, head: list[Op], groups: list[Group], cohorts: list[Cohort]
    ) -> None:
        self.at = at
        self.bucket_ms = bucket_ms
        self.head = head
        """Increments with whole keys, before the groups: the latest event time, the recent list."""
        self.groups = groups
        """The increments of each key without its bucket (`_bucket_increments`)."""
        self.cohorts = cohorts
        """The cohort increments, after the groups, each at its own moment (`_cohort_groups`)."""

    def __iter__(self) -> Iterator[Op]:
        yield from self.head
        at = self.at
        for resolution, label in resolution_labels(self.bucket_ms):
            b = f"{label}{at // resolution * resolution}"
            for prefix, items in self.groups:
                key = prefix + b
                for k, name, amount in items:
                    yield _new_op(Op, (k, key, name, amount))
        for prefix, moment, items in self.cohorts:
            for resolution, label in resolution_labels(self.bucket_ms)[:COHORT_LEVELS]:
                key = f"{prefix}{label}{moment // resolution * resolution}"
                for k, name, amount in items:
                    yield _new_op(Op, (k, key, name, amount))

    def __len__(self) -> int:
        per_bucket = sum(len(items) for _, items in self.groups)
        levels = resolution_labels(self.bucket_ms)
        cohorts = sum(len(items) for _, _, items in self.cohorts) * len(levels[:COHORT_LEVELS])
        return len(self.head) + per_bucket * len(levels) + cohorts


def increments(
    output: Mapping[str, Any],
    config: CompiledConfig,
    bucket_ms: int,
    pseudonym: Callable[[str], str] | None = None,
    cap: ValueCap | None = None,
) -> list[Op]:
    """The counter changes one output event makes, at every resolution (none for types not counted).

    An output's fields are the same in every bucket resolution: they are computed once
    (`_bucket_increments`, keys without their bucket) and stamped with each resolution's bucket.
    With `cap`, every breakdown value is capped first (`measures.cardinality`)."""
    planned = increments_of(output, config, bucket_ms, pseudonym, cap)
    return [] if planned is None else list(planned)


def increments_of(
    output: Mapping[str, Any],
    config: CompiledConfig,
    bucket_ms: int,
    pseudonym: Callable[[str], str] | None = None,
    cap: ValueCap | None = None,
) -> Increments | None:
    """`increments`, unstamped (None for types not counted): what the counters consumer folds."""
    kind = output.get("type")
    if kind not in COUNTED_TYPES:
        return None
    if pseudonym is not None:
        identity = output.get("user_id") or output.get("anonymous_id")
        output = {**output, "user_id": pseudonym(identity) if identity else None, "anonymous_id": None}
    at = _ms(output["timestamp"])
    if cap is not None:
        output = capped_output(output, cap, at)
    head: list[Op] = [_new_op(Op, ("m", "meta", "latest", at))]
    version = output.get("funnel_version")
    if version and kind != "session":
        head.append(_new_op(Op, ("m", "fv", f"{output['funnel']}@{version}", at)))
    if kind == "macro":
        head.append(_new_op(Op, ("l", "recent", recent_entry(output), RECENT_MACROS)))
    groups = _bucket_increments(output, config, at)
    # a carried attempt moves between cohorts
    cohorts = _cohort_groups(output, config, at) if kind in ("micro", "dropoff", "carried") else []
    return Increments(at, bucket_ms, head, groups, cohorts)


_LABELS: dict[int, tuple[tuple[int, str], ...]] = {}


def resolution_labels(bucket_ms: int) -> tuple[tuple[int, str], ...]:
    """`resolutions` with each one's bucket label prefix (`60:`), kept per bucket size."""
    labels = _LABELS.get(bucket_ms)
    if labels is None:
        labels = _LABELS[bucket_ms] = tuple((r, f"{r // 1000}:") for r in resolutions(bucket_ms))
    return labels


def cohort_resolutions(bucket_ms: int) -> tuple[int, ...]:
    """Cohorts are kept at the finest bucket and the hour: a progress report reads each cohort
    bucket on its own (its age matters), so the day rollup would not serve it."""
    return resolutions(bucket_ms)[:2]


COHORT_LEVELS = 2
"""Cohorts are kept at the first two resolutions (`cohort_resolutions`)."""


def _cohort_groups(output: Mapping[str, Any], config: CompiledConfig, at: int) -> list[Cohort]:
    """A milestone or drop-off counted under the moment its attempt opened (`started_at`), and
    under the moment it reached the step it left or stayed at. `at` is the output's timestamp."""
    kind = output.get("type")
    if kind not in ("micro", "dropoff", "carried") or output.get("started_at") is None:
        return []
    if kind == "micro" and output.get("kind") != "milestone":
        return []
    if _output_dims(config, output) is None:
        return []
    started = _ms(output["started_at"])
    k = int(output["step_index"])
    reached: list[tuple[int, str]] = []  # (when the attempt reached that step, field)
    funnel = str(output["funnel"])
    if kind == "carried":  # out of the old version's cohort, into the new one's at its steps
        old = versioned(funnel, output.get("previous_version"))
        new = versioned(funnel, output.get("funnel_version"))
        return [
            (f"a:{old}:", started, [("h", f"co:{output['previous_step_index']}", 1)]),
            (f"a:{new}:", started, [("h", f"ci:{j}", 1) for j in output.get("reached") or ()]),
        ]
    if kind == "micro":
        opened = [f"e:{k}"]
        reached.append((at, opened[0]))
        if k > 0 and output.get("previous_at") is not None:
            reached.append((_ms(output["previous_at"]), f"n:{k - 1}"))
    else:
        opened = [f"d:{k}", f"d:{k}:{output['reason']}"]
        reached.append((started + int(output.get("time_in_funnel_ms") or 0), opened[0]))
    name = versioned(funnel, output.get("funnel_version"))
    cohorts: list[Cohort] = [(f"a:{name}:", started, [("h", field, 1) for field in opened])]
    cohorts += [(f"r:{name}:", moment, [("h", field, 1)]) for moment, field in reached]
    return cohorts


def _channel_fields(
    items: list[Item], metric: str, amount: int | float, channels: list[str], visitor: str
) -> None:
    """`metric` per channel and landing page, each also split by visitor type, and per visitor
    type: `channels` are `_suffixes(output, CHANNEL_DIMS)`, `visitor` `|visitor_type=<type>`."""
    kind: OpKind = "f" if isinstance(amount, float) else "h"
    for channel in channels:
        field = metric + channel
        items.append((kind, field, amount))
        items.append((kind, field + visitor, amount))
    items.append((kind, metric + visitor, amount))


def recent_entry(macro: Mapping[str, Any]) -> str:
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


def _bucket_increments(output: Mapping[str, Any], config: CompiledConfig, at: int) -> list[Group]:
    """The increments an output makes in each bucket, its keys without the bucket: the same at
    every resolution. `at` is the output's timestamp (ms)."""
    kind = output.get("type")
    identity = output.get("user_id") or output.get("anonymous_id") or ""
    breakdowns = output.get("breakdowns") or {}
    if kind == "micro":
        goals: list[Item] = [("h", "mi", 1)]
        if output.get("kind") == "secondary":
            goals.append(("h", f"m:{output['name']}", 1))
            return [("g:", goals)]
        dims = _output_dims(config, output)
        if dims is None:
            return [("g:", goals)]
        name = versioned(str(output["funnel"]), output.get("funnel_version"))
        k = int(output["step_index"])
        steps: list[Item] = []
        _with_breakdowns(steps, "h", f"e:{k}", 1, _suffixes(breakdowns, dims))
        groups: list[Group] = [("g:", goals), (f"f:{name}:", steps), (f"u:{name}:{k}:", [("p", identity, 1)])]
        if k > 0:
            times: list[Item] = []
            if output.get("started_at") is not None:
                elapsed = max(0, at - _ms(output["started_at"]))
                times.append(("h", f"t:{k}:{time_to_convert_bucket(elapsed)}", 1))
                times.append(("h", f"ts:{k}", elapsed))
            if output.get("previous_at") is not None:
                waited = max(0, at - _ms(output["previous_at"]))
                times.append(("h", f"g:{k}:{time_to_convert_bucket(waited)}", 1))
                times.append(("h", f"gs:{k}", waited))
            if times:
                groups.append((f"t:{name}:", times))
        return groups
    if kind == "carried":  # leaves the old version's account at its step, enters the new one's
        dims = _output_dims(config, output)
        if dims is None:
            return []
        suffixes = _suffixes(breakdowns, dims)
        out_of: list[Item] = []
        _with_breakdowns(out_of, "h", f"co:{output['previous_step_index']}", 1, suffixes)
        into: list[Item] = []
        for j in output.get("reached") or ():
            _with_breakdowns(into, "h", f"ci:{j}", 1, suffixes)
        funnel_name = str(output["funnel"])
        return [
            (f"f:{versioned(funnel_name, output.get('previous_version'))}:", out_of),
            (f"f:{versioned(funnel_name, output.get('funnel_version'))}:", into),
        ]
    if kind in ("dropoff", "stalled"):
        dims = _output_dims(config, output)
        if dims is None:
            return []
        k = int(output["step_index"])
        steps = []
        suffixes = _suffixes(breakdowns, dims)
        if kind == "stalled":
            _with_breakdowns(steps, "h", f"st:{k}", 1, suffixes)
        else:
            _with_breakdowns(steps, "h", f"d:{k}", 1, suffixes)
            steps.append(("h", f"d:{k}:{output['reason']}", 1))
        return [(f"f:{versioned(str(output['funnel']), output.get('funnel_version'))}:", steps)]
    channels = _suffixes(output, CHANNEL_DIMS)
    audience = output.get("audience")
    tables = channels
    if audience:  # an output without an audience (enrichment off) adds no audience rows
        tables = channels + _suffixes({f"audience.{k}": v for k, v in audience.items()}, AUDIENCE_DIMS)
    visitor = f"|{VISITOR_TYPE}={visitor_type_of(output)}"
    table: list[Item] = []
    if kind == "macro":
        goal = output["goal"]
        value = output.get("value")
        # the channel and landing page first, then every breakdown (again if they are among
        # them, with the output's own channel and landing page)
        values = {**breakdowns, "channel": output.get("channel"), "landing_page": output.get("landing_page")}
        suffixes = channels + _suffixes(values, breakdowns)
        goals = []
        _with_breakdowns(goals, "h", f"n:{goal}", 1, suffixes)
        if value is not None:
            _with_breakdowns(goals, "f", f"v:{goal}", float(value), suffixes)
        decision = int(output.get("decision_time_ms") or 0)
        goals.append(("h", f"dt:{goal}", decision))
        goals.append(("h", f"dth:{goal}:{decision_bucket(decision)}", 1))
        _channel_fields(table, f"n:{goal}", 1, tables, visitor)
        if value is not None:
            _channel_fields(table, f"v:{goal}", float(value), tables, visitor)
        _channel_fields(table, f"dt:{goal}", decision, tables, visitor)
        return [("g:", goals), (f"ug:{goal}:", [("p", identity, 1)]), ("c:", table)]
    # a session: its landing page, then its channel
    suffixes = channels[::-1]
    sessions: list[Item] = []
    _with_breakdowns(sessions, "h", "n", 1, suffixes)
    _with_breakdowns(sessions, "h", "pv", int(output.get("page_views") or 0), suffixes)
    _with_breakdowns(sessions, "h", "dur", int(output.get("duration_ms") or 0), suffixes)
    reached = list(output.get("conversions") or [])
    page_views = int(output.get("page_views") or 0)
    _channel_fields(table, "s", 1, tables, visitor)
    _channel_fields(table, "mi", int(output.get("microconversions") or 0), tables, visitor)
    _channel_fields(table, "pv", page_views, tables, visitor)
    _channel_fields(table, "dur", int(output.get("duration_ms") or 0), tables, visitor)
    if page_views <= 1:
        _channel_fields(table, "b", 1, tables, visitor)
    if reached:
        _channel_fields(table, "cv", len(reached), tables, visitor)
    for goal in sorted(set(reached)):
        _channel_fields(table, f"cs:{goal}", 1, tables, visitor)
    return [("s:", sessions), ("c:", table)]


def buckets_between(start_ms: int, end_ms: int, bucket_ms: int) -> list[int]:
    """Buckets whose start lies in [start, end): windows are aligned to the bucket size."""
    first = bucket_of(start_ms, bucket_ms)
    if first < start_ms:
        first += bucket_ms
    return list(range(first, end_ms, bucket_ms))


def plan_buckets(start_ms: int, end_ms: int, bucket_ms: int) -> list[str]:
    """The `R:B` buckets that cover [start, end) exactly as the finest buckets would, using the
    coarsest rollups that fit whole inside and finer buckets only at the edges."""
    levels = resolutions(bucket_ms)
    finest = levels[0]
    start_ms = bucket_of(start_ms + finest - 1, finest)  # the first finest bucket starting inside

    def cover(start: int, end: int, level: int) -> list[str]:
        size = levels[level]
        if level == 0:
            return [f"{size // 1000}:{b}" for b in buckets_between(start, end, size)]
        first = bucket_of(start + size - 1, size)
        last = bucket_of(end, size)
        if first >= last:
            return cover(start, end, level - 1)
        whole = [f"{size // 1000}:{b}" for b in range(first, last, size)]
        return cover(start, first, level - 1) + whole + cover(last, end, level - 1)

    return cover(start_ms, end_ms, len(levels) - 1) if start_ms < end_ms else []


def sum_hashes(hashes: Iterable[Mapping[bytes | str, bytes | str]]) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for fields in hashes:
        for name, value in fields.items():
            key = name.decode() if isinstance(name, bytes) else name
            total[key] += float(value)
    return dict(total)


@dataclass
class StepReport:
    name: str
    index: int
    entered: int
    unique_users: int
    dropped: int
    stalled: int
    dropped_by_reason: dict[str, int]
    rate_from_previous: float | None
    rate_overall: float | None
    carried_in: int = 0
    """Attempts carried over into this version at this step (counted in `entered`)."""
    carried_out: int = 0
    """Attempts carried over from this version to the next one, at this step."""


@dataclass
class FunnelReport:
    funnel: str
    start_ms: int
    end_ms: int
    steps: list[StepReport]
    by: str | None = None
    breakdown: dict[str, list[StepReport]] = field(default_factory=dict)
    version: str | None = None
    """The funnel version these counts are of (`config.versions`)."""
    versions: dict[str, int] = field(default_factory=dict)
    """Every version with counters kept, newest first, with the latest event time counted."""

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def step_reports(
    funnel_steps: list[str], fields: Mapping[str, float], uniques: Mapping[int, int], suffix: str = ""
) -> list[StepReport]:
    reports: list[StepReport] = []
    first = int(fields.get(f"e:0{suffix}", 0) + fields.get(f"ci:0{suffix}", 0))
    previous: int | None = None
    # drop-off reasons (`d:<k>:<reason>`) are counted overall only, read in one pass over the
    # fields: a breakdown value's report (suffix) has none, and a scan per step or per value
    # grows with every value clients send
    reasons_by_step: dict[str, dict[str, int]] = {}
    if not suffix:
        for key, v in fields.items():
            if key.startswith("d:") and "|" not in key:
                parts = key.split(":")
                if len(parts) >= 3:
                    reasons_by_step.setdefault(parts[1], {})[parts[2]] = int(v)
    for k, name in enumerate(funnel_steps):
        carried_in = int(fields.get(f"ci:{k}{suffix}", 0))
        entered = int(fields.get(f"e:{k}{suffix}", 0)) + carried_in
        reasons = reasons_by_step.get(str(k), {})
        reports.append(
            StepReport(
                name=name,
                index=k,
                entered=entered,
                unique_users=uniques.get(k, 0),
                dropped=int(fields.get(f"d:{k}{suffix}", 0)),
                stalled=int(fields.get(f"st:{k}{suffix}", 0)),
                dropped_by_reason=reasons,
                rate_from_previous=_rate(entered, previous) if previous is not None else None,
                rate_overall=_rate(entered, first),
                carried_in=carried_in,
                carried_out=int(fields.get(f"co:{k}{suffix}", 0)),
            )
        )
        previous = entered
    return reports


def breakdown_values(fields: Mapping[str, float], dim: str) -> list[str]:
    marker = f"|{dim}="
    return sorted({key.split(marker, 1)[1] for key in fields if key.startswith("e:") and marker in key})
