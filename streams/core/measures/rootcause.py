"""What explains a drop: the breakdown values whose own rate fell, apart from a change of mix.

The conversions a window is missing are those it would have had at the baseline rate minus
those it had: M = N1 (r0 - r1). Per breakdown, with each value v's share of the entries s and
rate r, in the baseline (0) and in the window (1), that splits exactly (Adtributor, Bhagwan et
al. 2014, and the shift-share analyses it follows) into

    M = sum_v N1 (s0_v - s1_v) (r0_v - r0)     mix: more entries from values that convert worse
      + sum_v n1_v (r0_v - r1_v)               rate: a value converting worse than it used to

A value is named as falling only on its own evidence: at least `MIN_ENTERED` entries of it in
the window, a share of the missing conversions at least `CONCENTRATION` times its share of the
entries, and its window rate below its baseline rate by Fisher's one-sided exact test at
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
CONCENTRATION = 1.5
"""... and for at least this many times its share of the entries: a value that carries most of
the traffic (or a drop spread evenly over every value) explains nothing about where it is."""
NO_SEGMENT = "no single segment explains it"

Counts = tuple[int, int]  # (entered, converted)
Segments = Mapping[str, Mapping[str | None, tuple[Counts, Counts]]]
"""Per breakdown, per value: (window, baseline) counts."""


def _rate(counts: Counts) -> float | None:
    entered, converted = counts
    return min(converted, entered) / entered if entered else None


def explain(segments: Segments) -> RootCause:
    """The root cause of a drop from each breakdown's (window, baseline) counts per value."""
    tested = sum(
        1 for values in segments.values() for (window, _) in values.values() if window[0] >= MIN_ENTERED
    )
    level = SIGNIFICANCE / max(1, tested)
    drops: list[SegmentDrop] = []
    shifts: list[MixShift] = []
    missing_total = 0.0
    for breakdown, values in segments.items():
        n1 = sum(w[0] for w, _ in values.values())
        x1 = sum(min(w[1], w[0]) for w, _ in values.values())
        n0 = sum(b[0] for _, b in values.values())
        x0 = sum(min(b[1], b[0]) for _, b in values.values())
        if not n1 or not n0:
            continue
        r0 = x0 / n0
        missing = n1 * r0 - x1
        missing_total = max(missing_total, missing)
        if missing <= 0:
            continue
        for value, (window, baseline) in values.items():
            r0_v = _rate(baseline)
            r1_v = _rate(window)
            if r1_v is None:
                continue
            own = r0 if r0_v is None else r0_v
            rate_effect = window[0] * (own - r1_v)
            s0, s1 = baseline[0] / n0, window[0] / n1
            mix_effect = n1 * (s0 - s1) * (own - r0)
            if window[0] < MIN_ENTERED:
                continue
            share = rate_effect / missing
            if share >= MIN_SHARE and share >= CONCENTRATION * s1 and baseline[0]:
                p = fisher_less(
                    min(window[1], window[0]), window[0], min(baseline[1], baseline[0]), baseline[0]
                )
                if p <= level:
                    drops.append(
                        SegmentDrop(
                            breakdown=breakdown,
                            value=value,
                            share=rate_effect / missing,
                            missing=rate_effect,
                            rate=r1_v,
                            baseline_rate=own,
                            entered=window[0],
                            baseline_entered=baseline[0],
                            p_value=p,
                        )
                    )
            if mix_effect / missing >= MIN_SHARE and s1 > s0:
                # the value's share rose when the others' share fell
                p = fisher_less(n1 - window[0], n1, n0 - baseline[0], n0)
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
        missing=max(0.0, missing_total),
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
