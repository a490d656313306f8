"""Definition versions: a fingerprint of what gives a funnel's state (and what depends on it) its
meaning, so a restart under an edited configuration can tell which state it may keep.

A funnel's version covers what decides how events move its attempts: its name, `scope`, `order`,
`entry`, `window`, `hold`, the attribution step (by position), the exclusions' matches and, per
step in order, its name, match and `within`. A step or exclusion matching `goal: X` covers goal
X's match too: editing the goal changes what the step matches. Left out, because they change no
attempt's course, only what is reported of it: `breakdowns` (an attempt keeps the values it read
when it opened), `stalled_after` (a signal, not an outcome) and `max_held_attempts` (a bound on
how many attempts a person keeps, applied at the next opening).

Goals, secondary microconversions, alert rules and experiments have versions too (their match;
an alert's rule and its funnel's version; an experiment's settings and its funnel's version):
what `diff-config` reports, and what keys an alert's baseline and an experiment's evaluation.

`Definition` is what a journeys store remembers of every funnel version it has written (the
step names and the compared parts), so an attempt written under an earlier version can be
judged against the current one (`continues`) and its drop-off named in its own steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streams.core.config.model import AlertRule, Experiment, Funnel, FunnelConfig, Goal, Match

VERSION_CHARS = 10
"""Hex characters kept of a fingerprint: 40 bits, collisions between a funnel's few versions out
of reach."""


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON value (keys sorted, so the YAML's key order does not count)."""
    digest = hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:VERSION_CHARS]


def _match(match: Match, goals: Mapping[str, Goal]) -> dict[str, Any]:
    """A match in canonical form: event names sorted, and a goal replaced by the goal's own match."""
    out: dict[str, Any] = {}
    if match.event is not None:
        out["event"] = sorted([match.event] if isinstance(match.event, str) else set(match.event))
    if match.url is not None:
        out["url"] = match.url
    if match.goal is not None:
        goal = goals.get(match.goal)
        out["goal"] = {"name": match.goal, "match": _match(goal.match, goals) if goal else None}
    if match.fields:
        out["fields"] = dict(sorted(match.fields.items()))
    return out


@dataclass(frozen=True, slots=True)
class Definition:
    """What state depends on of one funnel version: `steps` each step's match and `within` (no
    name), `rest` every other compared part, both as canonical JSON strings."""

    funnel: str
    version: str
    step_names: tuple[str, ...]
    steps: tuple[str, ...]
    rest: str
    order: str

    def to_json(self) -> dict[str, Any]:
        return {
            "funnel": self.funnel,
            "version": self.version,
            "step_names": list(self.step_names),
            "steps": list(self.steps),
            "rest": self.rest,
            "order": self.order,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Definition:
        return cls(
            str(data["funnel"]),
            str(data["version"]),
            tuple(data["step_names"]),
            tuple(data["steps"]),
            str(data["rest"]),
            str(data["order"]),
        )


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def definition(config: FunnelConfig, funnel: Funnel) -> Definition:
    goals = {g.name: g for g in config.goals}
    steps = tuple(_dumps({"match": _match(s.match, goals), "within": s.within}) for s in funnel.steps)
    rest = _dumps(
        {
            "scope": funnel.scope,
            "order": funnel.order,
            "entry": funnel.entry if funnel.order != "any" else None,
            "window": funnel.window,
            "hold": list(funnel.hold),
            "exclusions": sorted(_dumps(_match(e.match, goals)) for e in funnel.exclusions),
            "attribution": funnel.step_index(funnel.attribution.step) if funnel.attribution else None,
        }
    )
    names = tuple(s.name for s in funnel.steps)
    version = fingerprint({"name": funnel.name, "step_names": names, "steps": steps, "rest": rest})
    return Definition(funnel.name, version, names, steps, rest, funnel.order)


def funnel_versions(config: FunnelConfig) -> dict[str, str]:
    return {f.name: definition(config, f).version for f in config.funnels}


def continues(old: Definition, new: Definition, reached: int, done_mask: int) -> bool:
    """Whether an attempt written under `old` (at step `reached`, steps `done_mask` reported) may
    continue under `new`: whether what it has done and can do next is the same under both, so
    it goes on exactly as `new` would take it (docs/howto/changing-funnels.md, the rule table).

    - same version, or only step names changed: continues (later outputs in the new names);
    - any other change than to the steps (scope, order, entry, window, hold, exclusions,
      attribution): ends;
    - `order: any`: continues when the new funnel's steps begin with the old ones (steps
      appended), since any step may come next;
    - `order: strict`: only a rename continues (an event of any other step breaks the attempt,
      and whether one came is not known);
    - ordered: continues when the steps up to the one after the furthest reached are the same
      (match and `within`) and the new funnel has a step after the furthest reached, so neither
      the past nor the next move differ: a step appended, inserted, removed or swapped further
      on does not end it.
    """
    if old.version == new.version:
        return True
    if old.funnel != new.funnel or old.rest != new.rest:
        return False
    if old.steps == new.steps:
        return True  # renamed steps only
    if old.order == "any":
        return len(new.steps) > len(old.steps) and new.steps[: len(old.steps)] == old.steps
    if old.order == "strict":
        return False
    top = max(reached, done_mask.bit_length() - 1)
    upto = top + 2
    return len(new.steps) > top + 1 and old.steps[:upto] == new.steps[:upto]


def shared_steps(old: Definition, new: Definition) -> int:
    """How many leading steps the two versions have alike (match and `within`; names aside)."""
    same = 0
    while same < min(len(old.steps), len(new.steps)) and old.steps[same] == new.steps[same]:
        same += 1
    return same


def goal_version(goal: Goal) -> str:
    return fingerprint({"name": goal.name, "match": _match(goal.match, {}), "value": goal.value})


def micro_version(config: FunnelConfig, index: int) -> str:
    micro = config.micro[index]
    goals = {g.name: g for g in config.goals}
    return fingerprint({"name": micro.name, "match": _match(micro.match, goals)})


def rule_identity(rule: AlertRule) -> str:
    """An alert rule's identity towards receivers (its dedup key's root): the rule's own settings,
    not its funnel's version, so an unchanged rule keeps it when the funnel is edited."""
    return fingerprint({"alert": rule.model_dump(mode="json")})


def alert_version(rule: AlertRule, funnel_version: str) -> str:
    """What an alert's baseline belongs to: the rule and its funnel's version. Counts of another
    version never enter it."""
    return fingerprint({"rule": rule_identity(rule), "funnel": funnel_version})


def experiment_version(experiment: Experiment, funnel_version: str) -> str:
    return fingerprint({"experiment": experiment.model_dump(mode="json"), "funnel": funnel_version})


def config_fingerprint(config: FunnelConfig) -> str:
    """The whole configuration's fingerprint: equal fingerprints, nothing to compare."""
    return fingerprint(config.model_dump(mode="json"))


Status = Literal["unchanged", "compatible", "incompatible", "added", "removed"]


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    """funnel, goal, micro, alert or experiment"""
    name: str
    status: Status
    detail: str
    old_version: str | None
    new_version: str | None

    @property
    def incompatible(self) -> bool:
        return self.status in ("incompatible", "removed")

    def line(self) -> str:
        versions = f"{self.old_version or '-'} -> {self.new_version or '-'}"
        return f"{self.kind} {self.name}: {self.status} ({versions}): {self.detail}"


def _funnel_change(old: Definition, new: Definition) -> tuple[Status, str]:
    if old.version == new.version:
        return "unchanged", "in-flight attempts continue; counters go on under the same version"
    counters = f"counters start under version {new.version}; those of {old.version} stay until they expire"
    if old.rest != new.rest:
        return "incompatible", f"every in-flight attempt ends with definition_changed; {counters}"
    if old.steps == new.steps:
        return "compatible", f"steps renamed: in-flight attempts continue (carried over); {counters}"
    appended = len(new.steps) > len(old.steps) and new.steps[: len(old.steps)] == old.steps
    if appended and old.order != "strict":
        return "compatible", f"steps appended: in-flight attempts continue (carried over); {counters}"
    same = shared_steps(old, new)
    if old.order == "sequential" and same >= 2:
        return (
            "incompatible",
            f"steps differ from position {same + 1}: attempts that reached at most step {same - 1} "
            f"({old.step_names[same - 2]}) continue, the others end with definition_changed; {counters}",
        )
    return "incompatible", f"every in-flight attempt ends with definition_changed; {counters}"


def diff_configs(old: FunnelConfig, new: FunnelConfig) -> list[Change]:
    """Per funnel, goal, micro, alert and experiment of either configuration: what a restart from
    state written under `old` does under `new` (`conversions diff-config`)."""
    changes: list[Change] = []
    old_defs = {f.name: definition(old, f) for f in old.funnels}
    new_defs = {f.name: definition(new, f) for f in new.funnels}
    for name in dict.fromkeys([*old_defs, *new_defs]):
        a, b = old_defs.get(name), new_defs.get(name)
        if a is None:
            assert b is not None
            changes.append(
                Change("funnel", name, "added", "attempts open from its first step", None, b.version)
            )
        elif b is None:
            changes.append(
                Change(
                    "funnel", name, "removed",
                    "every in-flight attempt ends with definition_changed; its counters stay until "
                    "they expire",
                    a.version, None,
                )
            )  # fmt: skip
        else:
            status, detail = _funnel_change(a, b)
            changes.append(Change("funnel", name, status, detail, a.version, b.version))
    _simple(
        changes,
        "goal",
        {g.name: goal_version(g) for g in old.goals},
        {g.name: goal_version(g) for g in new.goals},
    )
    _simple(
        changes,
        "micro",
        {m.name: micro_version(old, i) for i, m in enumerate(old.micro)},
        {m.name: micro_version(new, i) for i, m in enumerate(new.micro)},
    )
    old_f, new_f = funnel_versions(old), funnel_versions(new)
    old_alerts = {rule_identity(r): (r, alert_version(r, old_f[r.funnel])) for r in old.alerts}
    for rule in new.alerts:
        identity = rule_identity(rule)
        version = alert_version(rule, new_f[rule.funnel])
        name = f"{rule.funnel}/{rule.step} [{identity}]"
        before = old_alerts.pop(identity, None)
        if before is None:
            changes.append(
                Change("alert", name, "added", "no verdict until it has its own baseline", None, version)
            )
        elif before[1] == version:
            changes.append(Change("alert", name, "unchanged", "its baseline goes on", version, version))
        else:
            changes.append(
                Change(
                    "alert", name, "incompatible",
                    "its funnel changed: a new baseline is built from the new version's counts (no verdict "
                    "until then); its identity towards receivers stays the same",
                    before[1], version,
                )
            )  # fmt: skip
    for identity, (rule, version) in old_alerts.items():
        changes.append(
            Change(
                "alert",
                f"{rule.funnel}/{rule.step} [{identity}]",
                "removed",
                "no longer judged",
                version,
                None,
            )
        )
    old_e = {e.name: experiment_version(e, old_f[e.funnel]) for e in old.experiments}
    new_e = {e.name: experiment_version(e, new_f[e.funnel]) for e in new.experiments}
    for name in dict.fromkeys([*old_e, *new_e]):
        a_v, b_v = old_e.get(name), new_e.get(name)
        if a_v is None:
            changes.append(Change("experiment", name, "added", "evaluated from its first attempt", None, b_v))
        elif b_v is None:
            changes.append(Change("experiment", name, "removed", "no longer evaluated", a_v, None))
        elif a_v == b_v:
            changes.append(Change("experiment", name, "unchanged", "its evaluation goes on", a_v, b_v))
        else:
            changes.append(
                Change(
                    "experiment", name, "incompatible",
                    "evaluated again from zero on the new version's attempts (the two are never mixed)",
                    a_v, b_v,
                )
            )  # fmt: skip
    return changes


def _simple(changes: list[Change], kind: str, old: dict[str, str], new: dict[str, str]) -> None:
    """Goals and micro actions hold no state: a change counts from now on, under its name."""
    for name in dict.fromkeys([*old, *new]):
        a, b = old.get(name), new.get(name)
        if a is None:
            changes.append(Change(kind, name, "added", "counted from now on", None, b))
        elif b is None:
            changes.append(
                Change(
                    kind, name, "removed", "no longer counted; its counters stay until they expire", a, None
                )
            )
        elif a == b:
            changes.append(Change(kind, name, "unchanged", "counted as before", a, b))
        else:
            changes.append(
                Change(
                    kind,
                    name,
                    "compatible",
                    "holds no in-flight state: counted under the new match from now on",
                    a,
                    b,
                )
            )
