"""The analysis arithmetic: histogram quantiles, the time-to-convert curve, the projected rate
(checked against seeded simulations of the model it assumes), sliding sums (against brute
force) and the channels table."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.measures.counters import TIME_TO_CONVERT_S, time_to_convert_bucket
from streams.core.measures.insights import (
    cdf,
    channel_rows,
    histogram,
    progress,
    project,
    quantile,
    sliding_grids,
    sliding_sums,
    time_to_convert,
)

MINUTE = 60_000


def _fields(times_ms: list[int], step: int = 1) -> dict[str, float]:
    fields: dict[str, float] = {}
    for t in times_ms:
        key = f"t:{step}:{time_to_convert_bucket(t)}"
        fields[key] = fields.get(key, 0) + 1
        fields[f"ts:{step}"] = fields.get(f"ts:{step}", 0) + t
    return fields


def test_buckets_are_inclusive_upper_bounds_then_inf() -> None:
    assert time_to_convert_bucket(0) == "10" and time_to_convert_bucket(10_000) == "10"
    assert time_to_convert_bucket(10_001) == "30"
    assert time_to_convert_bucket(604_800_000) == "604800"
    assert time_to_convert_bucket(604_800_001) == "inf"


def test_quantiles_land_in_the_right_bucket_and_close_to_the_truth() -> None:
    rng = random.Random(5)
    times = [int(rng.lognormvariate(12, 1.5)) for _ in range(20_000)]  # median e^12 ms = 2.7 min
    buckets = histogram(_fields(times), 1)
    exact = sorted(times)
    for q in (0.5, 0.9):
        estimate = quantile(buckets, q)
        truth = exact[int(q * len(exact))]
        assert estimate is not None and abs(estimate / truth - 1) < 0.15, (q, estimate, truth)
    summary = time_to_convert(_fields(times), ["view", "cart"])[0]
    assert summary["conversions"] == 20_000 and summary["mean_ms"] == pytest.approx(sum(times) / len(times))
    assert quantile(histogram({}, 1), 0.5) is None


def test_the_open_bucket_answers_its_lower_bound() -> None:
    buckets = histogram(_fields([10 * 86_400_000] * 3), 1)
    assert quantile(buckets, 0.9) == TIME_TO_CONVERT_S[-1] * 1000


def test_the_curve_is_monotone_from_0_to_1() -> None:
    curve = cdf(histogram(_fields([5_000, 50_000, 500_000, 5_000_000]), 1))
    values = [curve(t) for t in (0, 5_000, 10_000, 60_000, 600_000, 7_200_000, 10**12)]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 1
    assert curve(10_000) == pytest.approx(0.25)


def _simulate_cohort(rng: random.Random, n: int, p: float, mean_ms: float, horizon_ms: float) -> tuple:
    """n attempts opened uniformly over the horizon; each converts with probability p after an
    exponential time. Seen at the horizon: converted, still open (by age), and the truth."""
    converted, open_by_age, eventually = 0, [], 0
    for _ in range(n):
        age = rng.uniform(0, horizon_ms)
        converts = rng.random() < p
        eventually += converts
        if converts and rng.expovariate(1 / mean_ms) <= age:
            converted += 1
        else:
            open_by_age.append((age, 1))
    return converted, open_by_age, eventually


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_the_projection_recovers_the_eventual_rate_of_young_cohorts(p: float) -> None:
    """Seeded runs of the model the projection assumes: the attempts are young (the horizon is
    the mean time to convert), so the observed rate is about half the truth; the projection,
    with the curve measured on a separate steady-state sample, lands within a few points."""
    mean_ms = 3_600_000.0
    errors, observed_errors = [], []
    for seed in range(20):
        rng = random.Random(seed)
        curve_sample = [int(rng.expovariate(1 / mean_ms)) for _ in range(5_000)]
        curve = cdf(histogram(_fields(curve_sample), 1))
        converted, open_by_age, eventually = _simulate_cohort(rng, 2_000, p, mean_ms, mean_ms)
        projection = project(2_000, converted, open_by_age, curve)
        assert projection.rate is not None
        errors.append(projection.rate - eventually / 2_000)
        observed_errors.append(converted / 2_000 - eventually / 2_000)
    mean_error = sum(errors) / len(errors)
    assert abs(mean_error) < 0.03, errors
    assert max(abs(e) for e in errors) < 0.08, errors
    assert sum(observed_errors) / len(observed_errors) < -0.3 * p, "the observed rate is far too low"


def test_a_mature_cohort_projects_what_it_observed_and_nothing_open_means_no_change() -> None:
    curve = cdf(histogram(_fields([60_000] * 10), 1))
    assert project(100, 30, [(86_400_000.0, 70)], curve).rate == pytest.approx(0.3)
    assert project(100, 30, [], curve).rate == pytest.approx(0.3)
    assert project(0, 0, [], curve).rate is None


def test_progress_reconciles_each_step() -> None:
    cohorts = {
        0: {"e:0": 10, "e:1": 6, "d:0": 3, "d:0:step_timeout": 3, "e:2": 4, "d:1": 1, "d:1:excluded": 1},
        MINUTE: {"e:0": 5, "e:1": 1, "d:0": 1, "d:0:step_timeout": 1},
    }
    rows = progress(cohorts, MINUTE, 10 * MINUTE, ["a", "b", "c"], {})
    assert [(r["entered"], r.get("reached_next"), r["dropped"], r["in_progress"]) for r in rows] == [
        (15, 7, 4, 4),
        (7, 4, 1, 2),
        (4, None, 0, 0),
    ]
    assert rows[0]["dropped_by_reason"] == {"step_timeout": 4}
    assert rows[2]["completed"] == 4


@given(
    st.integers(1, 40),
    st.integers(1, 30),
    st.integers(1, 30),
    st.lists(st.integers(0, 9), min_size=200, max_size=200),
)
def test_sliding_sums_equal_brute_force(count: int, lo_buckets: int, width: int, values: list[int]) -> None:
    size = MINUTE
    origin = 100 * size  # grid bucket i starts at i * size
    first_end = origin + size
    lo, hi = -lo_buckets * size, (-lo_buckets + width) * size

    def bucket(start: int) -> int:
        return values[start // size % len(values)]

    grids = sliding_grids(first_end, count, size, lo, hi)
    reads = [
        [
            [float(sum(bucket(first + i * grid_size + j * size) for j in range(grid_size // size)))]
            for i in range(n)
        ]
        for first, n, grid_size in grids
    ]
    sums = sliding_sums(reads, count, size, lo, hi)
    for i in range(count):
        p = first_end + i * size
        assert sums[i][0] == sum(bucket(t) for t in range(p + lo, p + hi, size))


def test_channel_rows_split_and_totals() -> None:
    fields = {
        "s|channel=email": 10,
        "s|channel=email|visitor_type=new": 4,
        "s|channel=email|visitor_type=returning": 6,
        "cs:purchase|channel=email": 2,
        "cs:purchase|channel=email|visitor_type=returning": 2,
        "n:purchase|channel=email": 3,
        "v:purchase|channel=email": 30.5,
        "dt:purchase|channel=email": 3 * MINUTE,
        "mi|channel=email": 12,
        "cv|channel=email": 3,
        "pv|channel=email": 25,
        "dur|channel=email": 10 * MINUTE,
        "b|channel=email": 4,
        "s|landing_page=/": 10,
        "s|visitor_type=new": 4,
        "s|visitor_type=returning": 6,
    }
    rows, totals = channel_rows(fields, "channel", "purchase", split=False)
    assert rows == [
        {
            "channel": "email",
            "sessions": 10,
            "converting_sessions": 2,
            "conversion_rate": 0.2,
            "conversions": 3,
            "value": 30.5,
            "avg_decision_time_ms": MINUTE,
            "microconversions": 12,
            "micro_macro_ratio": 4.0,
            "avg_session_duration_ms": MINUTE,
            "pages_per_session": 2.5,
            "bounce_rate": 0.4,
        }
    ]
    assert totals["all"]["sessions"] == 10
    split, by_visitor = channel_rows(fields, "channel", "purchase", split=True)
    assert {(r["visitor_type"], r["sessions"], r["converting_sessions"]) for r in split} == {
        ("new", 4, 0),
        ("returning", 6, 2),
    }
    assert by_visitor["new"]["sessions"] == 4 and by_visitor["returning"]["sessions"] == 6
