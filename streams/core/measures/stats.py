"""Pure statistics for alert rules and live experiments: no I/O, no state beyond the caller's.

Alerts (`fisher_less`): is a window's conversion rate lower than the baseline's? The window holds
tens of entries where it matters, and the baseline one or two orders of magnitude more. A pooled
two-proportion z-test is a large-sample approximation that, at tens of entries and rates near 0
or 1, rejects more often than its nominal level, which is the very failure (paging on noise) the
test is there to prevent. Fisher's exact test conditions on the total number of conversions and
reads the window's count off the hypergeometric law: at one look its false-alarm rate is at most
its level at every sample size (conservative when the counts are small: discreteness), and its
tail is a short sum computed with `math.lgamma` and a term ratio, with no scipy. A rule looks
every minute at overlapping windows, so the level of each look is set by `scan_look_level` for
`confidence` to hold per window length of watching, not per look.

Experiments (`MixtureSPRT`): a treatment's rate against the control's, looked at after every
minute. A fixed-horizon p-value looked at that often crosses 0.05 by chance in a large share of
A/A tests; the mixture sequential probability ratio test (Johari, Koomen, Pekelis and Walsh,
"Always valid inference", 2017/2022) gives a p-value and a confidence sequence that are valid
at every look at once. The difference of the two observed rates is treated as a normal
observation of theta = p_variant - p_control with variance V (the binomial variances, each rate
smoothed by one success and one failure so that an arm with no conversions yet has a
variance); the likelihood ratio of H(theta0) mixed over theta ~ N(theta0, tau^2) is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * (d - theta0)^2 / (2 V (V + tau^2)))

and by Ville's inequality P(sup_t Lambda_t >= 1 / alpha) <= alpha under theta0. The always-valid
p-value is the running minimum of min(1, 1 / Lambda_t(0)); the confidence sequence is the running
intersection of {theta0 : Lambda_t(theta0) < 1 / alpha}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

_NORMAL = NormalDist()
_TAIL_TOLERANCE = 1e-17


def normal_quantile(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def wilson_interval(successes: int, trials: int, level: float) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate at a two-sided `level` (e.g. 0.95): unlike
    the textbook rate +/- z * se, it stays inside [0, 1] and is not empty at 0 or n successes."""
    if trials <= 0:
        return (0.0, 1.0)
    z = normal_quantile(0.5 + level / 2)
    z2 = z * z
    rate = successes / trials
    centre = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_less(x1: int, n1: int, x0: int, n0: int) -> float:
    """One-sided Fisher exact p-value that the first rate (x1 of n1) is lower than the second
    (x0 of n0): P(X <= x1) where X, the first group's conversions given x1 + x0 in all, is
    hypergeometric. 1.0 when either group is empty (no evidence).

    The smaller tail is summed from x1 away from the mode (the law is log-concave, so the terms
    fall geometrically) until a term no longer changes the sum: a few dozen terms whatever n."""
    if n1 <= 0 or n0 <= 0:
        return 1.0
    if not (0 <= x1 <= n1 and 0 <= x0 <= n0):
        raise ValueError(f"counts out of range: {x1}/{n1}, {x0}/{n0}")
    s = x1 + x0
    total = n1 + n0
    low, high = max(0, s - n0), min(n1, s)

    def log_pmf(k: int) -> float:
        return _log_choose(s, k) + _log_choose(total - s, n1 - k) - _log_choose(total, n1)

    if x1 * total <= n1 * s:  # at or below the mean: the lower tail is the small one
        term = math.exp(log_pmf(x1))
        tail, k = term, x1
        while k > low and term > tail * _TAIL_TOLERANCE:
            term *= k * (n0 - s + k) / ((s - k + 1) * (n1 - k + 1))
            tail += term
            k -= 1
        return min(1.0, tail)
    if x1 >= high:
        return 1.0
    term = math.exp(log_pmf(x1 + 1))
    upper, k = term, x1 + 1
    while k < high and term > upper * _TAIL_TOLERANCE:
        term *= (s - k) * (n1 - k) / ((k + 1) * (n0 - s + k + 1))
        upper += term
        k += 1
    return max(0.0, 1.0 - upper)


@lru_cache(maxsize=256)
def scan_look_level(confidence: float, looks_per_window: int) -> float:
    """The level each look must pass so that a sliding window judged `looks_per_window` times
    per window length raises a false alarm in about 1 - confidence of window lengths.

    Consecutive looks share all but one minute of their window, so a noise excursion is seen by
    many looks in a row: testing each at 1 - confidence fires 5 to 8 times that often (measured
    in tests/core/measures/test_alert_confidence.py). The standardised moving sum is locally like an
    Ornstein-Uhlenbeck process (correlation 1 - |s| / window), for which Pickands' theorem
    gives about u^2 (1 - Phi(u)) excursions above u per window length; the level solves
    u^2 (1 - Phi(u)) = 1 - confidence (continuous watching: conservative for minute looks).
    It is never stricter than Bonferroni over the looks of one window, which bounds the expected
    false alarms by (1 - confidence) per window length exactly."""
    target = 1 - confidence
    low, high = 0.0, 12.0
    for _ in range(80):
        u = (low + high) / 2
        if u * u * (1 - _NORMAL.cdf(u)) > target:
            low = u
        else:
            high = u
    scan = 1 - _NORMAL.cdf(high)
    return min(target, max(scan, target / max(1, looks_per_window)))


def z_test_two_sided(x1: int, n1: int, x0: int, n0: int) -> float:
    """The fixed-horizon pooled two-proportion z-test's two-sided p-value: valid at one look
    decided in advance, and only there (the experiments tests show what repeated looks do)."""
    if n1 <= 0 or n0 <= 0:
        return 1.0
    pooled = (x1 + x0) / (n1 + n0)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n0)
    if variance <= 0:
        return 1.0
    z = (x1 / n1 - x0 / n0) / math.sqrt(variance)
    return 2 * (1 - _NORMAL.cdf(abs(z)))


def difference_variance(x1: int, n1: int, x0: int, n0: int) -> float:
    """Variance of (x1/n1 - x0/n0), each rate smoothed by one success and one failure."""
    p1 = (x1 + 1) / (n1 + 2)
    p0 = (x0 + 1) / (n0 + 2)
    return p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0


def msprt_log_ratio(difference: float, variance: float, tau2: float, theta0: float = 0.0) -> float:
    """log Lambda: the normal-mixture likelihood ratio of theta ~ N(theta0, tau2) against theta0."""
    total = variance + tau2
    return 0.5 * math.log(variance / total) + tau2 * (difference - theta0) ** 2 / (2 * variance * total)


def msprt_half_width(variance: float, tau2: float, alpha: float) -> float:
    """Half the width of {theta0 : Lambda(theta0) < 1 / alpha}, centred on the observed difference."""
    total = variance + tau2
    return math.sqrt(variance * total / tau2 * (2 * math.log(1 / alpha) + math.log(total / variance)))


@dataclass
class MixtureSPRT:
    """One treatment against the control, updated with cumulative counts at every look.

    `p_value` only falls and `low`/`high` only narrow (running minimum and intersection), so
    what was shown once stays true; both are valid simultaneously over all looks."""

    alpha: float
    tau: float
    p_value: float = 1.0
    low: float = -1.0
    high: float = 1.0
    looks: int = 0

    def update(self, x1: int, n1: int, x0: int, n0: int) -> None:
        """x1 of n1 converted in the treatment, x0 of n0 in the control, so far."""
        if n1 <= 0 or n0 <= 0:
            return
        self.looks += 1
        difference = x1 / n1 - x0 / n0
        variance = difference_variance(x1, n1, x0, n0)
        tau2 = self.tau * self.tau
        log_ratio = msprt_log_ratio(difference, variance, tau2)
        self.p_value = min(self.p_value, 1.0 if log_ratio <= 0 else math.exp(-log_ratio))
        half = msprt_half_width(variance, tau2, self.alpha)
        low, high = max(self.low, difference - half), min(self.high, difference + half)
        if low > high:  # drift can make the intersection empty: keep the point where it closed
            low = high = (low + high) / 2
        self.low, self.high = low, high

    @property
    def significant(self) -> bool:
        return self.p_value <= self.alpha


def samples_to_detect(effect: float, variance_unit: float, tau: float, alpha: float) -> float:
    """Per-arm sample size at which an exact effect reaches the mSPRT boundary (the observed
    difference equal to the effect): used to document the cost of a mistuned mixing tau.
    `variance_unit` is p0(1-p0) + p1(1-p1), so V = variance_unit / n."""
    log_bound = math.log(1 / alpha)
    tau2 = tau * tau
    low, high = 1.0, 1e12
    for _ in range(200):
        n = math.sqrt(low * high)
        if msprt_log_ratio(effect, variance_unit / n, tau2) >= log_bound:
            high = n
        else:
            low = n
    return high
