"""Root cause on fired alerts, on seeded traffic through the evaluator: a planted incident on one
value comes first with most of the drop, a pure change of mix names no value as falling (it
names the mix), noise names nothing. And the window rate of an alert stays a rate (issue 27,
item 6: a resolved alert reported 2.0 from 1 entered)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.measures.alerts import AlertEvaluator
from streams.core.measures.rootcause import NO_SEGMENT, explain
from streams.core.measures.rule_state import MINUTE_MS
from streams.core.records.outputs import Alert
from tests.core.measures.test_alert_confidence import T0, poisson


def config(rule: str) -> CompiledConfig:
    return compile_config(
        parse_config(f"""
version: 1
funnels:
  - name: f
    steps:
      - {{name: a, match: {{event: a}}}}
      - {{name: b, match: {{event: b}}}}
    breakdowns: [context.platform, campaign.source]
alerts:
  - {{funnel: f, step: b, {rule}}}
""")
    )


SOURCES = ("google", "direct", "email")


def drive(
    evaluator: AlertEvaluator,
    seed: int,
    minutes: int,
    per_minute: float,
    mobile_share: object,
    rate: object,
) -> list[Alert]:
    """Poisson entries a minute, each mobile with mobile_share(m), from a source chosen evenly,
    converting in the same minute with rate(m, platform, source)."""
    rng = random.Random(seed)
    alerts: list[Alert] = []
    for m in range(minutes):
        at = T0 + m * MINUTE_MS
        for _ in range(poisson(rng, per_minute)):
            platform = "mobile" if rng.random() < mobile_share(m) else "web"  # type: ignore[operator]
            source = SOURCES[rng.randrange(3)]
            breakdowns = {"context.platform": platform, "campaign.source": source}
            evaluator.count(at, "f", 0, breakdowns)
            if rng.random() < rate(m, platform, source):  # type: ignore[operator]
                evaluator.count(at, "f", 1, breakdowns)
        alerts += evaluator.advance(at + MINUTE_MS)
    return alerts


RULE = "window: 1h, baseline: 12h, min_entered: 50, relative_drop: 0.2, confidence: 0.99"


@pytest.mark.parametrize("seed", range(3))
def test_a_planted_incident_on_one_value_comes_first_with_most_of_the_drop(seed: int) -> None:
    evaluator = AlertEvaluator(config(RULE))
    alerts = drive(
        evaluator,
        seed,
        15 * 60,
        5.0,
        lambda m: 0.5,
        lambda m, platform, source: 0.15 if platform == "mobile" and m >= 13 * 60 else 0.5,
    )
    fired = [a for a in alerts if a.state == "fired"]
    assert fired, alerts
    cause = fired[0].root_cause
    assert cause is not None and cause.segments, cause
    top = cause.segments[0]
    assert (top.breakdown, top.value) == ("context.platform", "mobile")
    assert top.share > 0.8 and top.rate < top.baseline_rate
    assert top.p_value <= cause.significance
    # the drop is spread over the sources: one may stand out by chance, never above mobile
    assert all(s.share < top.share for s in cause.segments[1:])
    assert cause.mix == []
    assert cause.summary.startswith("context.platform=mobile: ")
    assert "of the drop (rate " in cause.summary


@pytest.mark.parametrize("seed", range(3))
def test_a_pure_mix_shift_names_no_value_as_falling(seed: int) -> None:
    """Mobile converts at 0.2 and web at 0.6 throughout; mobile's share of the entries goes from
    20 % to 80 %, so the step's rate falls from 0.52 to 0.28 and the rule fires, but no value's
    own rate fell: the root cause names none as falling and puts the drop on the mix."""
    evaluator = AlertEvaluator(config(RULE))
    alerts = drive(
        evaluator,
        seed,
        15 * 60,
        5.0,
        lambda m: 0.8 if m >= 13 * 60 else 0.2,
        lambda m, platform, source: 0.2 if platform == "mobile" else 0.6,
    )
    fired = [a for a in alerts if a.state == "fired"]
    assert fired, alerts
    cause = fired[0].root_cause
    assert cause is not None
    assert cause.segments == [], cause.segments
    assert cause.summary.startswith(NO_SEGMENT)
    assert [(s.breakdown, s.value) for s in cause.mix] == [("context.platform", "mobile")]
    assert cause.mix[0].entries_share > cause.mix[0].baseline_entries_share
    assert "traffic mix: more entries from context.platform=mobile" in cause.summary


def test_noise_names_no_segment() -> None:
    """A rule without confidence fires on steady noise at 30 entries a window; the root cause of
    each of those false alarms names no value (the named-value test is family-wise at 0.01)."""
    rule = "window: 1h, baseline: 12h, min_entered: 15, relative_drop: 0.1"
    fired: list[Alert] = []
    for seed in range(8):
        alerts = drive(AlertEvaluator(config(rule)), seed, 36 * 60, 0.5, lambda m: 0.5, lambda m, p, s: 0.5)
        fired += [a for a in alerts if a.state == "fired"]
    assert len(fired) >= 10, len(fired)
    named = [a.root_cause.summary for a in fired if a.root_cause is not None and a.root_cause.segments]
    assert len(named) <= 1, named
    assert all(a.root_cause is not None for a in fired)


def test_explain_splits_the_missing_conversions_exactly_into_rate_and_mix() -> None:
    """Per breakdown, the rate effects plus the mix effects add up to the missing conversions."""
    window = {"web": (100, 55), "mobile": (300, 30)}
    baseline = {"web": (800, 480), "mobile": (200, 40)}
    cause = explain(["context.platform"], {(v,): (window[v], baseline[v]) for v in window})
    r0 = (480 + 40) / 1000
    missing = 400 * r0 - 85
    assert cause.missing == pytest.approx(missing)
    rate = {"web": 100 * (0.6 - 0.55), "mobile": 300 * (0.2 - 0.1)}
    mix = {"web": 400 * (0.8 - 0.25) * (0.6 - r0), "mobile": 400 * (0.2 - 0.75) * (0.2 - r0)}
    assert sum(rate.values()) + sum(mix.values()) == pytest.approx(missing)
    named = {s.value: s.missing for s in cause.segments}
    assert named == {"mobile": pytest.approx(rate["mobile"])}
    assert {s.value: s.missing for s in cause.mix} == {"mobile": pytest.approx(mix["mobile"])}


def test_a_resolved_alert_rate_stays_a_rate_and_inside_its_interval() -> None:
    """Issue 27, item 6: the window counts steps entered, so one attempt entering `a` in the window
    and two reaching `b` (attempts that entered `a` before it) gave "rate": 2.0 from 1 entered.
    The rate is now the clamped one, in [0, 1], and inside its own interval."""
    compiled = compile_config(
        parse_config("""
version: 1
funnels:
  - name: f
    steps:
      - {name: a, match: {event: a}}
      - {name: b, match: {event: b}}
alerts:
  - {funnel: f, step: b, window: 10m, baseline: 1h, min_entered: 1, relative_drop: 0.5}
""")
    )
    evaluator = AlertEvaluator(compiled)
    alerts: list[Alert] = []
    for m in range(82):
        at = T0 + m * MINUTE_MS
        if m < 70:
            evaluator.count(at, "f", 0, {}, 10)
            evaluator.count(at, "f", 1, {}, 5 if m < 60 else 0)
        elif m == 80:
            evaluator.count(at, "f", 0, {}, 1)
            evaluator.count(at, "f", 1, {}, 2)
        alerts += evaluator.advance(at + MINUTE_MS)
    assert [a.state for a in alerts] == ["fired", "resolved"]
    resolved = alerts[1]
    assert resolved.entered == 1
    assert resolved.rate == 1.0
    assert resolved.rate_low is not None and resolved.rate_high is not None
    assert 0.0 <= resolved.rate_low <= resolved.rate <= resolved.rate_high <= 1.0
    for alert in alerts:
        assert alert.rate is not None and 0.0 <= alert.rate <= 1.0


def many_segments_root_causes() -> bytes:
    """The root causes of a drop on one platform among 5 platforms and 13 sources, some of
    them missing (None in the segment keys), as JSON."""
    evaluator = AlertEvaluator(config(RULE))
    rng = random.Random(0)
    sources = [None, *(f"s{i}" for i in range(12))]
    platforms = [None, "web", "ios", "android", "mobile"]
    alerts: list[Alert] = []
    for m in range(15 * 60):
        at = T0 + m * MINUTE_MS
        for _ in range(poisson(rng, 8.0)):
            platform, source = rng.choice(platforms), rng.choice(sources)
            given = (("context.platform", platform), ("campaign.source", source))
            breakdowns = {k: v for k, v in given if v is not None}
            evaluator.count(at, "f", 0, breakdowns)
            if rng.random() < (0.1 if platform == "mobile" and m >= 13 * 60 else 0.45):
                evaluator.count(at, "f", 1, breakdowns)
        alerts += evaluator.advance(at + MINUTE_MS)
    causes = [a.root_cause.model_dump(mode="json") for a in alerts if a.root_cause is not None]
    assert causes
    return orjson.dumps(causes)


def test_a_root_cause_is_the_same_bytes_whatever_the_process_hash_seed() -> None:
    """Its shares are float sums over the segments: summed in a set's order, their last digits
    followed the hash seed (4 of these 5 seeds disagreed before the segments were sorted)."""
    root = Path(__file__).resolve().parents[3]
    program = (
        "import sys; from tests.core.measures.test_rootcause import many_segments_root_causes; "
        "sys.stdout.buffer.write(many_segments_root_causes())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)},
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
        for seed in (0, 1, 2, 3, 5)
    }
    assert len(outputs) == 1
