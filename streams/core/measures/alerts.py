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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streams.core.config.durations import format_duration_ms
from streams.core.config.matching import CompiledConfig
from streams.core.config.model import AlertRule
from streams.core.input.event import from_epoch_ms, to_epoch_ms
from streams.core.measures.stats import fisher_less, scan_look_level, wilson_interval
from streams.core.records.ids import output_id
from streams.core.records.outputs import Alert

MINUTE_MS = 60_000
WEEK_MS = 7 * 86_400_000
RESOLVE_RELATIVE = 0.5  # resolve above (1 - relative_drop * this) * baseline
RESOLVE_ABSOLUTE = 1.25  # resolve above drop_below * this
DEFAULT_INTERVAL_LEVEL = 0.95  # the window rate's interval when a rule has no confidence

ByValues = tuple[str | None, ...]
Counts = tuple[int, int]  # (entered the step before, entered the step)


Cells = dict[ByValues, list[int]]  # by-values -> [entered the step before, entered the step]


@dataclass(frozen=True)
class _Firing:
    fired_at: int
    baseline: Counts  # frozen: what the rule fired against


@dataclass
class _Rule:
    index: int
    rule: AlertRule
    step_index: int
    funnel_version: str = ""
    """Only this version's counts enter the rule's sums: a baseline never mixes two definitions
    (its identity towards receivers, `config.versions.rule_identity`, does not depend on it)."""
    counts: dict[int, Cells] = field(default_factory=lambda: defaultdict(dict))  # per minute
    window: Cells = field(default_factory=dict)  # sliding sums over [t - window, t)
    baseline: Cells = field(default_factory=dict)  # and over the baseline's minutes
    firing: dict[ByValues, _Firing] = field(default_factory=dict)
    incidents: dict[ByValues, list[tuple[int, int | None]]] = field(default_factory=dict)
    """Per by value, [start, end) of the minutes that must not enter its baseline (end None:
    still firing)."""
    excluded: dict[int, frozenset[ByValues]] = field(default_factory=dict)
    """Per minute already in the baseline: the by values whose cells it skipped."""

    def __post_init__(self) -> None:
        rule = self.rule
        self.half_span = (rule.baseline - rule.window) // 2 // MINUTE_MS * MINUTE_MS
        if rule.seasonality == "weekly":
            # minute m first enters the baseline when it is the newest minute of week 1's span
            self.enter_lag = WEEK_MS - self.half_span
            self.reach = rule.seasons * WEEK_MS + rule.window + self.half_span
        else:
            self.enter_lag = rule.window
            self.reach = rule.baseline

    def step(self, t: int) -> None:
        """Slide every sum from t - 1 minute to t (the minute [t - 1m, t) is complete)."""
        rule = self.rule
        newest = t - MINUTE_MS
        _add(self.window, self.counts.get(newest), +1)
        _add(self.window, self.counts.get(newest - rule.window), -1)
        self._decide_exclusions(newest - self.enter_lag)
        if rule.seasonality == "weekly":
            for k in range(1, rule.seasons + 1):
                shift = k * WEEK_MS
                self._baseline_add(newest - shift + self.half_span, +1)
                self._baseline_add(newest - shift - rule.window - self.half_span, -1)
        else:
            self._baseline_add(newest - rule.window, +1)
            self._baseline_add(newest - rule.baseline, -1)
        gone = newest - self.reach
        self.counts.pop(gone, None)
        self.excluded.pop(gone, None)

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

    def _baseline_add(self, minute: int, sign: int) -> None:
        cells = self.counts.get(minute)
        if not cells:
            return
        skipped = self.excluded.get(minute)
        if skipped:
            cells = {by: cell for by, cell in cells.items() if by not in skipped}
        _add(self.baseline, cells, sign)

    def forget_incidents(self, t: int) -> None:
        """Incidents that ended before any minute still to be decided started."""
        oldest_undecided = t - self.enter_lag
        for by in list(self.incidents):
            spans = [(s, e) for s, e in self.incidents[by] if e is None or e > oldest_undecided]
            if spans:
                self.incidents[by] = spans
            else:
                del self.incidents[by]


def _add(total: Cells, cells: Cells | None, sign: int) -> None:
    if not cells:
        return
    for by, (entered, reached) in cells.items():
        cell = total.setdefault(by, [0, 0])
        cell[0] += sign * entered
        cell[1] += sign * reached
        if cell == [0, 0]:
            del total[by]


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
    rate = reached / entered if entered else None
    base_rate = base_reached / base_entered if base_entered else None
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
    def __init__(self, config: CompiledConfig) -> None:
        self.config = config
        self._rules: list[_Rule] = []
        for i, rule in enumerate(config.source.alerts):
            funnel = config.funnels_by_name[rule.funnel]
            step_index = [s.name for s in funnel.steps].index(rule.step)
            self._rules.append(_Rule(i, rule, step_index, funnel.version))
        self._evaluated_to: int | None = None
        self.ignored_late = 0
        self._ids: dict[int, set[str]] = {}
        """Per minute not yet judged, the ids of the microconversions counted in it."""
        self.duplicates = 0

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def rule_counts(self, index: int) -> dict[ByValues, tuple[Counts, Counts]]:
        """What rule `index` judges now, per by value: (window, baseline) counts of (entered the
        step before, entered the step); while it fires, the baseline it fired with."""
        state = self._rules[index]
        out: dict[ByValues, tuple[Counts, Counts]] = {}
        for by in set(state.window) | set(state.baseline) | set(state.firing):
            window = state.window.get(by, [0, 0])
            firing = state.firing.get(by)
            baseline = firing.baseline if firing is not None else tuple(state.baseline.get(by, [0, 0]))
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
        self.count(
            at_ms,
            str(output.get("funnel")),
            int(output["step_index"]),
            output.get("breakdowns") or {},
            version=output.get("funnel_version"),
        )

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
            by = tuple(breakdowns.get(dim) for dim in state.rule.by)
            cell = state.counts[minute].setdefault(by, [0, 0])
            cell[position] += times

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
            if not any(r.counts or r.firing for r in self._rules):
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
        rule = state.rule
        out: list[Alert] = []
        judged = set(state.window) | set(state.firing)
        for by in sorted(judged, key=lambda v: tuple(x or "" for x in v)):
            entered, reached = state.window.get(by, (0, 0))
            firing = state.firing.get(by)
            if firing is None:
                base_entered, base_reached = state.baseline.get(by, (0, 0))
                baseline = (base_entered, base_reached)
            else:
                baseline = firing.baseline
            verdict = judge(rule, (entered, reached), baseline)
            if firing is None and verdict.broken:
                state.firing[by] = _Firing(t, baseline)
                state.incidents.setdefault(by, []).append((t - rule.window, None))
                out.append(self._alert(state, by, t, "fired", verdict, baseline))
            elif firing is not None and verdict.recovered and not verdict.broken:
                del state.firing[by]
                spans = state.incidents[by]
                spans[-1] = (spans[-1][0], t)
                out.append(self._alert(state, by, t, "resolved", verdict, baseline))
        return out

    def _alert(
        self,
        state: _Rule,
        by: ByValues,
        t: int,
        kind: Literal["fired", "resolved"],
        verdict: Verdict,
        baseline: Counts,
    ) -> Alert:
        rule = state.rule
        by_map = dict(zip(rule.by, by, strict=True))
        entered, rate = verdict.entered, verdict.rate
        reached = round(rate * entered) if rate is not None else 0
        p_value = verdict.p_value
        if p_value is None and baseline[0] > 0 and entered > 0:
            p_value = _fisher((entered, reached), baseline)
        level = rule.confidence if rule.confidence is not None else DEFAULT_INTERVAL_LEVEL
        low, high = wilson_interval(min(reached, entered), entered, level)
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
            funnel_version=state.funnel_version or None,
        )
