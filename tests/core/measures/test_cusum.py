"""The cusum rule: its threshold against references computed apart from the engine (a direct
Monte-Carlo of the statistic, and a closed form), its configuration refused when wrong, and its
verdicts on seeded trials and on journeys run offline."""

from __future__ import annotations

import math
import random
import statistics
from datetime import UTC, datetime

import orjson
import pytest

from streams.core.config.loader import ConfigError, parse_config
from streams.core.config.matching import compile_config
from streams.core.measures.alerts import AlertEvaluator
from streams.core.measures.cusum import arl, design
from streams.core.measures.rule_state import MINUTE_MS
from streams.core.records.outputs import Alert
from streams.offline.run import OfflineRun

T0 = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
DAY = 1_440


def run_length(rng: random.Random, p: float, up: int, down: int, threshold: int, start: int) -> int:
    """Trials until a reflected walk (+up on failure, -down on success, floored at 0) reaches
    the threshold: the statistic as Page defined it, simulated trial by trial."""
    statistic, trials = start, 0
    while statistic < threshold:
        trials += 1
        statistic = max(0, statistic - down) if rng.random() < p else statistic + up
    return trials


@pytest.mark.parametrize(("p0", "target"), [(0.4, 150), (0.8, 300), (0.1, 200), (0.6, 80)])
def test_calibrated_arl_agrees_with_a_direct_monte_carlo(p0: float, target: float) -> None:
    """The in-control ARL from h/2 the design reports is what 4,000 simulated runs of the
    statistic average (within four standard errors), it reaches the target, and one unit less
    of threshold would not (the smallest h, as surveillance's findH searches it)."""
    d = design(p0, 0.5, target)
    rng = random.Random(7)
    runs = [run_length(rng, d.p0, d.up, d.down, d.threshold, d.start) for _ in range(4_000)]
    mean, se = statistics.fmean(runs), statistics.stdev(runs) / math.sqrt(len(runs))
    assert abs(mean - d.arl0) <= 4 * se, (mean, se, d)
    assert d.arl0 >= d.target >= target
    assert arl(d.p0, d.up, d.down, d.threshold - 1, (d.threshold - 1) // 2) < d.target
    # out of control (the drop it is tuned to), the same statistic alarms much sooner
    drop = [run_length(rng, d.p1, d.up, d.down, d.threshold, d.start) for _ in range(2_000)]
    assert statistics.fmean(drop) == pytest.approx(arl(d.p1, d.up, d.down, d.threshold, d.start), rel=0.1)
    assert statistics.fmean(drop) < d.arl0 / 3


@pytest.mark.parametrize("h", [1, 2, 5, 20, 60])
def test_arl_of_the_symmetric_walk_is_the_closed_form(h: int) -> None:
    """A fair walk of unit steps reflected at 0 first reaches h from 0 after h (h + 1) steps on
    average: the chain solver's answer at a point known without it."""
    assert arl(0.5, 1, 1, h, 0) == pytest.approx(h * (h + 1), rel=1e-9)


def test_false_alarms_per_trial_bound_by_wald() -> None:
    """Page's bound ARL0 >= e^h (h in nats, from 0) holds for every calibrated design."""
    for p0 in (0.05, 0.3, 0.5, 0.9):
        d = design(p0, 0.5, 1_000)
        assert arl(d.p0, d.up, d.down, d.threshold, 0) >= math.exp(d.threshold * d.unit) * 0.99


CONFIG = """\
version: 1
funnels:
  - name: f
    window: 1d
    steps:
      - {{name: a, match: {{event: a}}}}
      - {{name: b, match: {{event: b}}}}
    breakdowns: [context.platform, campaign.source]
alerts:
  - {{funnel: f, step: b, window: {window}, baseline: {baseline}, min_entered: {min_entered}, {rule}}}
"""


def rule_config(rule: str, window: str = "2d", baseline: str = "14d", min_entered: int = 10) -> str:
    return CONFIG.format(rule=rule, window=window, baseline=baseline, min_entered=min_entered)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("method: cusum, drop_below: 0.1", "needs relative_drop"),
        ("method: cusum, relative_drop: 0.5, confidence: 0.9", "confidence belongs to method: window"),
        ("method: cusum, relative_drop: 0.5, false_alarm_every: 1h", "at least 1d"),
        ("method: cusum, relative_drop: 0.5, resolve_after: 90s", "whole minutes"),
        ("relative_drop: 0.5, false_alarm_every: 90d", "cusum only"),
        ("method: cusum, relative_drop: 0.5, resolve_after: 2d", "longer than funnel f's window"),
        ("method: sprt, relative_drop: 0.5", "method"),
    ],
)
def test_bad_cusum_rules_are_refused_with_file_line_and_reason(rule: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(rule_config(rule), "funnels.yaml")
    assert caught.value.file == "funnels.yaml" and caught.value.line == 10, str(caught.value)
    assert reason in str(caught.value)


def feed_trials(
    evaluator: AlertEvaluator, seed: int, days: int, per_day: float, rate: float, drop_day: int | None
) -> list[Alert]:
    """Poisson trials resolved per minute (success with the rate, halved from drop_day)."""
    rng = random.Random(seed)
    alerts: list[Alert] = []
    per_minute = per_day / DAY
    for minute in range(days * DAY):
        at = T0 + minute * MINUTE_MS
        p = rate / 2 if drop_day is not None and minute >= drop_day * DAY else rate
        n = 0
        limit, product = math.exp(-per_minute), rng.random()
        while product > limit:
            n += 1
            product *= rng.random()
        for _ in range(n):
            ok = rng.random() < p
            evaluator.count(at, "f", 0, {})
            if ok:
                evaluator.count(at, "f", 1, {})
            evaluator.count_trials(at, "f", 1, {}, int(ok), int(not ok))
        alerts += evaluator.advance(at + MINUTE_MS)
    return alerts


def test_cusum_pages_a_halved_rate_at_fifty_a_day_well_before_the_window_rule() -> None:
    """50 trials a day at 0.4, halved on day 21: over a few seeds the cusum rule fires within
    four days every time (1.3 to 3 on these seeds), and sooner than the windowed Fisher rule
    promising as few false alarms;
    neither fires in the three steady weeks before (the direction bench.alert_detection measures
    at length)."""
    config = compile_config(
        parse_config(
            rule_config(
                "method: cusum, relative_drop: 0.5, false_alarm_every: 90d, resolve_after: 1h", "7d", "28d"
            )
            + "  - {funnel: f, step: b, window: 7d, baseline: 28d, min_entered: 10, relative_drop: 0.2, "
            "confidence: 0.9222}\n"
        )
    )
    cusum_delays, window_delays = [], []
    for seed in range(4):
        alerts = feed_trials(AlertEvaluator(config), seed, 28, 50, 0.4, 21)
        fired = [
            a
            for a in alerts
            if a.state == "fired" and a.timestamp.timestamp() * 1000 >= T0 + 7 * DAY * MINUTE_MS
        ]
        before = [a for a in fired if a.timestamp.timestamp() * 1000 < T0 + 21 * DAY * MINUTE_MS]
        assert before == [], [(a.method, a.timestamp, a.rate, a.baseline_rate, a.entered) for a in before]
        first = {a.method: (a.timestamp.timestamp() * 1000 - T0) / MINUTE_MS / DAY - 21 for a in fired}
        cusum_delays.append(first.get("cusum", math.inf))
        window_delays.append(first.get("window", math.inf))
        cusum = next(a for a in fired if a.method == "cusum")
        assert cusum.statistic is not None and cusum.threshold is not None
        assert cusum.statistic >= cusum.threshold and cusum.trials and cusum.failures
        assert 0 <= cusum.failures <= cusum.trials and cusum.resolution_delay == "1h"
        assert cusum.rate == pytest.approx((cusum.trials - cusum.failures) / cusum.trials)
        assert cusum.baseline_rate is not None and 0.3 < cusum.baseline_rate < 0.45
    assert max(cusum_delays) < 4, cusum_delays
    assert statistics.median(cusum_delays) < statistics.median(window_delays), (cusum_delays, window_delays)


def test_cusum_resolves_when_the_rate_is_back_then_restarts_at_half_the_threshold() -> None:
    config = compile_config(
        parse_config(rule_config("method: cusum, relative_drop: 0.5, resolve_after: 1h", "1d", "7d"))
    )
    evaluator = AlertEvaluator(config)
    alerts = feed_trials(evaluator, 3, 7, 200, 0.5, None)
    assert [a for a in alerts if a.state == "fired"] == []
    rng = random.Random(4)
    for minute in range(7 * DAY, 10 * DAY):  # a drop for a day, then back
        at = T0 + minute * MINUTE_MS
        p = 0.1 if minute < 8 * DAY else 0.5
        if minute % 7 == 0:
            ok = rng.random() < p
            evaluator.count(at, "f", 0, {})
            evaluator.count(at, "f", 1, {}) if ok else None
            evaluator.count_trials(at, "f", 1, {}, int(ok), int(not ok))
        alerts += evaluator.advance(at + MINUTE_MS)
    states = [a.state for a in alerts]
    assert states == ["fired", "resolved"], states
    fired, resolved = alerts
    assert fired.incident_id == resolved.incident_id and fired.id != resolved.id
    assert resolved.rate is not None and resolved.rate_low is not None and resolved.rate_high is not None
    assert 0 <= resolved.rate_low <= resolved.rate <= resolved.rate_high <= 1
    state = evaluator._rules[0].cusums[()]
    assert state.design is not None and state.statistic is not None
    # restarted at h/2, then moved only by the trials since (steady: not far up)
    assert state.statistic < state.design.threshold


def ndjson(events: list[dict[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events)


def test_offline_cusum_counts_trials_per_attempt_and_names_the_platform() -> None:
    """Journeys run offline: every hour 12 people enter step a (half mobile), and at 0.6 reach b
    within minutes; from day 8 mobile people stop reaching b. The cusum rule's trials are the
    attempts (a success when the same attempt reaches b within resolve_after, a failure at the
    deadline), it fires within a day, and the root cause names mobile first."""
    config = compile_config(
        parse_config(
            rule_config(
                "method: cusum, relative_drop: 0.5, false_alarm_every: 90d, resolve_after: 30m",
                "1d",
                "7d",
                50,
            )
        )
    )
    rng = random.Random(11)
    events: list[dict[str, object]] = []
    drop = T0 + 8 * DAY * MINUTE_MS
    for hour in range(10 * 24):
        for k in range(12):
            user = f"u{hour}-{k}"
            platform = "mobile" if k % 2 else "web"
            at = T0 + hour * 3_600_000 + k * 240_000
            common = {"user_id": user, "context": {"platform": platform}, "campaign": {"source": "google"}}
            events.append({"event_id": f"{user}-a", "event": "a", "timestamp": at, **common})
            p = 0.0 if platform == "mobile" and at >= drop else 0.6
            if rng.random() < p:
                events.append(
                    {
                        "event_id": f"{user}-b",
                        "event": "b",
                        "timestamp": at + 60_000 * rng.randrange(1, 20),
                        **common,
                    }
                )
    events.sort(key=lambda e: int(str(e["timestamp"])))
    run = OfflineRun(config, partitions=2)
    outputs = [o for line in ndjson(events).split(b"\n") for o in run.feed(line)]
    alerts = [o for o in outputs if isinstance(o, Alert)]
    fired = [a for a in alerts if a.state == "fired"]
    assert fired and all(a.timestamp.timestamp() * 1000 >= drop for a in fired), alerts
    first = fired[0]
    assert (first.timestamp.timestamp() * 1000 - drop) / MINUTE_MS < DAY
    assert first.method == "cusum" and first.resolution_delay == "30m"
    evaluator = run.alerts._rules[0]
    assert evaluator.times_to_convert  # the times to convert are observed from the attempts
    assert first.root_cause is not None
    top = first.root_cause.segments[0]
    assert (top.breakdown, top.value) == ("context.platform", "mobile") and top.share > 0.8
    assert "context.platform=mobile" in first.root_cause.summary
