"""Alert rules in event time: verdicts, hysteresis, and a planted incident found offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.config.model import AlertRule
from streams.core.measures.alerts import AlertEvaluator, judge
from streams.offline.run import OfflineRun
from streams.tools.simulate import Incident, Simulator
from tests.helpers import STALE_CONFIG, fired_alert, firing_evaluator, incident_funnels

RULE = AlertRule(
    funnel="f", step="b", window="1h", baseline="6h", min_entered=20, relative_drop=0.3, drop_below=0.2
)
CONFIG = compile_config(
    parse_config("""
version: 1
funnels:
  - name: f
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: b}}
    breakdowns: [context.platform]
alerts:
  - {funnel: f, step: b, window: 1h, baseline: 6h, min_entered: 20, relative_drop: 0.3,
     by: [context.platform]}
""")
)
T0 = datetime(2024, 3, 13, tzinfo=UTC)


def test_verdicts() -> None:
    assert judge(RULE, (100, 80), (500, 400)).broken is False
    low = judge(RULE, (100, 50), (500, 400))
    assert low.broken and low.rate == 0.5 and low.baseline_rate == 0.8
    assert judge(RULE, (100, 15), (0, 0)).broken, "the absolute floor needs no baseline"
    assert not judge(RULE, (10, 0), (500, 400)).broken, "no verdict on fewer than min_entered"
    assert judge(RULE, (100, 70), (500, 400)).recovered, "0.7 >= (1 - 0.15) * 0.8 = 0.68"
    assert not judge(RULE, (100, 60), (500, 400)).recovered, "between the thresholds: neither"
    assert not judge(RULE, (100, 60), (500, 400)).broken


def milestones(minute: datetime, entered: int, reached: int, platform: str = "web") -> list[dict[str, Any]]:
    def one(step: int) -> dict[str, Any]:
        return {
            "type": "micro",
            "kind": "milestone",
            "funnel": "f",
            "step_index": step,
            "timestamp": minute.isoformat(),
            "breakdowns": {"context.platform": platform},
        }

    return [one(0)] * entered + [one(1)] * reached


def run(schedule: list[tuple[int, float, str]]) -> list[Any]:
    """(minutes from T0, rate, platform) with 10 entries a minute; the alerts, in order."""
    evaluator = AlertEvaluator(CONFIG)
    out = []
    for minute, rate, platform in schedule:
        at = T0 + timedelta(minutes=minute)
        for output in milestones(at, 10, round(10 * rate), platform):
            evaluator.observe(output)
        out += evaluator.advance(int((at + timedelta(minutes=1)).timestamp() * 1000))
    return out


def test_fires_once_inside_an_incident_and_resolves_after_it() -> None:
    schedule = [(m, 0.8, "web") for m in range(600)]
    schedule = [(m, 0.3 if 420 <= m < 480 else rate, p) for m, rate, p in schedule]
    alerts = run(schedule)
    assert [(a.state, a.by) for a in alerts] == [
        ("fired", {"context.platform": "web"}),
        ("resolved", {"context.platform": "web"}),
    ]
    fired, resolved = alerts
    assert T0 + timedelta(minutes=420) < fired.timestamp <= T0 + timedelta(minutes=480)
    assert resolved.timestamp > T0 + timedelta(minutes=480)
    assert (
        fired.rate is not None and fired.baseline_rate is not None and fired.rate < 0.7 * fired.baseline_rate
    )
    assert fired.entered >= 20 and fired.window == "1h" and fired.baseline == "6h"


def test_a_rate_hovering_at_the_threshold_does_not_flap() -> None:
    # 0.8 baseline; then two hours hovering around the 0.56 threshold (0.5 / 0.6 alternating)
    schedule = [(m, 0.8, "web") for m in range(400)] + [
        (m, 0.5 if m % 2 else 0.6, "web") for m in range(400, 520)
    ]
    alerts = run(schedule)
    assert [a.state for a in alerts] == ["fired"]


def test_a_drop_longer_than_the_baseline_does_not_become_the_norm() -> None:
    """The 6h baseline would be all incident after 6h; frozen at firing, it still says 0.8."""
    schedule = [(m, 0.8, "web") for m in range(400)] + [(m, 0.3, "web") for m in range(400, 1_000)]
    assert [a.state for a in run(schedule)] == ["fired"], "still firing 10h into a 6h-baseline drop"
    floor = AlertRule(
        funnel="f", step="b", window="1h", baseline="6h", min_entered=20, relative_drop=0.3, drop_below=0.5
    )
    assert judge(floor, (100, 30), (500, 150)).broken, "0.3 is under the floor whatever the baseline"


def test_breakdowns_are_judged_separately_and_quiet_traffic_raises_nothing() -> None:
    schedule = [(m, 0.8, "web") for m in range(600)] + [
        (m, 0.3 if m >= 420 else 0.8, "ios") for m in range(600)
    ]
    alerts = run(sorted(schedule))
    assert {tuple(a.by.values()) for a in alerts} == {("ios",)}
    assert run([(m, 0.8, "web") for m in range(900)]) == []


def test_same_alerts_whatever_the_watermark_steps() -> None:
    outputs = [
        o for m in range(600) for o in milestones(T0 + timedelta(minutes=m), 10, 3 if 420 <= m < 480 else 8)
    ]
    one_go = AlertEvaluator(CONFIG)
    for output in outputs:
        one_go.observe(output)
    end = int((T0 + timedelta(minutes=601)).timestamp() * 1000)
    all_at_once = one_go.advance(end)
    stepwise = AlertEvaluator(CONFIG)
    for output in outputs:
        stepwise.observe(output)
    gradual = [
        a
        for step in range(0, 602, 7)
        for a in stepwise.advance(int((T0 + timedelta(minutes=step)).timestamp() * 1000))
    ]
    gradual += stepwise.advance(end)
    assert [a.id for a in all_at_once] == [a.id for a in gradual] and len(gradual) == 2


INCIDENT_CONFIG = compile_config(parse_config(incident_funnels(baseline="4d", min_entered=20)))


def test_a_planted_incident_is_found_offline_on_its_platform_only() -> None:
    """Payment after shipping falls from 0.8 to 0.3 on mobile for a week out of sixteen days."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    incident = Incident(
        start=start + timedelta(days=5), end=start + timedelta(days=12), platform="mobile", payment_rate=0.3
    )
    sim = Simulator(seed=42, users=7_000, start=start, days=16, incident=incident)
    run_ = OfflineRun(INCIDENT_CONFIG, partitions=4)
    alerts = [o for o in run_.run(sim.lines()) if o.type == "alert"]
    mobile = [a.model_dump() for a in alerts if a.model_dump()["by"] == {"context.platform": "mobile"}]
    elsewhere = [a for a in alerts if a.model_dump()["by"] != {"context.platform": "mobile"}]
    fired = [a for a in mobile if a["state"] == "fired"]
    resolved = [a for a in mobile if a["state"] == "resolved"]
    assert fired, "the incident raised an alert"
    assert incident.start < fired[0]["timestamp"] < incident.end
    assert all(incident.start < a["timestamp"] < incident.end + timedelta(hours=12) for a in fired)
    assert resolved and resolved[-1]["timestamp"] > incident.end
    assert len([a for a in elsewhere if a.model_dump()["state"] == "fired"]) <= 2


def test_a_microconversion_delivered_twice_counts_once() -> None:
    """At-least-once delivery repeats outputs; the verdicts must not depend on it."""
    from streams.core.config.loader import parse_config
    from streams.core.config.matching import compile_config
    from streams.core.measures.alerts import AlertEvaluator

    config = compile_config(
        parse_config("""
version: 1
funnels:
  - name: f
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: b}}
alerts:
  - {funnel: f, step: b, window: 5m, baseline: 1h, min_entered: 1, drop_below: 0.5}
""")
    )

    def micro(n: int, step: int, minute: int) -> dict[str, object]:
        return {
            "type": "micro",
            "kind": "milestone",
            "id": f"m{n}-{step}",
            "funnel": "f",
            "step_index": step,
            "timestamp": f"2024-03-13T10:{minute:02d}:30+00:00",
        }

    once, twice = AlertEvaluator(config), AlertEvaluator(config)
    for n in range(10):
        outputs = [micro(n, 0, 1)] + ([micro(n, 1, 1)] if n < 6 else [])
        for output in outputs:
            once.observe(output)
            twice.observe(output)
            twice.observe(output)
    end = 1710324000000 + 10 * 60_000
    assert [a.model_dump() for a in once.advance(end)] == [a.model_dump() for a in twice.advance(end)]
    assert once.rule_counts(0) == twice.rule_counts(0) and twice.duplicates == 16


def test_an_incident_no_rule_judges_any_more_is_resolved_under_its_dedup_key() -> None:
    """A worker restarted on another configuration reads the alerts topic: an incident left firing
    by a rule whose funnel changed, or that is gone, is resolved; an unchanged one is left to its
    rule (which resolves it in time), so no receiver is told twice."""
    from streams.core.measures.alerts import stale_incidents

    before = compile_config(parse_config(STALE_CONFIG % "b"))
    fired = fired_alert(before)
    assert fired["rule_id"] and fired["incident_id"]
    assert stale_incidents([fired], before) == []
    legacy = {k: v for k, v in fired.items() if k != "rule_id"}  # published before rule ids
    assert stale_incidents([legacy], before) == []

    edited = compile_config(parse_config(STALE_CONFIG % "checkout_b"))  # step b's match: a new version
    assert edited.funnels_by_name["f"].version != fired["funnel_version"]
    [resolved] = stale_incidents([fired], edited)
    assert (resolved.state, resolved.reason, resolved.incident_id) == (
        "resolved",
        "definition_changed",
        fired["incident_id"],
    )
    assert resolved.funnel_version == fired["funnel_version"] and resolved.root_cause is None
    assert [a.id for a in stale_incidents([fired], edited)] == [resolved.id]  # every worker alike
    assert stale_incidents([fired, resolved.model_dump(mode="json")], edited) == []  # once only

    removed = compile_config(parse_config((STALE_CONFIG % "b").split("alerts:")[0]))
    assert [a.incident_id for a in stale_incidents([fired], removed)] == [fired["incident_id"]]


def test_offline_and_a_restarted_worker_resolve_a_changed_rules_incident_with_one_id() -> None:
    """Offline mode ends the incidents of a changed definition from its saved evaluator
    (`end_incidents`); a worker from the published alerts (`stale_incidents`). Both resolutions
    are one record to a consumer that deduplicates by id, under the same dedup key."""
    from streams.core.measures.alerts import stale_incidents

    before = compile_config(parse_config(STALE_CONFIG % "b"))
    evaluator, fired = firing_evaluator(before)
    [offline] = evaluator.end_incidents(0, "definition_changed")
    edited = compile_config(parse_config(STALE_CONFIG % "checkout_b"))
    [worker] = stale_incidents([fired.model_dump(mode="json")], edited)
    assert (offline.id, offline.incident_id, offline.state, offline.reason) == (
        worker.id,
        worker.incident_id,
        "resolved",
        "definition_changed",
    )
    assert offline.incident_id == fired.incident_id and offline.id != fired.id


def test_only_the_judged_step_and_the_one_before_it_reach_a_rule() -> None:
    """A window rule on step c and a cusum rule on step b of a four-step funnel: milestones of
    step d, of another funnel and of another version of the funnel change nothing (the state
    saved is that of an evaluator that saw none); those of a, b and c count where they belong."""
    config = compile_config(
        parse_config("""
version: 1
funnels:
  - name: f
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: b}}
      - {name: c, match: {event: c}}
      - {name: d, match: {event: d}}
    breakdowns: [context.platform]
  - name: g
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: b}}
alerts:
  - {funnel: f, step: c, window: 1h, baseline: 6h, min_entered: 20, relative_drop: 0.3}
  - {funnel: f, step: b, method: cusum, window: 1h, baseline: 6h, min_entered: 20, relative_drop: 0.3}
""")
    )
    version = config.funnels_by_name["f"].version

    def micro(step: int, n: int, **extra: Any) -> dict[str, Any]:
        return {
            "type": "micro",
            "kind": "milestone",
            "id": f"m{step}-{n}",
            "funnel": "f",
            "funnel_version": version,
            "step_index": step,
            "timestamp": (T0 + timedelta(minutes=1)).isoformat(),
            "started_at": T0.isoformat(),
            "anonymous_id": f"p{n}",
            "breakdowns": {"context.platform": "web"},
            **extra,
        }

    keys = ["window", "cusum"]
    fresh, seeing = AlertEvaluator(config), AlertEvaluator(config)
    for n in range(5):
        seeing.observe(micro(3, n))
        seeing.observe(micro(1, n, funnel="g"))
        seeing.observe(micro(2, n, funnel_version="another"))
    assert seeing.to_state(keys) == fresh.to_state(keys)
    for n in range(5):
        for step in (0, 1, 2):
            seeing.observe(micro(step, n))
    seeing.observe(micro(2, 0))  # a copy
    saved = seeing.to_state(keys)
    window, cusum = saved["rules"]["window"], saved["rules"]["cusum"]
    assert [cells for _, cells in window["counts"]] == [[[[], [5, 5, 0, 0]]]], "b entered, c entered"
    assert [cells for _, cells in cusum["counts"]] == [[[[], [5, 5, 5, 0]]]], "a, b, trials succeeded"
    assert len(cusum["open_trials"]) == 0 and len(cusum["trials"]) == 5, "opened at a, closed at b"
    assert seeing.duplicates == 1
