"""One alert rule's state in the evaluator (streams.core.measures.alerts says what is judged).

Apart from the judging because it is bookkeeping of its own: per minute of event time the cells
of each `by` value and of each combination of the funnel's other breakdowns, the sliding sums
over the window and the baseline that each minute enters and leaves once, the cusum trials and
their deadlines, the incidents kept out of the baseline, and all of it as plain data for a
state file and back.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from streams.core.config.matching import CompiledFunnel
from streams.core.config.model import AlertRule
from streams.core.input.event import to_epoch_ms
from streams.core.measures.cardinality import BREAKDOWN_CAP, Admitted
from streams.core.measures.cusum import Design

# Final: compiled, a constant in the C code of every module that uses it, not a dict lookup
MINUTE_MS: Final = 60_000
WEEK_MS: Final = 7 * 86_400_000
DAY_MS: Final = 86_400_000
COMBO_CAP_FACTOR = 4  # combinations of the funnel's breakdowns kept per rule: this many times the cap
RESOLVE_QUANTILE = 0.9  # resolve_after's default: this quantile of the observed times to convert
RESOLVE_MIN_OBSERVED = 30  # times to convert observed before the quantile is trusted
RESOLVE_FALLBACK_MS = DAY_MS  # until then (or less: the step's within, the funnel's window)
_BUCKET_BASE = 1.1  # the times-to-convert histogram: minutes in buckets 10 % wide

ByValues = tuple[str | None, ...]
Counts = tuple[int, int]  # (entered the step before, entered the step)
Segment = tuple[ByValues, tuple[str | None, ...]]  # (by values, the other breakdowns' values)

ENTERED: Final = 0
REACHED: Final = 1
SUCCEEDED: Final = 2
FAILED: Final = 3
Cells = dict[Any, list[int]]
"""Key (by values, or a Segment) -> [entered the step before, entered the step, trials that
succeeded, trials that failed]."""


@dataclass(frozen=True)
class Firing:
    fired_at: int
    baseline: Counts  # frozen: what the rule fired against
    incident_id: str
    p0: float | None = None  # cusum: the trial rate it fired against


@dataclass
class CusumState:
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
    def from_state(cls, data: Mapping[str, Any]) -> CusumState:
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
class Trial:
    keys: tuple[tuple[str, ...], ...]
    by: ByValues
    breakdowns: Mapping[str, Any]
    deadline_ms: int
    open: bool = True


@dataclass
class RuleState:
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
    cusums: dict[ByValues, CusumState] = field(default_factory=dict)
    trials: dict[tuple[str, ...], Trial] = field(default_factory=dict)
    """cusum: open trials by attempt key (funnel, start, person id), under each id it carries."""
    deadlines: dict[int, list[Trial]] = field(default_factory=lambda: defaultdict(list))
    first_minute: int | None = None
    times_to_convert: dict[int, int] = field(default_factory=dict)
    """Histogram: bucket -> conversions into the step from the one before, by minutes taken."""
    firing: dict[ByValues, Firing] = field(default_factory=dict)
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

        def ref(trial: Trial) -> int:
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
        self.cusums = {_in(by): CusumState.from_state(c) for by, c in data["cusums"]}
        trials = [
            Trial(_in(keys), _in(by), dict(breakdowns), int(deadline), bool(is_open))
            for keys, by, breakdowns, deadline, is_open in data["trials"]
        ]
        self.trials = {_in(key): trials[position] for key, position in data["open_trials"]}
        self.deadlines = defaultdict(list)
        for minute, due in data["deadlines"]:
            self.deadlines[int(minute)] = [trials[position] for position in due]
        self.first_minute = None if data["first_minute"] is None else int(data["first_minute"])
        self.times_to_convert = {int(bucket): int(n) for bucket, n in data["times_to_convert"]}
        self.firing = {
            _in(by): Firing(int(at), (int(base[0]), int(base[1])), str(incident), p0)
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
        by_key = by_of_segment
        for counts, window, baseline, key in (
            (self.counts, self.window, self.baseline, None),
            (self.segment_counts, self.segment_window, self.segment_baseline, by_key),
        ):
            if not counts and not window and not baseline:
                continue
            add_cells(window, counts.get(newest), +1)
            add_cells(window, counts.get(newest - rule.window), -1)
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
        cells = self.counts[minute]
        cell = cells.get(by)
        if cell is None:
            cell = cells[by] = [0, 0, 0, 0]
        cell[column] += times
        if self.dimensions:
            values: list[str | None] = []
            for dimension in self.dimensions:
                value = breakdowns.get(dimension)
                values.append(None if value is None else str(value))
            segment = (by, self.admitted_combo(tuple(values)))
            cells = self.segment_counts[minute]
            cell = cells.get(segment)
            if cell is None:
                cell = cells[segment] = [0, 0, 0, 0]
            cell[column] += times

    def open_trial(
        self, keys: tuple[tuple[str, ...], ...], at_ms: int, breakdowns: Mapping[str, Any]
    ) -> None:
        if not keys or any(k in self.trials for k in keys):
            return
        by = self.admitted(tuple(breakdowns.get(dim) for dim in self.rule.by))
        trial = Trial(keys, by, dict(breakdowns), at_ms + self.resolve_after())
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

    def _close(self, trial: Trial) -> None:
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
        add_cells(baseline, cells, sign)

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


_LAST_MOMENT: Final[list[Any]] = [None, 0]
"""The last timestamp `moment_ms` converted, and its milliseconds: the microconversions of one
event share its timestamp object, and each evaluator reads each of them."""


def moment_ms(timestamp: Any) -> int:
    """An output's `timestamp` (a datetime, or its ISO form from JSON) in epoch milliseconds."""
    last = _LAST_MOMENT
    if timestamp is last[0]:
        known: int = last[1]
        return known
    moment = timestamp if isinstance(timestamp, datetime) else datetime.fromisoformat(str(timestamp))
    at_ms = to_epoch_ms(moment)
    last[0], last[1] = timestamp, at_ms
    return at_ms


def by_of_segment(key: Segment) -> ByValues:
    return key[0]


def add_cells(total: Cells, cells: Cells | None, sign: int) -> None:
    if not cells:
        return
    for key, counts in cells.items():
        entered, reached, succeeded, failed = counts
        cell = total.get(key)
        if cell is None:
            if entered or reached or succeeded or failed:
                total[key] = [sign * entered, sign * reached, sign * succeeded, sign * failed]
            continue
        cell[ENTERED] += sign * entered
        cell[REACHED] += sign * reached
        cell[SUCCEEDED] += sign * succeeded
        cell[FAILED] += sign * failed
        if not (cell[ENTERED] or cell[REACHED] or cell[SUCCEEDED] or cell[FAILED]):
            del total[key]
