"""Alert rules (CONTRACT section 2 `alerts`), judged in event time.

The evaluator counts, per minute of event time, how many attempts entered each judged step
and the step before it (from milestone microconversions), per `by` value. Whenever its
watermark passes a minute boundary t, each rule is judged on the window (t - window, t] against
the baseline (t - baseline, t - window]:

- no verdict while fewer than `min_entered` entered the step before, in the window;
- it *breaks* when the window's rate < (1 - relative_drop) * baseline rate, or < drop_below;
- a broken rule fires once, then resolves only when the rate is back above a looser threshold
  ((1 - relative_drop / 2) * baseline, and drop_below * 1.25): hysteresis, so a rate hovering
  at the threshold does not flap.

The verdicts depend only on the counts of complete minutes, so a replay of history (offline or
through Kafka) raises the same alerts at the same event times as live traffic did.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from streams.core.config import AlertRule
from streams.core.durations import format_duration_ms
from streams.core.events import from_epoch_ms, to_epoch_ms
from streams.core.ids import output_id
from streams.core.matching import CompiledConfig
from streams.core.outputs import Alert

MINUTE_MS = 60_000
RESOLVE_RELATIVE = 0.5  # resolve above (1 - relative_drop * this) * baseline
RESOLVE_ABSOLUTE = 1.25  # resolve above drop_below * this

ByValues = tuple[str | None, ...]


Cells = dict[ByValues, list[int]]  # by-values -> [entered the step before, entered the step]


@dataclass
class _Rule:
    index: int
    rule: AlertRule
    step_index: int
    counts: dict[int, Cells] = field(default_factory=lambda: defaultdict(dict))  # per minute
    window: Cells = field(default_factory=dict)  # sliding sums over [t - window, t)
    baseline: Cells = field(default_factory=dict)  # and over [t - baseline, t - window)
    firing: set[ByValues] = field(default_factory=set)


def _add(total: Cells, cells: Cells, sign: int) -> None:
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


def judge(rule: AlertRule, window: tuple[int, int], baseline: tuple[int, int]) -> Verdict:
    """(entered before, entered step) in the window and in the baseline -> the rule's verdict."""
    entered, reached = window
    base_entered, base_reached = baseline
    rate = reached / entered if entered else None
    base_rate = base_reached / base_entered if base_entered else None
    if rate is None or entered < rule.min_entered:
        return Verdict(rate, base_rate, entered, base_entered, broken=False, recovered=False)
    broken = recovered = False
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
    return Verdict(rate, base_rate, entered, base_entered, broken, recovered)


class AlertEvaluator:
    def __init__(self, config: CompiledConfig) -> None:
        self.config = config
        self._rules: list[_Rule] = []
        for i, rule in enumerate(config.source.alerts):
            funnel = config.funnels_by_name[rule.funnel]
            step_index = [s.name for s in funnel.steps].index(rule.step)
            self._rules.append(_Rule(i, rule, step_index))
        self._evaluated_to: int | None = None
        self.ignored_late = 0
        self._keep_ms = max((r.rule.baseline for r in self._rules), default=0) + 2 * MINUTE_MS

    @property
    def active(self) -> bool:
        return bool(self._rules)

    def firing(self) -> dict[tuple[str, str, ByValues], bool]:
        return {(r.rule.funnel, r.rule.step, by): True for r in self._rules for by in r.firing}

    def observe(self, output: Mapping[str, Any]) -> None:
        """Count one output event (only milestone microconversions matter)."""
        if output.get("type") != "micro" or output.get("kind") != "milestone":
            return
        timestamp = output["timestamp"]
        moment = timestamp if isinstance(timestamp, datetime) else datetime.fromisoformat(str(timestamp))
        minute = to_epoch_ms(moment) // MINUTE_MS * MINUTE_MS
        if self._evaluated_to is not None and minute < self._evaluated_to:
            self.ignored_late += 1  # its minute was judged already: beyond the watermark
            return
        breakdowns = output.get("breakdowns") or {}
        for state in self._rules:
            if output.get("funnel") != state.rule.funnel:
                continue
            position = int(output["step_index"]) - (state.step_index - 1)
            if position not in (0, 1):
                continue
            by = tuple(breakdowns.get(dim) for dim in state.rule.by)
            cell = state.counts[minute].setdefault(by, [0, 0])
            cell[position] += 1

    def advance(self, watermark_ms: int) -> list[Alert]:
        """Judge every minute boundary up to the watermark; the alerts that changed state."""
        boundary = watermark_ms // MINUTE_MS * MINUTE_MS
        if self._evaluated_to is None:
            first_minutes = [m for r in self._rules for m in r.counts]
            if not first_minutes:
                return []
            self._evaluated_to = min(first_minutes)
        out: list[Alert] = []
        while self._evaluated_to < boundary:
            self._evaluated_to += MINUTE_MS
            t = self._evaluated_to
            for state in self._rules:
                rule = state.rule
                empty: Cells = {}
                _add(state.window, state.counts.get(t - MINUTE_MS, empty), +1)
                middle = state.counts.get(t - rule.window - MINUTE_MS, empty)
                _add(state.window, middle, -1)
                _add(state.baseline, middle, +1)
                _add(state.baseline, state.counts.get(t - rule.baseline - MINUTE_MS, empty), -1)
                out += self._judge_at(state, t)
        self._forget_before(self._evaluated_to - self._keep_ms)
        return out

    def _judge_at(self, state: _Rule, t: int) -> list[Alert]:
        rule = state.rule
        out: list[Alert] = []
        for by in sorted(set(state.window) | state.firing, key=lambda v: tuple(x or "" for x in v)):
            entered, reached = state.window.get(by, (0, 0))
            base_entered, base_reached = state.baseline.get(by, (0, 0))
            verdict = judge(rule, (entered, reached), (base_entered, base_reached))
            if by not in state.firing and verdict.broken:
                state.firing.add(by)
                out.append(self._alert(state, by, t, "fired", verdict))
            elif by in state.firing and verdict.recovered and not verdict.broken:
                state.firing.discard(by)
                out.append(self._alert(state, by, t, "resolved", verdict))
        return out

    def _alert(
        self, state: _Rule, by: ByValues, t: int, kind: Literal["fired", "resolved"], verdict: Verdict
    ) -> Alert:
        rule = state.rule
        by_map = dict(zip(rule.by, by, strict=True))
        return Alert(
            id=output_id("alert", state.index, rule.funnel, rule.step, by, kind, t),
            timestamp=from_epoch_ms(t),
            funnel=rule.funnel,
            step=rule.step,
            step_index=state.step_index,
            state=kind,
            rate=verdict.rate,
            baseline_rate=verdict.baseline_rate,
            entered=verdict.entered,
            baseline_entered=verdict.baseline_entered,
            by=by_map,
            window=format_duration_ms(rule.window),
            baseline=format_duration_ms(rule.baseline),
        )

    def _forget_before(self, horizon: int) -> None:
        for state in self._rules:
            for minute in [m for m in state.counts if m < horizon]:
                del state.counts[minute]  # already subtracted from both sliding sums
