"""Alert rules (CONTRACT section 2 `alerts`), judged in event time.

The evaluator counts, per minute of event time, how many attempts entered each judged step
and the step before it (from milestone microconversions), per `by` value. Whenever its
watermark passes a minute boundary t, each rule is judged on the window [t - window, t) against
its baseline:

- the baseline is [t - baseline, t - window): the stretch just before the window; or, with
  `seasonality: weekly`, the `baseline`-long span centred on the window's position one week
  earlier, in each of the `seasons` previous weeks (an evening is judged against evenings);
- no verdict while fewer than `min_entered` entered the step before, in the window;
- it *breaks* when the window's rate < (1 - relative_drop) * baseline rate, or < drop_below; with
  `confidence`, only if also Fisher's one-sided exact test puts the window's rate below the
  baseline's, at the per-look level that makes `confidence` hold per window length of
  minute-by-minute watching (streams.core.measures.stats says why that test and that level);
- a broken rule fires once, then resolves only when the rate is back above a looser threshold
  ((1 - relative_drop / 2) * baseline, and drop_below * 1.25): hysteresis, so a rate hovering
  at the threshold does not flap.

An incident must not become the norm it is judged against. While a rule fires (per `by` value)
its baseline stays the one it fired with; and the minutes of an incident, from the start of the
window that fired to the resolution, never enter that value's baseline afterwards either, so a
relapse just after a long incident is judged against normal traffic.

Each minute's counts enter and leave the sliding sums exactly once, at known boundaries, and
are forgotten when they leave the last one: constant work per minute of event time whatever the
baseline's length; memory is one cell per minute and `by` value over the longest reach (the
baseline, or seasons weeks plus half the baseline with seasonality).

The verdicts depend only on the counts of complete minutes, so a replay of history (offline or
through Kafka) raises the same alerts at the same event times as live traffic did.

`method: cusum` judges trials instead of the window (streams.core.measures.cusum says why): an
attempt that reaches the step before opens a trial, which succeeds when the same attempt (its
funnel, start and person) reaches the step within `resolve_after`, and fails when that deadline's
minute is judged without it. A drop-off is counted at the deadline too, not when it happens: the
drop-offs travel on another topic than the microconversions the service reads, and the verdicts
must not depend on how two topics interleave. Each minute's successes and failures move the
statistic; p0 is the trials' success rate over the baseline (frozen while the rule fires), and
the trials a day there turn `false_alarm_every` into the in-control run length the threshold is
calibrated to. It fires at the threshold, resolves as a window rule does, and restarts at h / 2.

Every fired alert carries its root cause (streams.core.measures.rootcause) from the window and
baseline counts of each of the funnel's breakdowns (other than the rule's `by`), kept per value
beside the rule's own.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streams.core.config.durations import format_duration_ms
from streams.core.config.matching import CompiledConfig, CompiledFunnel
from streams.core.config.model import AlertRule
from streams.core.config.versions import rule_identity
from streams.core.input.event import from_epoch_ms, to_epoch_ms
from streams.core.measures.cardinality import BREAKDOWN_CAP, OTHER, Admitted
from streams.core.measures.cusum import Design, design
from streams.core.measures.rootcause import explain
from streams.core.measures.stats import fisher_less, scan_look_level, wilson_interval
from streams.core.records.ids import output_id
from streams.core.records.outputs import Alert, RootCause

MINUTE_MS = 60_000
WEEK_MS = 7 * 86_400_000
RESOLVE_RELATIVE = 0.5  # resolve above (1 - relative_drop * this) * baseline
RESOLVE_ABSOLUTE = 1.25  # resolve above drop_below * this
DEFAULT_INTERVAL_LEVEL = 0.95  # the window rate's interval when a rule has no confidence

DAY_MS = 86_400_000
COMBO_CAP_FACTOR = 4  # combinations of the funnel's breakdowns kept per rule: this many times the cap
DEFAULT_FALSE_ALARM_EVERY = 90 * DAY_MS
RESOLVE_QUANTILE = 0.9  # resolve_after's default: this quantile of the observed times to convert
RESOLVE_MIN_OBSERVED = 30  # times to convert observed before the quantile is trusted
RESOLVE_FALLBACK_MS = DAY_MS  # until then (or less: the step's within, the funnel's window)
_BUCKET_BASE = 1.1  # the times-to-convert histogram: minutes in buckets 10 % wide

ByValues = tuple[str | None, ...]
Counts = tuple[int, int]  # (entered the step before, entered the step)
Segment = tuple[ByValues, tuple[str | None, ...]]  # (by values, the other breakdowns' values)

ENTERED, REACHED, SUCCEEDED, FAILED = range(4)
Cells = dict[Any, list[int]]
"""Key (by values, or a Segment) -> [entered the step before, entered the step, trials that
succeeded, trials that failed]."""


@dataclass(frozen=True)
class _Firing:
    fired_at: int
    baseline: Counts  # frozen: what the rule fired against
    incident_id: str
    p0: float | None = None  # cusum: the trial rate it fired against


@dataclass
class _Cusum:
    """One by value's statistic (grid units of `design`)."""

    statistic: int | None = None  # None until a design exists: then it starts at h / 2
    design: Design | None = None
    trials: int = 0  # since the statistic last left zero (or started)
    failures: int = 0
    successes: int = 0
    since: int = 0  # the minute those trials began
    after: deque[tuple[int, int, int]] = field(default_factory=deque)
    """While firing: (minute, successes, failures) of the trials since it fired, over a window."""
    after_trials: int = 0
    after_successes: int = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "design": self.design.to_state() if self.design is not None else None,
            "counts": [self.trials, self.failures, self.successes, self.since],
            "after": [list(x) for x in self.after],
            "after_counts": [self.after_trials, self.after_successes],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> _Cusum:
        trials, failures, successes, since = (int(x) for x in data["counts"])
        after_trials, after_successes = (int(x) for x in data["after_counts"])
        return cls(
            statistic=None if data["statistic"] is None else int(data["statistic"]),
            design=None if data["design"] is None else Design.from_state(data["design"]),
            trials=trials,
            failures=failures,
            successes=successes,
            since=since,
            after=deque((int(m), int(s), int(f)) for m, s, f in data["after"]),
            after_trials=after_trials,
            after_successes=after_successes,
        )

    def restart(self) -> None:
        """After a resolution: the fast initial response again."""
        self.statistic = self.design.start if self.design is not None else None
        self.trials = self.failures = self.successes = 0
        self.after.clear()
        self.after_trials = self.after_successes = 0


@dataclass(slots=True, eq=False)
class _Trial:
    keys: tuple[tuple[str, ...], ...]
    by: ByValues
    breakdowns: Mapping[str, Any]
    deadline_ms: int
    open: bool = True


@dataclass
class _Rule:
    index: int
    rule: AlertRule
    step_index: int
    funnel: CompiledFunnel
    funnel_version: str = ""
    """Only this version's counts enter the rule's sums: a baseline never mixes two definitions
    (its identity towards receivers, `config.versions.rule_identity`, does not depend on it)."""
    counts: dict[int, Cells] = field(default_factory=lambda: defaultdict(dict))  # per minute
    window: Cells = field(default_factory=dict)  # sliding sums over [t - window, t)
    baseline: Cells = field(default_factory=dict)  # and over the baseline's minutes
    segment_counts: dict[int, Cells] = field(default_factory=lambda: defaultdict(dict))
    """The same per (by values, combination of the funnel's other breakdowns): root causes."""
    segment_window: Cells = field(default_factory=dict)
    segment_baseline: Cells = field(default_factory=dict)
    cusums: dict[ByValues, _Cusum] = field(default_factory=dict)
    trials: dict[tuple[str, ...], _Trial] = field(default_factory=dict)
    """cusum: open trials by attempt key (funnel, start, person id), under each id it carries."""
    deadlines: dict[int, list[_Trial]] = field(default_factory=lambda: defaultdict(list))
    first_minute: int | None = None
    times_to_convert: dict[int, int] = field(default_factory=dict)
    """Histogram: bucket -> conversions into the step from the one before, by minutes taken."""
    firing: dict[ByValues, _Firing] = field(default_factory=dict)
    incidents: dict[ByValues, list[tuple[int, int | None]]] = field(default_factory=dict)
    """Per by value, [start, end) of the minutes that must not enter its baseline (end None:
    still firing)."""
    excluded: dict[int, frozenset[ByValues]] = field(default_factory=dict)
    """Per minute already in the baseline: the by values whose cells it skipped."""
    admitted: Admitted[ByValues] = field(default_factory=lambda: Admitted(BREAKDOWN_CAP, ()))
    admitted_combo: Admitted[tuple[str | None, ...]] = field(
        default_factory=lambda: Admitted(COMBO_CAP_FACTOR * BREAKDOWN_CAP, ())
    )
    """The root cause's combinations of breakdown values, bounded as the `by` values are."""
    """The by values judged on their own (streams/core/measures/cardinality.py); the rest as `(other)`."""

    def __post_init__(self) -> None:
        rule = self.rule
        self.half_span = (rule.baseline - rule.window) // 2 // MINUTE_MS * MINUTE_MS
        if rule.seasonality == "weekly":
            # minute m first enters the baseline when it is the newest minute of week 1's span
            self.enter_lag = WEEK_MS - self.half_span
            self.reach = rule.seasons * WEEK_MS + rule.window + self.half_span
            self.baseline_span = rule.seasons * (rule.window + 2 * self.half_span)
        else:
            self.enter_lag = rule.window
            self.reach = rule.baseline
            self.baseline_span = rule.baseline - rule.window
        self.dimensions = [d for d in self.funnel.breakdowns if d not in self.rule.by]
        step = self.funnel.steps[self.step_index]
        limits = [RESOLVE_FALLBACK_MS, *(x for x in (step.within, self.funnel.window) if x is not None)]
        self.resolve_fallback = min(limits)
        self.resolve_cap = self.funnel.window

    def to_state(self) -> dict[str, Any]:
        """What the rule has counted and decided, as plain data (lists, numbers, strings, None)
        for a state file; `load_state` puts it back into a rule built from the same definition.
        A trial filed under several keys and a deadline is saved once and referred to by its
        position, so it stays one trial."""
        table: dict[int, int] = {}
        trials: list[list[Any]] = []

        def ref(trial: _Trial) -> int:
            position = table.get(id(trial))
            if position is None:
                position = table[id(trial)] = len(trials)
                trials.append(
                    [_out(trial.keys), _out(trial.by), dict(trial.breakdowns), trial.deadline_ms, trial.open]
                )
            return position

        return {
            "counts": _minutes_out(self.counts),
            "window": _cells_out(self.window),
            "baseline": _cells_out(self.baseline),
            "segment_counts": _minutes_out(self.segment_counts),
            "segment_window": _cells_out(self.segment_window),
            "segment_baseline": _cells_out(self.segment_baseline),
            "cusums": [[_out(by), cusum.to_state()] for by, cusum in self.cusums.items()],
            "open_trials": [[_out(key), ref(trial)] for key, trial in self.trials.items()],
            "deadlines": [[minute, [ref(t) for t in due]] for minute, due in self.deadlines.items()],
            "trials": trials,
            "first_minute": self.first_minute,
            "times_to_convert": [[bucket, n] for bucket, n in self.times_to_convert.items()],
            "firing": [
                [_out(by), [f.fired_at, list(f.baseline), f.incident_id, f.p0]]
                for by, f in self.firing.items()
            ],
            "incidents": [[_out(by), [[s, e] for s, e in spans]] for by, spans in self.incidents.items()],
            "excluded": [[minute, [_out(by) for by in skipped]] for minute, skipped in self.excluded.items()],
            "admitted": [_out(v) for v in self.admitted.values()],
            "admitted_combo": [_out(v) for v in self.admitted_combo.values()],
        }

    def load_state(self, data: Mapping[str, Any]) -> None:
        """The counts and decisions `to_state` saved (of this rule under the same funnel version)."""
        self.counts = defaultdict(dict, _minutes_in(data["counts"]))
        self.window = _cells_in(data["window"])
        self.baseline = _cells_in(data["baseline"])
        self.segment_counts = defaultdict(dict, _minutes_in(data["segment_counts"]))
        self.segment_window = _cells_in(data["segment_window"])
        self.segment_baseline = _cells_in(data["segment_baseline"])
        self.cusums = {_in(by): _Cusum.from_state(c) for by, c in data["cusums"]}
        trials = [
            _Trial(_in(keys), _in(by), dict(breakdowns), int(deadline), bool(is_open))
            for keys, by, breakdowns, deadline, is_open in data["trials"]
        ]
        self.trials = {_in(key): trials[position] for key, position in data["open_trials"]}
        self.deadlines = defaultdict(list)
        for minute, due in data["deadlines"]:
            self.deadlines[int(minute)] = [trials[position] for position in due]
        self.first_minute = None if data["first_minute"] is None else int(data["first_minute"])
        self.times_to_convert = {int(bucket): int(n) for bucket, n in data["times_to_convert"]}
        self.firing = {
            _in(by): _Firing(int(at), (int(base[0]), int(base[1])), str(incident), p0)
            for by, (at, base, incident, p0) in data["firing"]
        }
        self.incidents = {
            _in(by): [(int(s), None if e is None else int(e)) for s, e in spans]
            for by, spans in data["incidents"]
        }
        self.excluded = {
            int(minute): frozenset(_in(by) for by in skipped) for minute, skipped in data["excluded"]
        }
        self.admitted.load(_in(v) for v in data["admitted"])
        self.admitted_combo.load(_in(v) for v in data["admitted_combo"])

    def resolve_after(self) -> int:
        """cusum: how long a trial waits for its conversion (rule.resolve_after, else the p90 of
        the times to convert observed so far, in whole minutes)."""
        if self.rule.resolve_after is not None:
            return self.rule.resolve_after
        observed = sum(self.times_to_convert.values())
        if observed < RESOLVE_MIN_OBSERVED:
            return self.resolve_fallback
        rank, seen = math.ceil(RESOLVE_QUANTILE * observed), 0
        for bucket in sorted(self.times_to_convert):
            seen += self.times_to_convert[bucket]
            if seen >= rank:
                minutes = max(1, math.ceil(_BUCKET_BASE ** (bucket + 1)))
                return min(minutes * MINUTE_MS, self.resolve_cap or minutes * MINUTE_MS)
        return self.resolve_fallback  # not reached

    def step(self, t: int) -> None:
        """Slide every sum from t - 1 minute to t (the minute [t - 1m, t) is complete)."""
        rule = self.rule
        newest = t - MINUTE_MS
        self._expire(newest)
        by_key = _by_of_segment
        for counts, window, baseline, key in (
            (self.counts, self.window, self.baseline, None),
            (self.segment_counts, self.segment_window, self.segment_baseline, by_key),
        ):
            if not counts and not window and not baseline:
                continue
            _add(window, counts.get(newest), +1)
            _add(window, counts.get(newest - rule.window), -1)
            if key is None:
                self._decide_exclusions(newest - self.enter_lag)
            if rule.seasonality == "weekly":
                for k in range(1, rule.seasons + 1):
                    shift = k * WEEK_MS
                    self._baseline_add(counts, baseline, newest - shift + self.half_span, +1, key)
                    self._baseline_add(
                        counts, baseline, newest - shift - rule.window - self.half_span, -1, key
                    )
            else:
                self._baseline_add(counts, baseline, newest - rule.window, +1, key)
                self._baseline_add(counts, baseline, newest - rule.baseline, -1, key)
        gone = newest - self.reach
        self.counts.pop(gone, None)
        self.segment_counts.pop(gone, None)
        self.excluded.pop(gone, None)

    def observed_span(self, t: int) -> int:
        """The event time the baseline's counts cover: its span, or less while it fills up
        (the trials a day it measures turn false_alarm_every into trials)."""
        if self.first_minute is None or self.rule.seasonality == "weekly":
            return self.baseline_span
        return max(MINUTE_MS, min(self.baseline_span, t - self.rule.window - self.first_minute))

    def tally(
        self, minute: int, by: ByValues, breakdowns: Mapping[str, Any], column: int, times: int
    ) -> None:
        """`times` more in `column` of the minute's cell for `by`, and of its segments."""
        if self.first_minute is None or minute < self.first_minute:
            self.first_minute = minute
        cell = self.counts[minute].setdefault(by, [0, 0, 0, 0])
        cell[column] += times
        if self.dimensions:
            combo = self.admitted_combo(
                tuple(None if (v := breakdowns.get(d)) is None else str(v) for d in self.dimensions)
            )
            self.segment_counts[minute].setdefault((by, combo), [0, 0, 0, 0])[column] += times

    def open_trial(
        self, keys: tuple[tuple[str, ...], ...], at_ms: int, breakdowns: Mapping[str, Any]
    ) -> None:
        if not keys or any(k in self.trials for k in keys):
            return
        by = self.admitted(tuple(breakdowns.get(dim) for dim in self.rule.by))
        trial = _Trial(keys, by, dict(breakdowns), at_ms + self.resolve_after())
        for key in keys:
            self.trials[key] = trial
        self.deadlines[trial.deadline_ms // MINUTE_MS * MINUTE_MS].append(trial)

    def close_trial(self, keys: tuple[tuple[str, ...], ...], at_ms: int, taken_ms: int | None) -> bool:
        """The attempt reached the step at `at_ms`: whether that closes an open trial in time."""
        if taken_ms is not None and taken_ms >= 0:
            bucket = int(math.log(taken_ms / MINUTE_MS + 1, _BUCKET_BASE))
            self.times_to_convert[bucket] = self.times_to_convert.get(bucket, 0) + 1
        trial = next((self.trials[k] for k in keys if k in self.trials), None)
        if trial is None or not trial.open or at_ms > trial.deadline_ms:
            return False
        self._close(trial)
        self.tally(at_ms // MINUTE_MS * MINUTE_MS, trial.by, trial.breakdowns, SUCCEEDED, 1)
        return True

    def _close(self, trial: _Trial) -> None:
        trial.open = False
        for key in trial.keys:
            if self.trials.get(key) is trial:
                del self.trials[key]

    def _expire(self, minute: int) -> None:
        """The trials whose deadline falls in the minute now complete fail in it."""
        for trial in self.deadlines.pop(minute, ()):
            if trial.open:
                self._close(trial)
                self.tally(minute, trial.by, trial.breakdowns, FAILED, 1)

    def _decide_exclusions(self, minute: int) -> None:
        """Once, when a minute first enters the baseline: which by values' incidents cover it.
        A rule that fires later starts its incident after this minute, so the decision is final."""
        cells = self.counts.get(minute)
        if not cells or not self.incidents:
            return
        skipped = frozenset(
            by
            for by in cells
            if any(
                start <= minute and (end is None or minute < end) for start, end in self.incidents.get(by, ())
            )
        )
        if skipped:
            self.excluded[minute] = skipped

    def _baseline_add(
        self,
        counts: dict[int, Cells],
        baseline: Cells,
        minute: int,
        sign: int,
        by_of: Callable[[Any], ByValues] | None,
    ) -> None:
        cells = counts.get(minute)
        if not cells:
            return
        skipped = self.excluded.get(minute)
        if skipped:
            cells = {
                key: cell
                for key, cell in cells.items()
                if (key if by_of is None else by_of(key)) not in skipped
            }
        _add(baseline, cells, sign)

    def forget_incidents(self, t: int) -> None:
        """Incidents that ended before any minute still to be decided started."""
        oldest_undecided = t - self.enter_lag
        for by in list(self.incidents):
            spans = [(s, e) for s, e in self.incidents[by] if e is None or e > oldest_undecided]
            if spans:
                self.incidents[by] = spans
            else:
                del self.incidents[by]


def _out(value: Any) -> Any:
    """Tuples (by values, segments, attempt keys) as JSON lists."""
    return [_out(x) for x in value] if isinstance(value, tuple) else value


def _in(value: Any) -> Any:
    """`_out` undone: every list was a tuple (by and breakdown values are scalars)."""
    return tuple(_in(x) for x in value) if isinstance(value, list) else value


def _cells_out(cells: Cells) -> list[list[Any]]:
    return [[_out(key), list(cell)] for key, cell in cells.items()]


def _cells_in(data: list[list[Any]]) -> Cells:
    return {_in(key): [int(x) for x in cell] for key, cell in data}


def _minutes_out(counts: Mapping[int, Cells]) -> list[list[Any]]:
    return [[minute, _cells_out(cells)] for minute, cells in counts.items()]


def _minutes_in(data: list[list[Any]]) -> dict[int, Cells]:
    return {int(minute): _cells_in(cells) for minute, cells in data}


def _by_of_segment(key: Segment) -> ByValues:
    return key[0]


def _add(total: Cells, cells: Cells | None, sign: int) -> None:
    if not cells:
        return
    for key, counts in cells.items():
        cell = total.setdefault(key, [0, 0, 0, 0])
        for i, value in enumerate(counts):
            cell[i] += sign * value
        if not any(cell):
            del total[key]


@dataclass(frozen=True)
class Verdict:
    rate: float | None
    baseline_rate: float | None
    entered: int
    baseline_entered: int
    broken: bool
    recovered: bool
    p_value: float | None = None
    """Computed when the rule's confidence had to be checked (the rate was below threshold)."""


def judge(rule: AlertRule, window: Counts, baseline: Counts) -> Verdict:
    """(entered before, entered step) in the window and in the baseline -> the rule's verdict."""
    entered, reached = window
    base_entered, base_reached = baseline
    # Steps entered in a span, not attempts followed through it: an attempt can enter the step
    # before just ahead of the span and the step inside it, so a span may count more reached
    # than entered. The excess is read as full conversion, so the rate stays a rate, in [0, 1],
    # and agrees with its interval and with the exact test.
    rate = min(reached, entered) / entered if entered else None
    base_rate = min(base_reached, base_entered) / base_entered if base_entered else None
    if rate is None or entered < rule.min_entered:
        return Verdict(rate, base_rate, entered, base_entered, broken=False, recovered=False)
    conditions_break: list[bool] = []
    conditions_ok: list[bool] = []
    if rule.relative_drop is not None and base_rate is not None and base_entered >= rule.min_entered:
        conditions_break.append(rate < (1 - rule.relative_drop) * base_rate)
        conditions_ok.append(rate >= (1 - rule.relative_drop * RESOLVE_RELATIVE) * base_rate)
    if rule.drop_below is not None:
        conditions_break.append(rate < rule.drop_below)
        conditions_ok.append(rate >= rule.drop_below * RESOLVE_ABSOLUTE)
    broken = any(conditions_break)
    recovered = bool(conditions_ok) and all(conditions_ok)
    p_value = None
    if broken and rule.confidence is not None:
        # the test needs a baseline as well measured as the window may be judged on
        p_value = _fisher(window, baseline)
        broken = base_entered >= rule.min_entered and p_value <= look_level(rule)
    return Verdict(rate, base_rate, entered, base_entered, broken, recovered, p_value)


def _fisher(window: Counts, baseline: Counts) -> float:
    """The counts are of steps entered in a time span, not of attempts followed through it: an
    attempt can enter the step before just ahead of the window and the step inside it, so a
    span may count more reached than entered. The test takes the excess as full conversion."""
    (entered, reached), (base_entered, base_reached) = window, baseline
    return fisher_less(min(reached, entered), entered, min(base_reached, base_entered), base_entered)


def look_level(rule: AlertRule) -> float:
    """The p-value a minute's look must reach for the rule's confidence to hold per window
    length of watching (consecutive looks overlap: streams.core.measures.stats.scan_look_level)."""
    assert rule.confidence is not None
    return scan_look_level(rule.confidence, rule.window // MINUTE_MS)


class AlertEvaluator:
    def __init__(self, config: CompiledConfig, by_cap: int = BREAKDOWN_CAP) -> None:
        """`by_cap`: per rule, the first this many distinct `by` values are judged on their own,
        later ones together as `(other)` (values come from clients: bounded state and alerts)."""
        self.config = config
        self.by_cap = by_cap
        self._rules: list[_Rule] = []
        for i, rule in enumerate(config.source.alerts):
            funnel = config.funnels_by_name[rule.funnel]
            step_index = [s.name for s in funnel.steps].index(rule.step)
            self._rules.append(_Rule(i, rule, step_index, funnel, funnel.version))
            self._rules[-1].admitted = Admitted(by_cap, tuple(OTHER for _ in rule.by))
            self._rules[-1].admitted_combo = Admitted(
                COMBO_CAP_FACTOR * by_cap, tuple(OTHER for _ in self._rules[-1].dimensions)
            )
        self._evaluated_to: int | None = None
        self.ignored_late = 0
        self._ids: dict[int, set[str]] = {}
        """Per minute not yet judged, the ids of the microconversions counted in it."""
        self.duplicates = 0

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def to_state(self, keys: Sequence[str]) -> dict[str, Any]:
        """The evaluator as plain data for a state file, each rule's state under its key in
        `keys` (one per rule, in order: what a rule's state belongs to, e.g. its alert version)."""
        return {
            "evaluated_to": self._evaluated_to,
            "ignored_late": self.ignored_late,
            "duplicates": self.duplicates,
            "ids": [[minute, sorted(ids)] for minute, ids in self._ids.items()],
            "rules": {key: state.to_state() for key, state in zip(keys, self._rules, strict=True)},
        }

    def restore(self, data: Mapping[str, Any], keys: Sequence[str]) -> None:
        """What `to_state` saved: each rule whose key is among the saved ones continues from its
        state; the others start from nothing (at the saved event time)."""
        self._evaluated_to = None if data["evaluated_to"] is None else int(data["evaluated_to"])
        self.ignored_late, self.duplicates = int(data["ignored_late"]), int(data["duplicates"])
        self._ids = {int(minute): {str(i) for i in ids} for minute, ids in data["ids"]}
        saved = data["rules"]
        for key, state in zip(keys, self._rules, strict=True):
            if key in saved:
                state.load_state(saved[key])

    def end_incidents(self, index: int, reason: Literal["definition_changed"]) -> list[Alert]:
        """Resolve every incident rule `index` has firing, at the event time judged so far, with
        `reason`: its state is dropped (its definition changed), and receivers close an incident
        only when told, under its dedup key (`incident_id`)."""
        state = self._rules[index]
        t = self._evaluated_to
        out: list[Alert] = []
        if t is None:
            return out
        for by in sorted(state.firing, key=_order):
            firing = state.firing[by]
            entered, reached = firing.baseline
            verdict = Verdict(None, reached / entered if entered else None, 0, entered, False, False)
            out.append(self._resolve(state, by, t, verdict, firing, reason))
        return out

    def rule_counts(self, index: int) -> dict[ByValues, tuple[Counts, Counts]]:
        """What rule `index` judges now, per by value: (window, baseline) counts of (entered the
        step before, entered the step); while it fires, the baseline it fired with."""
        state = self._rules[index]
        out: dict[ByValues, tuple[Counts, Counts]] = {}
        for by in set(state.window) | set(state.baseline) | set(state.firing):
            window = state.window.get(by, [0, 0])
            firing = state.firing.get(by)
            baseline = firing.baseline if firing is not None else tuple(state.baseline.get(by, [0, 0])[:2])
            out[by] = ((window[0], window[1]), (baseline[0], baseline[1]))
        return out

    def firing(self) -> dict[tuple[str, str, ByValues], bool]:
        return {(r.rule.funnel, r.rule.step, by): True for r in self._rules for by in r.firing}

    def observe(self, output: Mapping[str, Any]) -> None:
        """Count one output event (only milestone microconversions matter).

        A microconversion delivered twice (the journeys agent republishes a run it had not
        finished acknowledging) counts once: its id is remembered until its minute is judged;
        after that a copy is late and ignored, so no id is remembered for longer."""
        if output.get("type") != "micro" or output.get("kind") != "milestone":
            return
        timestamp = output["timestamp"]
        moment = timestamp if isinstance(timestamp, datetime) else datetime.fromisoformat(str(timestamp))
        at_ms = to_epoch_ms(moment)
        identifier = output.get("id")
        if identifier is not None and any(r.rule.funnel == output.get("funnel") for r in self._rules):
            seen = self._ids.setdefault(at_ms // MINUTE_MS * MINUTE_MS, set())
            if identifier in seen:
                self.duplicates += 1
                return
            seen.add(str(identifier))
        funnel = str(output.get("funnel"))
        step_index = int(output["step_index"])
        breakdowns = output.get("breakdowns") or {}
        version = output.get("funnel_version")
        self.count(at_ms, funnel, step_index, breakdowns, version=version)
        if self._evaluated_to is not None and at_ms // MINUTE_MS * MINUTE_MS < self._evaluated_to:
            return  # late: ignored by count as well
        for state in self._rules:
            if state.rule.method != "cusum" or state.rule.funnel != funnel:
                continue
            if version is not None and version != state.funnel_version:
                continue
            if step_index == state.step_index - 1:
                state.open_trial(_attempt_keys(output, funnel), at_ms, breakdowns)
            elif step_index == state.step_index:
                previous = output.get("previous_at")
                taken = at_ms - _epoch_ms(previous) if previous is not None else None
                state.close_trial(_attempt_keys(output, funnel), at_ms, taken)

    def count(
        self,
        at_ms: int,
        funnel: str,
        step_index: int,
        breakdowns: Mapping[str, Any],
        times: int = 1,
        version: str | None = None,
    ) -> None:
        """`times` attempts of `funnel` reached `step_index` at `at_ms` (what observe reads from
        a milestone microconversion; in bulk, for replays from aggregates)."""
        minute = at_ms // MINUTE_MS * MINUTE_MS
        if self._evaluated_to is not None and minute < self._evaluated_to:
            self.ignored_late += times  # its minute was judged already: beyond the watermark
            return
        for state in self._rules:
            if funnel != state.rule.funnel or (version is not None and version != state.funnel_version):
                continue
            position = step_index - (state.step_index - 1)
            if position not in (0, 1):
                continue
            by = state.admitted(tuple(breakdowns.get(dim) for dim in state.rule.by))
            state.tally(minute, by, breakdowns, position, times)

    def count_trials(
        self,
        at_ms: int,
        funnel: str,
        step_index: int,
        breakdowns: Mapping[str, Any],
        succeeded: int,
        failed: int,
    ) -> None:
        """Trials of the cusum rules on `funnel`'s step `step_index` resolved at `at_ms` (what
        observe derives from attempts; in bulk, for simulations and replays from aggregates)."""
        minute = at_ms // MINUTE_MS * MINUTE_MS
        if self._evaluated_to is not None and minute < self._evaluated_to:
            self.ignored_late += succeeded + failed
            return
        for state in self._rules:
            if (
                state.rule.method == "cusum"
                and state.rule.funnel == funnel
                and state.step_index == step_index
            ):
                by = state.admitted(tuple(breakdowns.get(dim) for dim in state.rule.by))
                if succeeded:
                    state.tally(minute, by, breakdowns, SUCCEEDED, succeeded)
                if failed:
                    state.tally(minute, by, breakdowns, FAILED, failed)

    def advance(self, watermark_ms: int) -> list[Alert]:
        """Judge every minute boundary up to the watermark; the alerts that changed state."""
        boundary = watermark_ms // MINUTE_MS * MINUTE_MS
        if self._evaluated_to is None:
            first_minutes = [min(r.counts) for r in self._rules if r.counts]
            if not first_minutes:
                return []
            self._evaluated_to = min(first_minutes)
        out: list[Alert] = []
        while self._evaluated_to < boundary:
            if not any(r.counts or r.firing or r.trials for r in self._rules):
                self._evaluated_to = boundary  # nothing remembered, nothing to judge: skip ahead
                break
            self._evaluated_to += MINUTE_MS
            t = self._evaluated_to
            for state in self._rules:
                state.step(t)
                out += self._judge_at(state, t)
        for state in self._rules:
            state.forget_incidents(self._evaluated_to)
        for minute in [m for m in self._ids if m < self._evaluated_to]:
            del self._ids[minute]
        return out

    def _judge_at(self, state: _Rule, t: int) -> list[Alert]:
        if state.rule.method == "cusum":
            return self._judge_cusum(state, t)
        rule = state.rule
        out: list[Alert] = []
        judged = set(state.window) | set(state.firing)
        for by in sorted(judged, key=_order):
            entered, reached = state.window.get(by, (0, 0))[:2]
            firing = state.firing.get(by)
            if firing is None:
                base_entered, base_reached = state.baseline.get(by, (0, 0))[:2]
                baseline = (base_entered, base_reached)
            else:
                baseline = firing.baseline
            verdict = judge(rule, (entered, reached), baseline)
            if firing is None and verdict.broken:
                incident = _incident_id(rule, by, t)
                state.firing[by] = _Firing(t, baseline, incident)
                state.incidents.setdefault(by, []).append((t - rule.window, None))
                out.append(self._alert(state, by, t, "fired", verdict, baseline, incident))
            elif firing is not None and verdict.recovered and not verdict.broken:
                out.append(self._resolve(state, by, t, verdict, firing))
        return out

    def _resolve(
        self,
        state: _Rule,
        by: ByValues,
        t: int,
        verdict: Verdict,
        firing: _Firing,
        reason: Literal["definition_changed"] | None = None,
    ) -> Alert:
        del state.firing[by]
        spans = state.incidents[by]
        spans[-1] = (spans[-1][0], t)
        return self._alert(state, by, t, "resolved", verdict, firing.baseline, firing.incident_id, reason)

    def _judge_cusum(self, state: _Rule, t: int) -> list[Alert]:
        """A minute of trials into each by value's statistic; fire at the threshold; resolve as
        a window rule does, on the trials resolved since it fired (a window that still holds the
        minutes before the drop would resolve it at once), then restart at h / 2."""
        rule = state.rule
        assert rule.relative_drop is not None
        out: list[Alert] = []
        newest = state.counts.get(t - MINUTE_MS, {})
        every = rule.false_alarm_every or DEFAULT_FALSE_ALARM_EVERY
        for by in sorted(set(state.window) | set(state.firing) | set(state.cusums), key=_order):
            cell = newest.get(by)
            succeeded, failed = (cell[SUCCEEDED], cell[FAILED]) if cell is not None else (0, 0)
            firing = state.firing.get(by)
            cusum = state.cusums.setdefault(by, _Cusum())
            if firing is not None:
                if succeeded or failed:
                    cusum.after.append((t - MINUTE_MS, succeeded, failed))
                    cusum.after_trials += succeeded + failed
                    cusum.after_successes += succeeded
                while cusum.after and cusum.after[0][0] < t - rule.window:
                    _, gone_successes, gone_failures = cusum.after.popleft()
                    cusum.after_trials -= gone_successes + gone_failures
                    cusum.after_successes -= gone_successes
                verdict = judge(rule, (cusum.after_trials, cusum.after_successes), firing.baseline)
                if verdict.recovered and not verdict.broken:
                    cusum.restart()
                    out.append(self._resolve(state, by, t, verdict, firing))
                continue
            base = state.baseline.get(by, (0, 0, 0, 0))
            base_trials = base[SUCCEEDED] + base[FAILED]
            if base_trials < rule.min_entered or base[SUCCEEDED] == 0:
                continue  # no verdict on too few trials; nothing converts: nothing can fall
            if 2 * state.observed_span(t) < state.baseline_span:
                # A baseline still filling up estimates p0 from a few hours or days: a fire on it
                # would freeze that estimate, and a p0 too high never lets the rule resolve. So no
                # verdict before half the baseline's span has been observed.
                continue
            p0 = _cautious_rate(base[SUCCEEDED], base_trials)
            current = design(p0, rule.relative_drop, every * base_trials / state.observed_span(t))
            if cusum.design is None or cusum.statistic is None:
                cusum.statistic, cusum.since = current.start, t - MINUTE_MS
            elif current != cusum.design:  # the same evidence in nats on the new grid
                cusum.statistic = round(cusum.statistic * cusum.design.unit / current.unit)
            cusum.design = current
            if not (succeeded or failed):
                continue
            if cusum.statistic == 0:
                cusum.since = t - MINUTE_MS
            cusum.statistic = current.update(cusum.statistic, succeeded, failed)
            if cusum.statistic == 0:
                cusum.trials = cusum.failures = cusum.successes = 0
                continue
            cusum.trials += succeeded + failed
            cusum.failures += failed
            cusum.successes += succeeded
            if cusum.statistic >= current.threshold:
                baseline = (base_trials, base[SUCCEEDED])
                incident = _incident_id(rule, by, t)
                state.firing[by] = _Firing(t, baseline, incident, p0)
                # From the fire on, not from where the evidence began: the minutes before were
                # picked for their failures, and leaving them out after every false alarm would
                # push the baseline up, and the false alarms with it.
                state.incidents.setdefault(by, []).append((t, None))
                verdict = Verdict(
                    rate=cusum.successes / cusum.trials,
                    baseline_rate=p0,
                    entered=cusum.trials,
                    baseline_entered=base_trials,
                    broken=True,
                    recovered=False,
                )
                out.append(self._alert(state, by, t, "fired", verdict, baseline, incident))
        return out

    def root_cause(self, index: int, by: ByValues) -> RootCause | None:
        """Rule `index`'s root cause for `by` now: its window against its baseline per value of
        each of the funnel's other breakdowns (trials for cusum, entries for window)."""
        state = self._rules[index]
        if not state.dimensions:
            return None
        cusum = state.rule.method == "cusum"
        n, x = (SUCCEEDED, FAILED) if cusum else (ENTERED, REACHED)
        windows = state.segment_window
        if cusum and self._evaluated_to is not None:
            # the trials of the evidence: since the statistic last left zero, at most a window
            t = self._evaluated_to
            since = max(state.cusums[by].since, t - state.rule.window, min(state.segment_counts, default=t))
            windows = {}
            for minute in range(since, t, MINUTE_MS):
                _add(windows, state.segment_counts.get(minute), +1)
        combos: dict[tuple[str | None, ...], tuple[Counts, Counts]] = {}
        for key in set(windows) | set(state.segment_baseline):
            key_by, combo = key
            if key_by != by:
                continue
            window = windows.get(key, (0, 0, 0, 0))
            baseline = state.segment_baseline.get(key, (0, 0, 0, 0))
            if cusum:  # (trials, successes)
                combos[combo] = ((window[n] + window[x], window[n]), (baseline[n] + baseline[x], baseline[n]))
            else:
                combos[combo] = ((window[n], window[x]), (baseline[n], baseline[x]))
        return explain(state.dimensions, combos)

    def _alert(
        self,
        state: _Rule,
        by: ByValues,
        t: int,
        kind: Literal["fired", "resolved"],
        verdict: Verdict,
        baseline: Counts,
        incident_id: str,
        reason: Literal["definition_changed"] | None = None,
    ) -> Alert:
        rule = state.rule
        by_map = dict(zip(rule.by, by, strict=True))
        entered, rate = verdict.entered, verdict.rate
        reached = round(rate * entered) if rate is not None else 0
        p_value = verdict.p_value
        cusum = state.cusums.get(by) if rule.method == "cusum" else None
        if p_value is None and baseline[0] > 0 and entered > 0 and cusum is None:
            p_value = _fisher((entered, reached), baseline)
        level = rule.confidence if rule.confidence is not None else DEFAULT_INTERVAL_LEVEL
        low, high = wilson_interval(min(reached, entered), entered, level)
        cusum_fields: dict[str, Any] = {}
        if cusum is not None and cusum.design is not None:
            fired = kind == "fired"
            cusum_fields = {
                "statistic": (cusum.statistic or 0) * cusum.design.unit if fired else None,
                "threshold": cusum.design.threshold * cusum.design.unit,
                "trials": cusum.trials if fired else None,
                "failures": cusum.failures if fired else None,
                "resolution_delay": format_duration_ms(state.resolve_after()),
                "false_alarm_every": format_duration_ms(rule.false_alarm_every or DEFAULT_FALSE_ALARM_EVERY),
            }
        return Alert(
            id=output_id("alert", state.index, rule.funnel, rule.step, by, kind, t),
            timestamp=from_epoch_ms(t),
            funnel=rule.funnel,
            step=rule.step,
            step_index=state.step_index,
            state=kind,
            rate=rate,
            baseline_rate=verdict.baseline_rate,
            entered=entered,
            baseline_entered=verdict.baseline_entered,
            by=by_map,
            window=format_duration_ms(rule.window),
            baseline=format_duration_ms(rule.baseline),
            confidence=rule.confidence,
            p_value=p_value,
            p_threshold=look_level(rule) if rule.confidence is not None else None,
            rate_low=low,
            rate_high=high,
            interval_level=level,
            baseline_frozen=kind == "resolved",
            incident_id=incident_id,
            rule_id=rule_identity(rule),
            funnel_version=state.funnel_version or None,
            method=rule.method,
            root_cause=self.root_cause(state.index, by) if kind == "fired" else None,
            reason=reason,
            **cusum_fields,
        )


def _cautious_rate(successes: int, trials: int) -> float:
    """p0 for a cusum rule: the baseline's rate less one standard error (and never 1). A baseline
    that came out high by chance makes steady traffic look like a drop; taking it a standard
    error low keeps the false alarms at or under what false_alarm_every promises, for a small
    loss of speed (measured in bench.alert_detection)."""
    rate = (successes + 0.5) / (trials + 1)
    return max(successes / trials / 2, rate - math.sqrt(rate * (1 - rate) / trials))


def _order(by: ByValues) -> tuple[str, ...]:
    return tuple(x or "" for x in by)


def _incident_id(rule: AlertRule, by: ByValues, t: int) -> str:
    """The dedup key of an incident: the rule's identity (its own settings: not its position in
    the file nor its funnel's version, `config.versions.rule_identity`), the by values and the
    minute it fired."""
    return output_id("incident", rule_identity(rule), tuple(zip(rule.by, by, strict=True)), t)


def _epoch_ms(value: Any) -> int:
    return to_epoch_ms(value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))


def _attempt_keys(output: Mapping[str, Any], funnel: str) -> tuple[tuple[str, ...], ...]:
    """An attempt is its funnel, its start and its person, under each id the output carries: an
    attempt that the person's login linked reaches the step under the user id too."""
    started = str(output.get("started_at"))
    return tuple(
        (funnel, started, kind, str(output[kind]))
        for kind in ("user_id", "anonymous_id")
        if output.get(kind) is not None
    )


def stale_incidents(published: Iterable[Mapping[str, Any]], config: CompiledConfig) -> list[Alert]:
    """Resolutions for the incidents `published` (the alerts topic, oldest first) left firing that
    no rule of `config` can resolve any more: their rule is gone or changed (another `rule_id`),
    or its funnel's version changed. A worker restarted on a new configuration judges from the
    new version's counts only, so without these the receivers would keep the incident open.

    Each resolution has the fired alert's dedup key (`incident_id`), `reason: definition_changed`,
    the time of the latest alert published, and an id of its own from the incident, so every
    worker that computes it sends the same record."""
    last: dict[str, Mapping[str, Any]] = {}
    latest: str | None = None
    for alert in published:
        if alert.get("type") != "alert" or not alert.get("incident_id"):
            continue
        last[str(alert["incident_id"])] = alert
        stamp = str(alert["timestamp"])
        latest = stamp if latest is None or stamp > latest else latest
    current = {rule_identity(rule): rule for rule in config.source.alerts}
    out: list[Alert] = []
    for incident, alert in last.items():
        if alert.get("state") != "fired" or latest is None:
            continue
        rule = current.get(str(alert.get("rule_id"))) if alert.get("rule_id") else None
        if alert.get("rule_id") is None:  # published before rules carried their identity
            rule = next(
                (r for r in config.source.alerts if (r.funnel, r.step) == (alert["funnel"], alert["step"])),
                None,
            )
        funnel = config.funnels_by_name.get(rule.funnel) if rule is not None else None
        version = funnel.version if funnel is not None else None
        if rule is not None and (not version or version == alert.get("funnel_version")):
            continue  # its rule still judges it, and resolves it in time
        out.append(
            Alert.model_validate(
                {
                    **alert,
                    "id": output_id("alert", incident, "definition_changed"),
                    "timestamp": latest,
                    "state": "resolved",
                    "reason": "definition_changed",
                    "root_cause": None,
                    "baseline_frozen": True,
                }
            )
        )
    return sorted(out, key=lambda a: (a.timestamp, a.id))
