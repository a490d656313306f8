"""The simulator's opt-in variant split: a variant per person on every event, the traffic
otherwise unchanged, and the planted lift on the treated variant's step."""

from __future__ import annotations

from collections import Counter
from typing import Any

from streams.tools.simulate import Simulator, VariantSplit


def person(event: dict[str, Any]) -> str:
    return str(event.get("anonymous_id") or event["user_id"]).removesuffix("-b")


def test_without_the_variant_the_traffic_is_what_it_was() -> None:
    plain = Simulator(seed=4, users=300, days=2).events()
    split = Simulator(seed=4, users=300, days=2, split=VariantSplit()).events()
    assert len(plain) == len(split), "no lift: the same events"
    variants: dict[str, set[str]] = {}
    for before, after in zip(plain, split, strict=True):
        variant = after["properties"].pop("variant")
        assert before == after
        variants.setdefault(person(before), set()).add(variant)
    assert all(len(v) == 1 for v in variants.values()), "one variant per person, on all their events"
    shares = Counter(v for (v,) in variants.values())
    assert set(shares) == {"control", "treatment"}
    assert abs(shares["control"] - shares["treatment"]) < 0.2 * len(variants)


def test_the_lift_applies_to_the_treated_variant_only() -> None:
    split = VariantSplit(step="add_to_cart", lift=1.8)
    events = Simulator(seed=9, users=3_000, days=3, split=split).events()
    counts: Counter[tuple[str, str]] = Counter()
    for event in events:
        if event["event"] in ("product_view", "add_to_cart"):
            counts[(event["properties"]["variant"], event["event"])] += 1
    rate = {v: counts[(v, "add_to_cart")] / counts[(v, "product_view")] for v in ("control", "treatment")}
    assert abs(rate["control"] - 0.45) < 0.03, rate  # FunnelRates.add_to_cart
    assert abs(rate["treatment"] - 0.81) < 0.03, rate
