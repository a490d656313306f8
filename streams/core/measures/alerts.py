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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from streams.core.config.durations import format_duration_ms
from streams.core.config.matching import CompiledConfig
from streams.core.config.model import AlertRule
from streams.core.config.versions import rule_identity
from streams.core.input.event import from_epoch_ms, to_epoch_ms
from streams.core.measures.cardinality import BREAKDOWN_CAP, OTHER, Admitted
from streams.core.measures.cusum import design
from streams.core.measures.rootcause import explain
from streams.core.measures.rule_state import (
    COMBO_CAP_FACTOR,
    DAY_MS,
    ENTERED,
    FAILED,
    MINUTE_MS,
    REACHED,
    SUCCEEDED,
    ByValues,
    Counts,
    CusumState,
    Firing,
    RuleState,
    add_cells,
    moment_ms,
)
from streams.core.measures.seen_ids import SeenIds
from streams.core.measures.stats import fisher_less, scan_look_level, wilson_interval
from streams.core.records.ids import output_id
from streams.core.records.outputs import Alert, RootCause

RESOLVE_RELATIVE = 0.5  # resolve above (1 - relative_drop * this) * baseline
RESOLVE_ABSOLUTE = 1.25  # resolve above drop_below * this
DEFAULT_INTERVAL_LEVEL = 0.95  # the window rate's interval when a rule has no confidence
DEFAULT_FALSE_ALARM_EVERY = 90 * DAY_MS


@dataclass  # not frozen: compiled, a frozen dataclass's __init__ sets each field by object.__setattr__
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
        self._rules: list[RuleState] = []
        for i, rule in enumerate(config.source.alerts):
            funnel = config.funnels_by_name[rule.funnel]
            step_index = [s.name for s in funnel.steps].index(rule.step)
            self._rules.append(RuleState(i, rule, step_index, funnel, funnel.version))
            self._rules[-1].admitted = Admitted(by_cap, tuple(OTHER for _ in rule.by))
            self._rules[-1].admitted_combo = Admitted(
                COMBO_CAP_FACTOR * by_cap, tuple(OTHER for _ in self._rules[-1].dimensions)
            )
        self._routes: dict[tuple[str, int], list[tuple[RuleState, int]]] = {}
        """(funnel, step index) -> the rules a milestone of that step counts for, each with its
        column (0: the step before the rule's, 1: the rule's step; cusum: opens, closes a trial).
        A milestone of any other step changes no rule: `observe` drops it after one lookup."""
        for state in self._rules:
            for position in (0, 1):
                route = (state.rule.funnel, state.step_index - 1 + position)
                self._routes.setdefault(route, []).append((state, position))
        self._evaluated_to: int | None = None
        self._tidied_to: int | None = None
        """The event time the incidents and ids were last tidied at (`advance`)."""
        self.ignored_late = 0
        """Counts (of a step some rule judges) whose minute was judged already."""
        self._ids = SeenIds()
        """Per minute not yet judged, the ids of the microconversions counted in it."""
        self.duplicates = 0
        """Copies of a microconversion some rule counts, ignored."""

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
            "ids": self._ids.to_state(),
            "rules": {key: state.to_state() for key, state in zip(keys, self._rules, strict=True)},
        }

    def restore(self, data: Mapping[str, Any], keys: Sequence[str]) -> None:
        """What `to_state` saved: each rule whose key is among the saved ones continues from its
        state; the others start from nothing (at the saved event time)."""
        self._evaluated_to = None if data["evaluated_to"] is None else int(data["evaluated_to"])
        self.ignored_late, self.duplicates = int(data["ignored_late"]), int(data["duplicates"])
        self._ids = SeenIds.from_state(data["ids"])
        self._tidied_to = None
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
        self._tidied_to = None
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
        """Count one output event (only milestone microconversions of a step some rule judges,
        or of the step before it, matter: any other costs one lookup).

        A microconversion delivered twice (the journeys agent republishes a run it had not
        finished acknowledging) counts once: its id is remembered until its minute is judged;
        after that a copy is late and ignored, so no id is remembered for longer."""
        # a dict's own lookups (what offline mode and the service pass), not Mapping's method calls
        output = output if isinstance(output, dict) else dict(output)
        if output.get("type") != "micro" or output.get("kind") != "milestone":
            return
        funnel = str(output.get("funnel"))
        raw_index = output["step_index"]
        # compiled, `int(x)` of an object is a call of the int type (~600 instructions): only for
        # what is not an int already (ours always are)
        step_index = raw_index if type(raw_index) is int else int(raw_index)
        route = self._routes.get((funnel, step_index))
        if route is None:
            return
        version = output.get("funnel_version")
        if version is not None:
            route = [entry for entry in route if entry[0].funnel_version == version]
            if not route:
                return
        at_ms = moment_ms(output["timestamp"])
        minute = at_ms // MINUTE_MS * MINUTE_MS
        identifier = output.get("id")
        if identifier is not None and not self._ids.first(str(identifier), minute):
            self.duplicates += 1
            return
        if self._evaluated_to is not None and minute < self._evaluated_to:
            self.ignored_late += 1  # its minute was judged already: beyond the watermark
            return
        breakdowns = output.get("breakdowns") or {}
        for state, position in route:
            by = state.admitted(tuple([breakdowns.get(dim) for dim in state.rule.by]))
            state.tally(minute, by, breakdowns, position, 1)
            if state.rule.method != "cusum":
                continue
            if position == 0:
                state.open_trial(_attempt_keys(output, funnel), at_ms, breakdowns)
            else:
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
        route = self._routes.get((funnel, step_index))
        if route is None:
            return
        for state, position in route:
            if version is not None and version != state.funnel_version:
                continue
            by = state.admitted(tuple([breakdowns.get(dim) for dim in state.rule.by]))
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
        t = self._evaluated_to
        if t != self._tidied_to:  # incidents change only when judged: once per event time is enough
            self._tidied_to = t
            for state in self._rules:
                state.forget_incidents(t)
        self._ids.forget_before(t)
        return out

    def _judge_at(self, state: RuleState, t: int) -> list[Alert]:
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
                state.firing[by] = Firing(t, baseline, incident)
                state.incidents.setdefault(by, []).append((t - rule.window, None))
                out.append(self._alert(state, by, t, "fired", verdict, baseline, incident))
            elif firing is not None and verdict.recovered and not verdict.broken:
                out.append(self._resolve(state, by, t, verdict, firing))
        return out

    def _resolve(
        self,
        state: RuleState,
        by: ByValues,
        t: int,
        verdict: Verdict,
        firing: Firing,
        reason: Literal["definition_changed"] | None = None,
    ) -> Alert:
        del state.firing[by]
        spans = state.incidents[by]
        spans[-1] = (spans[-1][0], t)
        return self._alert(state, by, t, "resolved", verdict, firing.baseline, firing.incident_id, reason)

    def _judge_cusum(self, state: RuleState, t: int) -> list[Alert]:
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
            cusum = state.cusums.setdefault(by, CusumState())
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
                state.firing[by] = Firing(t, baseline, incident, p0)
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
                add_cells(windows, state.segment_counts.get(minute), +1)
        combos: dict[tuple[str | None, ...], tuple[Counts, Counts]] = {}
        # in a fixed order: the shares are float sums, and a set's order follows the hashes of its
        # keys (randomized per process for strings, by address for None in Python 3.11)
        for key in sorted(set(windows) | set(state.segment_baseline), key=repr):
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
        state: RuleState,
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
            # a resolution for a changed definition has the id `stale_incidents` gives it from the
            # published alerts, so offline mode and a restarted worker publish one record
            id=output_id("alert", incident_id, reason)
            if reason is not None
            else output_id("alert", state.index, rule.funnel, rule.step, by, kind, t),
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
