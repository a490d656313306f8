"""The statistics against references written apart from them: exact rational sums for Fisher's
test, the score test inverted by bisection for Wilson, numerical integration for the mSPRT."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from statistics import NormalDist

import pytest

from streams.core.measures.stats import (
    MixtureSPRT,
    fisher_less,
    msprt_half_width,
    msprt_log_ratio,
    samples_to_detect,
    scan_look_level,
    wilson_interval,
    z_test_two_sided,
)

NORMAL = NormalDist()


def fisher_reference(x1: int, n1: int, x0: int, n0: int) -> float:
    """P(X <= x1) for X hypergeometric, summed exactly in rationals."""
    s, total = x1 + x0, n1 + n0
    denominator = math.comb(total, n1)
    return float(
        sum(
            Fraction(math.comb(s, k) * math.comb(total - s, n1 - k), denominator)
            for k in range(max(0, s - n0), x1 + 1)
        )
    )


def test_fisher_matches_the_exact_hypergeometric_sum() -> None:
    rng = random.Random(5)
    for _ in range(1_500):
        n1, n0 = rng.randint(1, 80), rng.randint(1, 400)
        x1, x0 = rng.randint(0, n1), rng.randint(0, n0)
        expected = fisher_reference(x1, n1, x0, n0)
        got = fisher_less(x1, n1, x0, n0)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-15), (x1, n1, x0, n0)


def test_fisher_edges_and_large_tables() -> None:
    assert fisher_less(0, 0, 5, 10) == 1.0 and fisher_less(3, 10, 0, 0) == 1.0
    assert fisher_less(10, 10, 0, 10) == 1.0, "the window above the baseline: no evidence of a drop"
    assert fisher_less(0, 10, 10, 10) == pytest.approx(1 / math.comb(20, 10))
    # a 2,000-entry window against a 200,000-entry baseline, both at 0.5: the sum stays short
    # and the answer sits near one half (a continuity-corrected normal tail as the check)
    p = fisher_less(1_000, 2_000, 100_000, 200_000)
    z = (1_000.5 - 1_000) / math.sqrt(2_000 * 0.25 * (1 - 2_000 / 202_000))
    assert p == pytest.approx(NORMAL.cdf(z), abs=2e-3)
    assert 0 < fisher_less(7, 30, 50_000, 100_000) < 0.003


def wilson_reference(x: int, n: int, level: float) -> tuple[float, float]:
    """The set of p where the score statistic |x - n p| / sqrt(n p (1 - p)) <= z, by bisection."""
    z = NORMAL.inv_cdf(0.5 + level / 2)

    def inside(p: float) -> bool:
        return abs(x - n * p) <= z * math.sqrt(n * p * (1 - p))

    def edge(outside: float, inner: float) -> float:
        for _ in range(100):
            mid = (outside + inner) / 2
            outside, inner = (outside, mid) if inside(mid) else (mid, inner)
        return inner

    centre = x / n if 0 < x < n else (0.5 / n if x == 0 else 1 - 0.5 / n)
    low = 0.0 if x == 0 else edge(0.0, centre)
    high = 1.0 if x == n else edge(1.0, centre)
    return low, high


@pytest.mark.parametrize(("x", "n"), [(0, 10), (10, 10), (3, 10), (7, 30), (480, 1_000), (1, 2)])
def test_wilson_interval_inverts_the_score_test(x: int, n: int) -> None:
    for level in (0.9, 0.95, 0.99):
        low, high = wilson_interval(x, n, level)
        ref_low, ref_high = wilson_reference(x, n, level)
        assert low == pytest.approx(ref_low, abs=1e-9) and high == pytest.approx(ref_high, abs=1e-9)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_z_test_reference() -> None:
    # 60/200 vs 40/200: pooled 0.25, se = sqrt(0.25 * 0.75 * 0.01) = 0.0433, z = 2.309
    assert z_test_two_sided(60, 200, 40, 200) == pytest.approx(
        2 * (1 - NORMAL.cdf(0.1 / 0.0433013)), rel=1e-4
    )
    assert z_test_two_sided(0, 0, 1, 2) == 1.0


def mixture_ratio_by_quadrature(d: float, variance: float, tau2: float, theta0: float) -> float:
    """Integral over theta ~ N(theta0, tau2) of N(d; theta, V) / N(d; theta0, V), numerically."""
    sd = math.sqrt(tau2)
    steps = 20_000
    lo, hi = theta0 - 12 * sd, theta0 + 12 * sd
    h = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        theta = lo + i * h
        weight = math.exp(-((theta - theta0) ** 2) / (2 * tau2)) / math.sqrt(2 * math.pi * tau2)
        ratio = math.exp(((d - theta0) ** 2 - (d - theta) ** 2) / (2 * variance))
        total += (0.5 if i in (0, steps) else 1.0) * weight * ratio
    return total * h


@pytest.mark.parametrize(
    ("d", "variance", "tau2", "theta0"),
    [(0.01, 1e-4, 4e-4, 0.0), (0.05, 2e-4, 2.5e-3, 0.0), (-0.02, 5e-5, 1e-4, 0.01), (0.0, 1e-3, 4e-4, 0.0)],
)
def test_msprt_ratio_is_the_normal_mixture(d: float, variance: float, tau2: float, theta0: float) -> None:
    assert math.exp(msprt_log_ratio(d, variance, tau2, theta0)) == pytest.approx(
        mixture_ratio_by_quadrature(d, variance, tau2, theta0), rel=1e-6
    )


def test_confidence_sequence_edges_are_where_the_ratio_reaches_one_over_alpha() -> None:
    variance, tau2, alpha = 2e-4, 4e-4, 0.05
    half = msprt_half_width(variance, tau2, alpha)
    d = 0.013
    for theta0 in (d - half, d + half):
        assert msprt_log_ratio(d, variance, tau2, theta0) == pytest.approx(math.log(1 / alpha))
    assert msprt_log_ratio(d, variance, tau2, d) < math.log(1 / alpha)


def test_sequential_p_value_only_falls_and_the_interval_only_narrows() -> None:
    test = MixtureSPRT(alpha=0.05, tau=0.02)
    rng = random.Random(3)
    x1 = x0 = n = 0
    history = []
    for _ in range(300):
        for _ in range(20):
            n += 1
            x1 += rng.random() < 0.12
            x0 += rng.random() < 0.10
        test.update(x1, n, x0, n)
        history.append((test.p_value, test.low, test.high))
    for (p0, lo0, hi0), (p1, lo1, hi1) in itertools.pairwise(history):
        assert p1 <= p0 and lo1 >= lo0 and hi1 <= hi0
    assert test.looks == 300 and test.low <= x1 / n - x0 / n <= test.high


def test_scan_level_lies_between_bonferroni_and_the_single_look() -> None:
    for confidence in (0.95, 0.99, 0.999):
        for looks in (1, 5, 15, 60, 1_440):
            level = scan_look_level(confidence, looks)
            assert (1 - confidence) / looks <= level <= 1 - confidence
    # u^2 (1 - Phi(u)) = 0.01 at the level found for a 60-minute window
    u = NORMAL.inv_cdf(1 - scan_look_level(0.99, 60))
    assert u * u * (1 - NORMAL.cdf(u)) == pytest.approx(0.01, rel=1e-6)


def test_a_mixing_sd_near_the_effect_needs_the_fewest_samples() -> None:
    p, effect = 0.1, 0.03
    unit = p * (1 - p) + (p + effect) * (1 - p - effect)
    needed = {tau: samples_to_detect(effect, unit, tau, 0.05) for tau in (0.005, 0.02, 0.05, 0.2)}
    assert min(needed, key=lambda tau: needed[tau]) in (0.02, 0.05)
    assert needed[0.02] < needed[0.005] and needed[0.02] < needed[0.2]
