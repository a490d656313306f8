"""Live experiments (CONTRACT section 2 `experiments`): a funnel's attempts compared by variant.

An attempt belongs to the variant read at its start: the experiment's `variant` field is an
implicit breakdown of its funnel (FunnelConfig.breakdowns_of), and the journey engine stamps
an attempt's breakdowns once, on its first step, onto every milestone microconversion the
attempt emits. So a user who switches variant mid-attempt, or whose later events lack the
field, still counts where they started. This evaluator is fed those microconversions and
nothing else; it needs no journey state.

Per variant it keeps, cumulatively, the attempts that reached each step (step 0: entered).
Whenever its watermark passes a minute that brought counts, it compares each variant with the
control on the conversion from entry to the experiment's step, with the mixture SPRT of
streams.core.measures.stats: an always-valid p-value and confidence sequence for the difference of
rates, so the decision may be read after every minute without inflating false positives. It
emits a `type: experiment` output when any variant's decision changes ("waiting" for
`min_entered` attempts in it and in the control, then "inconclusive", "better" or "worse"),
stamped with the minute's end in event time and an id made of the experiment and that time:
a replay of the same history, offline or through Kafka, emits the same updates.

The unit is the attempt, and a conversion counts when it happens: attempts still in flight
count as not (yet) converted in both arms alike, which is what a live view shows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from streams.core.config.matching import CompiledConfig, CompiledFunnel
from streams.core.config.model import Experiment
from streams.core.input.event import from_epoch_ms
from streams.core.measures.cardinality import BREAKDOWN_CAP
from streams.core.measures.counters import breakdown_values
from streams.core.measures.rule_state import moment_ms
from streams.core.measures.seen_ids import SeenIds
from streams.core.measures.stats import MixtureSPRT, wilson_interval
from streams.core.records.ids import output_id
from streams.core.records.outputs import ExperimentUpdate, VariantResult

MINUTE_MS: Final = 60_000  # Final: compiled, a constant rather than a dict lookup per use
MAX_VARIANTS = BREAKDOWN_CAP
"""The default cap on variants (`CONVERSIONS_BREAKDOWN_CAP`, the same as every client-chosen
value's): values beyond it (a mistyped or free-form field) count as unassigned: bounded state."""

Decision = Literal["control", "waiting", "inconclusive", "better", "worse"]


@dataclass
class _State:
    experiment: Experiment
    funnel: CompiledFunnel
    decide_index: int
    max_variants: int = MAX_VARIANTS
    pending: dict[int, dict[str | None, list[int]]] = field(default_factory=dict)
    """Per minute not yet judged: per variant (None: unassigned), attempts reaching each step."""
    totals: dict[str, list[int]] = field(default_factory=dict)
    unassigned: int = 0
    tests: dict[str, MixtureSPRT] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    updated_at: int | None = None

    def to_state(self) -> dict[str, Any]:
        """Plain data for a state file; `load_state` puts it back into a state built from the
        same definition."""
        return {
            "pending": [
                [minute, [[v, list(c)] for v, c in cells.items()]] for minute, cells in self.pending.items()
            ],
            "totals": {variant: list(counts) for variant, counts in self.totals.items()},
            "unassigned": self.unassigned,
            "tests": {v: [t.alpha, t.tau, t.p_value, t.low, t.high, t.looks] for v, t in self.tests.items()},
            "decisions": dict(self.decisions),
            "updated_at": self.updated_at,
        }

    def load_state(self, data: Mapping[str, Any]) -> None:
        self.pending = {
            int(minute): {None if v is None else str(v): [int(x) for x in c] for v, c in cells}
            for minute, cells in data["pending"]
        }
        self.totals = {str(v): [int(x) for x in c] for v, c in data["totals"].items()}
        self.unassigned = int(data["unassigned"])
        self.tests = {
            str(v): MixtureSPRT(float(a), float(tau), float(p), float(low), float(high), int(looks))
            for v, (a, tau, p, low, high, looks) in data["tests"].items()
        }
        self.decisions = {str(v): _decision(d) for v, d in data["decisions"].items()}
        self.updated_at = None if data["updated_at"] is None else int(data["updated_at"])

    def absorb(self, cells: dict[str | None, list[int]]) -> None:
        """A complete minute's counts; new variants are admitted in name order up to the cap, so
        which ones are admitted does not depend on the order events arrived in."""
        for value in sorted(cells, key=lambda v: (v is None, v or "")):
            counts = cells[value]
            variant = value
            if variant is not None and variant not in self.totals:
                if len(self.totals) >= self.max_variants and variant != self.experiment.control:
                    variant = None
                else:
                    self.totals[variant] = [0] * len(counts)
            if variant is None:
                self.unassigned += counts[0]
                continue
            total = self.totals[variant]
            for i, n in enumerate(counts):
                total[i] += n

    def judge(self) -> list[str]:
        """Update every comparison with the totals; the variants whose decision changed."""
        experiment = self.experiment
        control = self.totals.get(experiment.control)
        changed: list[str] = []
        for variant in sorted(self.totals):
            decision: Decision
            if variant == experiment.control:
                decision = "control"
            elif control is None or min(control[0], self.totals[variant][0]) < experiment.min_entered:
                decision = "waiting"
            else:
                test = self.tests.setdefault(variant, MixtureSPRT(experiment.alpha, experiment.mixing_sd))
                counts = self.totals[variant]
                test.update(counts[self.decide_index], counts[0], control[self.decide_index], control[0])
                decision = (
                    "inconclusive"
                    if not test.significant
                    else "better"
                    if test.low > 0
                    else "worse"
                    if test.high < 0
                    else "inconclusive"
                )
            if self.decisions.get(variant) != decision:
                self.decisions[variant] = decision
                changed.append(variant)
        return changed

    def update(self, t: int, changed: list[str]) -> ExperimentUpdate:
        experiment = self.experiment
        control = self.totals.get(experiment.control)
        control_rate = control[self.decide_index] / control[0] if control and control[0] else None
        level = 1 - experiment.alpha
        results: list[VariantResult] = []
        for variant in sorted(self.totals, key=lambda v: (v != experiment.control, v)):
            counts = self.totals[variant]
            entered, converted = counts[0], counts[self.decide_index]
            rate = converted / entered if entered else None
            low, high = wilson_interval(converted, entered, level) if entered else (None, None)
            test = self.tests.get(variant)
            lift = difference = None
            if variant != experiment.control and rate is not None and control_rate is not None:
                difference = rate - control_rate
                lift = rate / control_rate - 1 if control_rate > 0 else None
            results.append(
                VariantResult(
                    variant=variant,
                    entered=entered,
                    converted=converted,
                    steps={step.name: n for step, n in zip(self.funnel.steps, counts, strict=True)},
                    rate=rate,
                    rate_low=low,
                    rate_high=high,
                    lift=lift,
                    difference=difference,
                    difference_low=test.low if test is not None else None,
                    difference_high=test.high if test is not None else None,
                    p_value=test.p_value if test is not None else None,
                    decision=self.decisions.get(variant, "waiting"),
                )
            )
        return ExperimentUpdate(
            id=output_id("experiment", experiment.name, t),
            timestamp=from_epoch_ms(t),
            experiment=experiment.name,
            funnel=experiment.funnel,
            step=self.funnel.steps[self.decide_index].name,
            variant_field=experiment.variant,
            control=experiment.control,
            alpha=experiment.alpha,
            mixing_sd=experiment.mixing_sd,
            changed=changed,
            variants=results,
            unassigned=self.unassigned,
            funnel_version=self.funnel.version or None,
        )


class ExperimentEvaluator:
    """Milestone microconversions in, `type: experiment` updates out, in event time."""

    def __init__(
        self, config: CompiledConfig, names: Collection[str] | None = None, max_variants: int = MAX_VARIANTS
    ) -> None:
        """Every experiment of the configuration, or only those `names`d; each compares at most
        `max_variants` variants (the control among them)."""
        self._states: list[_State] = []
        self._by_funnel: dict[str, list[_State]] = {}
        """Funnel name -> the experiments on it: a milestone of any other funnel costs one lookup."""
        for experiment in config.source.experiments:
            if names is not None and experiment.name not in names:
                continue
            funnel = config.funnels_by_name[experiment.funnel]
            steps = [s.name for s in funnel.steps]
            decide = steps.index(experiment.step) if experiment.step is not None else len(steps) - 1
            self._states.append(_State(experiment, funnel, decide, max_variants))
            self._by_funnel.setdefault(funnel.name, []).append(self._states[-1])
        self._evaluated_to: int | None = None
        self._seen = False
        self._ids = SeenIds()
        """Per minute not yet judged, the ids of the microconversions counted in it."""
        self._oldest_pending: int | None = None
        """The oldest minute any experiment has pending (None: none): `advance` judges only then."""
        self.ignored_late = 0
        self.duplicates = 0

    @property
    def active(self) -> bool:
        return bool(self._states)

    def to_state(self, keys: Sequence[str]) -> dict[str, Any]:
        """The evaluator as plain data for a state file, each experiment's state under its key in
        `keys` (one per experiment evaluated, in order: e.g. its experiment version)."""
        return {
            "evaluated_to": self._evaluated_to,
            "seen": self._seen,
            "ignored_late": self.ignored_late,
            "duplicates": self.duplicates,
            "ids": self._ids.to_state(),
            "experiments": {key: state.to_state() for key, state in zip(keys, self._states, strict=True)},
        }

    def restore(self, data: Mapping[str, Any], keys: Sequence[str]) -> None:
        """What `to_state` saved: an experiment whose key was saved continues, the others start
        from nothing."""
        self._evaluated_to = None if data["evaluated_to"] is None else int(data["evaluated_to"])
        self._seen = bool(data["seen"])
        self.ignored_late, self.duplicates = int(data["ignored_late"]), int(data["duplicates"])
        self._ids = SeenIds.from_state(data["ids"])
        saved = data["experiments"]
        for key, state in zip(keys, self._states, strict=True):
            if key in saved:
                state.load_state(saved[key])
        self._oldest_pending = min((min(s.pending) for s in self._states if s.pending), default=None)

    def observe(self, output: Mapping[str, Any]) -> None:
        """Count one output event (only milestone microconversions of experimented funnels).

        A microconversion delivered twice (the journeys agent republishes a run it had not
        finished acknowledging) counts once: its id is remembered until its minute is judged,
        and after that any copy is late and ignored, so no id needs remembering for longer."""
        # a dict's own lookups (what offline mode and the service pass), not Mapping's method calls
        output = output if isinstance(output, dict) else dict(output)
        if output.get("type") != "micro" or output.get("kind") != "milestone":
            return
        states = self._by_funnel.get(str(output.get("funnel")))
        if states is None:
            return
        version = output.get("funnel_version")
        if version is not None:
            states = [s for s in states if s.funnel.version == version]
            if not states:
                return
        at_ms = moment_ms(output["timestamp"])
        minute = at_ms // MINUTE_MS * MINUTE_MS
        identifier = output.get("id")
        if identifier is not None and not self._ids.first(str(identifier), minute):
            self.duplicates += 1
            return
        raw_index = output["step_index"]
        step_index = raw_index if type(raw_index) is int else int(raw_index)  # as alerts' observe
        breakdowns = output.get("breakdowns") or {}
        if not isinstance(breakdowns, dict):
            breakdowns = dict(breakdowns)
        self._add(states, minute, step_index, breakdowns, 1)

    def count(
        self,
        at_ms: int,
        funnel: str,
        step_index: int,
        breakdowns: Mapping[str, Any],
        times: int = 1,
        version: str | None = None,
    ) -> None:
        """`times` attempts of `funnel` reached `step_index` at `at_ms` (what `observe` reads from
        a milestone microconversion; in bulk, for replays from the counters' per-minute sums).
        An empty variant is no variant: the counters cannot tell the two apart. Counts of another
        `version` of the funnel than the current one are not this evaluation's (None: an output
        written before versions existed)."""
        states = [
            s for s in self._by_funnel.get(funnel, ()) if version is None or version == s.funnel.version
        ]
        if states:
            values = breakdowns if isinstance(breakdowns, dict) else dict(breakdowns)
            self._add(states, at_ms // MINUTE_MS * MINUTE_MS, step_index, values, times)

    def _add(
        self, states: list[_State], minute: int, step_index: int, breakdowns: dict[str, Any], times: int
    ) -> None:
        # a dict's own lookups, not Mapping's method calls (compiled, ~340 instructions each)
        if self._evaluated_to is not None and minute < self._evaluated_to:
            self.ignored_late += times  # its minute was judged already: beyond the watermark
            return
        self._seen = True
        if self._oldest_pending is None or minute < self._oldest_pending:
            self._oldest_pending = minute
        for state in states:
            variant = breakdowns.get(state.experiment.variant) or None
            cells = state.pending.get(minute)
            if cells is None:
                cells = state.pending[minute] = {}
            counts = cells.get(variant)
            if counts is None:
                counts = cells[variant] = [0] * len(state.funnel.steps)
            counts[step_index] += times

    def advance(self, watermark_ms: int) -> list[ExperimentUpdate]:
        """Judge every complete minute up to the watermark that brought counts; the updates."""
        boundary = watermark_ms // MINUTE_MS * MINUTE_MS
        out: list[ExperimentUpdate] = []
        if self._oldest_pending is not None and self._oldest_pending < boundary:
            for state in self._states:
                for minute in sorted(m for m in state.pending if m < boundary):
                    state.absorb(state.pending.pop(minute))
                    changed = state.judge()
                    t = minute + MINUTE_MS
                    state.updated_at = t
                    if changed:
                        out.append(state.update(t, changed))
            out.sort(key=lambda u: (u.timestamp, u.experiment))
            self._oldest_pending = min((min(s.pending) for s in self._states if s.pending), default=None)
        if self._seen:
            self._evaluated_to = max(self._evaluated_to or boundary, boundary)
        self._ids.forget_before(boundary)
        return out

    def final(self, end_ms: int) -> list[ExperimentUpdate]:
        """Every experiment's state at the end of an input judged up to `end_ms` (offline mode's
        `--flush`), marked final, with an id of its own (an update of the same minute keeps its)."""
        return [
            state.update(end_ms, []).model_copy(
                update={"final": True, "id": output_id("experiment-final", state.experiment.name, end_ms)}
            )
            for state in self._states
        ]

    def snapshot(self) -> list[ExperimentUpdate]:
        """Every experiment's current state (for /experiments and reports): changed is empty."""
        return [state.update(state.updated_at, []) for state in self._states if state.updated_at is not None]


def _decision(value: object) -> Decision:
    if value not in ("control", "waiting", "inconclusive", "better", "worse"):
        raise ValueError(f"not a decision: {value!r}")
    return value


def replay(
    config: CompiledConfig, name: str, buckets: Mapping[int, Mapping[str, float]]
) -> tuple[ExperimentUpdate | None, list[ExperimentUpdate]]:
    """Experiment `name` judged again from the counters instead of the microconversions: per
    counter bucket (its start in ms -> the funnel's fields summed over shards, as
    `counters.base.CounterReads.funnel_buckets` reads them), the attempts that reached each step
    per value of the variant field, fed minute by minute to the same evaluator. With one-minute
    buckets holding the experiment's whole history, the sequence of looks is the live
    evaluator's, so the running p-value and confidence sequence are too. Its state at the end
    and its decision changes."""
    evaluator = ExperimentEvaluator(config, names={name})
    if not evaluator.active:
        raise KeyError(name)
    state = evaluator._states[0]
    dim, funnel = state.experiment.variant, state.funnel
    for start in sorted(buckets):
        fields = buckets[start]
        for value in breakdown_values(fields, dim):
            for k in range(len(funnel.steps)):
                n = int(fields.get(f"e:{k}|{dim}={value}", 0))
                if n:
                    evaluator.count(start, funnel.name, k, {dim: value}, times=n)
    changes = evaluator.advance(max(buckets) + MINUTE_MS) if buckets else []
    now = evaluator.snapshot()
    return (now[0] if now else None), changes


def describe(
    config: CompiledConfig,
    experiment: Experiment,
    state: ExperimentUpdate | None,
    changes: Sequence[ExperimentUpdate] = (),
) -> dict[str, Any]:
    """An experiment as JSON, as `/experiments` and `conversions report --experiment --json`
    show it: its configuration, its state (None: no attempt yet; `variants` then empty), and
    its decision changes (`changes`, in the order given)."""
    steps = [s.name for s in config.funnels_by_name[experiment.funnel].steps]
    return {
        "name": experiment.name,
        "funnel": experiment.funnel,
        "step": experiment.step or steps[-1],
        "steps": steps,
        "variant_field": experiment.variant,
        "control": experiment.control,
        "alpha": experiment.alpha,
        "mixing_sd": experiment.mixing_sd,
        "min_entered": experiment.min_entered,
        "updated_at": state.timestamp.isoformat() if state is not None else None,
        "unassigned": state.unassigned if state is not None else 0,
        "variants": [v.model_dump(mode="json") for v in state.variants] if state is not None else [],
        "changes": [
            {
                "id": change.id,
                "timestamp": change.timestamp.isoformat(),
                "changed": change.changed,
                "decisions": {v.variant: v.decision for v in change.variants},
            }
            for change in changes
        ],
    }
