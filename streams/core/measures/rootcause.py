"""What explains a drop: the breakdown values whose own rate fell, apart from a change of mix.

The conversions a window is missing are those it would have had at the baseline rate minus
those it had: M = N1 (r0 - r1). Per breakdown, with each value v's share of the entries s and
rate r, in the baseline (0) and in the window (1), that splits exactly (Adtributor, Bhagwan et
al. 2014, and the shift-share analyses it follows) into

    M = sum_v N1 (s0_v - s1_v) (r0_v - r0)     mix: more entries from values that convert worse
      + sum_v n1_v (r0_v - r1_v)               rate: a value converting worse than it used to

With several breakdowns, a value's rate can seem to fall only because its own mix over another
breakdown changed (more mobile entries from every source lowers every source's rate). So the
counts are kept per combination of values, and a value's rate effect is its window entries at
the baseline rates of their own combinations minus its conversions (direct standardization):
a pure change of mix then moves no value's rate effect, in any breakdown.

A value is named as falling only on its own evidence: at least `MIN_ENTERED` entries of it in
the window (and at most `MAX_ENTRIES_SHARE` of them), at least `MIN_SHARE` of the missing
conversions, and its window rate below its standardized baseline rate (below) by Fisher's
one-sided exact test at
`SIGNIFICANCE`, Bonferroni-corrected over every value of every breakdown tested. Otherwise no
single segment explains the drop, and the alert says so. A mix shift is named likewise when the
value's share of the entries rose significantly and it converts below the average.
"""

from __future__ import annotations

from collections.abc import Mapping

from streams.core.measures.stats import fisher_less
from streams.core.records.outputs import MixShift, RootCause, SegmentDrop

SIGNIFICANCE = 0.01
"""Family-wise: the chance that noise names any value, over all the values tested."""
MIN_ENTERED = 10
"""A value's own entries in the window before it can be named."""
MIN_SHARE = 0.1
"""A named value accounts for at least this share of the missing conversions."""
MAX_ENTRIES_SHARE = 0.9
"""A value with more of the window's entries than this is the whole step, not a segment of it."""
NO_SEGMENT = "no single segment explains it"

Counts = tuple[int, int]  # (entered, converted)
Combos = Mapping[tuple[str | None, ...], tuple[Counts, Counts]]
"""Per combination of the breakdowns' values: (window, baseline) counts."""


def _rate(counts: Counts) -> float | None:
    entered, converted = counts
    return min(converted, entered) / entered if entered else None


def _plus(a: Counts, b: Counts) -> Counts:
    return (a[0] + b[0], a[1] + min(b[1], b[0]))


def explain(breakdowns: list[str], combos: Combos) -> RootCause:
    """The root cause of a drop from the (window, baseline) counts of each combination of the
    breakdowns' values.

    A value's rate effect is measured against what its entries would have converted at the
    baseline rates of their own combinations (direct standardization), so a value whose rate
    only seems to fall because its mix over another breakdown changed is not named."""
    window_total: Counts = (0, 0)
    baseline_total: Counts = (0, 0)
    for window, baseline in combos.values():
        window_total, baseline_total = _plus(window_total, window), _plus(baseline_total, baseline)
    n1, x1 = window_total
    n0, x0 = baseline_total
    if not n1 or not n0:
        return RootCause(
            missing=0.0,
            segments=[],
            mix=[],
            significance=SIGNIFICANCE,
            min_entered=MIN_ENTERED,
            summary=NO_SEGMENT,
        )
    r0 = x0 / n0
    missing = n1 * r0 - x1
    marginals: list[dict[str | None, tuple[Counts, Counts, float]]] = [{} for _ in breakdowns]
    for combo, (window, baseline) in combos.items():
        for i, value in enumerate(combo):
            w, b, _ = marginals[i].get(value, ((0, 0), (0, 0), 0.0))
            marginals[i][value] = (_plus(w, window), _plus(b, baseline), 0.0)
    for combo, (window, baseline) in combos.items():  # expected conversions at own baseline rates
        for i, value in enumerate(combo):
            w, b, expected = marginals[i][value]
            own = _rate(baseline)
            fallback = _rate(b)
            rate = own if own is not None else (fallback if fallback is not None else r0)
            marginals[i][value] = (w, b, expected + window[0] * rate)
    tested = sum(1 for values in marginals for w, _, _ in values.values() if w[0] >= MIN_ENTERED)
    level = SIGNIFICANCE / max(1, tested)
    drops: list[SegmentDrop] = []
    shifts: list[MixShift] = []
    if missing > 0:
        for breakdown, values in zip(breakdowns, marginals, strict=True):
            for value, (window, baseline, expected) in values.items():
                if window[0] < MIN_ENTERED:
                    continue
                r1_v = window[1] / window[0]
                r0_v = _rate(baseline)
                own = r0 if r0_v is None else r0_v
                rate_effect = expected - window[1]
                s0, s1 = baseline[0] / n0, window[0] / n1
                mix_effect = n1 * (s0 - s1) * (own - r0)
                share = rate_effect / missing
                if share >= MIN_SHARE and s1 <= MAX_ENTRIES_SHARE and baseline[0]:
                    # against the baseline as large as it was, at the standardized rate
                    standardized = min(baseline[0], round(baseline[0] * expected / window[0]))
                    p = fisher_less(window[1], window[0], standardized, baseline[0])
                    if p <= level:
                        drops.append(
                            SegmentDrop(
                                breakdown=breakdown,
                                value=value,
                                share=share,
                                missing=rate_effect,
                                rate=r1_v,
                                baseline_rate=own,
                                entered=window[0],
                                baseline_entered=baseline[0],
                                p_value=p,
                            )
                        )
                if mix_effect / missing >= MIN_SHARE and s1 > s0:
                    p = fisher_less(n1 - window[0], n1, n0 - baseline[0], n0)  # the others' share fell
                    if p <= level:
                        shifts.append(
                            MixShift(
                                breakdown=breakdown,
                                value=value,
                                share=mix_effect / missing,
                                missing=mix_effect,
                                entries_share=s1,
                                baseline_entries_share=s0,
                                baseline_rate=own,
                                p_value=p,
                            )
                        )
    drops.sort(key=lambda d: (-d.share, d.breakdown, d.value or ""))
    shifts.sort(key=lambda s: (-s.share, s.breakdown, s.value or ""))
    return RootCause(
        missing=max(0.0, missing),
        segments=drops,
        mix=shifts,
        significance=SIGNIFICANCE,
        min_entered=MIN_ENTERED,
        summary=summarize(drops, shifts),
    )


def summarize(drops: list[SegmentDrop], shifts: list[MixShift]) -> str:
    parts = [
        f"{d.breakdown}={d.value}: {d.share:.0%} of the drop (rate {d.rate:.2f} vs {d.baseline_rate:.2f})"
        for d in drops
    ]
    if not parts:
        parts.append(NO_SEGMENT)
    parts += [
        f"traffic mix: more entries from {s.breakdown}={s.value} ({s.entries_share:.0%} of entries vs "
        f"{s.baseline_entries_share:.0%}; it converts at {s.baseline_rate:.2f}): {s.share:.0%} of the drop"
        for s in shifts
    ]
    return "; ".join(parts)
