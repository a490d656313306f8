"""Breakdown values are capped in the counters: the first `cap` values of a day keep their own
fields, later ones count as `(other)`, so browser version times country cannot grow the counter
fields without bound; totals are unchanged by the cap."""

from __future__ import annotations

from collections import Counter
from typing import Any

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.event import from_epoch_ms
from streams.core.measures.cardinality import OTHER, ValueCap, cap_values, capped_output
from streams.core.measures.counters import increments

CONFIG = compile_config(
    parse_config(
        """
version: 1
goals: [{name: purchase, match: {event: purchase}, value: properties.value}]
funnels:
  - name: checkout
    steps:
      - {name: view, match: {event: product_view}}
      - {name: buy, match: {goal: purchase}}
    breakdowns: [audience.browser_version, properties.sku]
"""
    )
)
DAY = 1_710_288_000_000  # 2024-03-13T00:00Z


def iso(ms: int) -> str:
    return from_epoch_ms(ms).isoformat()


def session(n: int, day: int = 0) -> dict[str, Any]:
    return {
        "type": "session",
        "id": f"s{n}",
        "anonymous_id": f"a{n}",
        "session_id": f"s{n}",
        "timestamp": iso(DAY + day * 86_400_000 + n),
        "landing_page": f"/p/{n}",
        "channel": "Direct",
        "page_views": 2,
        "duration_ms": 1000,
        "events": 2,
        "microconversions": 0,
        "conversions": [],
        "audience": {"browser": f"Browser {n}", "country": "GB", "device": "desktop"},
    }


def micro(n: int) -> dict[str, Any]:
    return {
        "type": "micro",
        "kind": "milestone",
        "id": f"m{n}",
        "anonymous_id": f"a{n}",
        "timestamp": iso(DAY + n),
        "funnel": "checkout",
        "step": "view",
        "step_index": 0,
        "name": "view",
        "started_at": iso(DAY + n),
        "breakdowns": {"audience.browser_version": f"Chrome {n}", "properties.sku": f"sku-{n}"},
    }


def test_the_first_values_of_a_day_are_kept_then_other() -> None:
    cap = ValueCap(3)
    assert [cap.admit(1, "d", v) for v in "abcab"] == list("abcab")
    assert cap.admit(1, "d", "z") == OTHER and cap.admit(1, "d", None) is None
    assert cap.admit(2, "d", "z") == "z"  # a new day starts afresh
    assert cap.admit(1, "other-dim", "z") == "z"  # each dimension has its own values


def test_counter_fields_stay_bounded_and_totals_stay_exact() -> None:
    cap = ValueCap(5)
    outputs = [session(n) for n in range(200)] + [micro(n) for n in range(200)]
    uncapped = [op for o in outputs for op in increments(o, CONFIG, 60_000)]
    capped = [op for o in outputs for op in increments(o, CONFIG, 60_000, cap=cap)]
    day_key = f"c:86400:{DAY}"

    def fields(ops: list[Any], key: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for op in ops:
            if op.key == key:
                total[op.field] += op.amount
        return total

    raw, kept = fields(uncapped, day_key), fields(capped, day_key)
    assert len(raw) > 1_600 and len(kept) < 150
    assert kept["s|audience.browser=(other)"] == 195
    assert kept["s|landing_page=(other)"] == 195
    for dim in ("landing_page", "audience.browser", "audience.country"):
        per_dim = sum(v for f, v in kept.items() if f.startswith(f"s|{dim}=") and f.count("|") == 1)
        assert per_dim == 200  # every session still counted once per dimension
    funnel = fields(capped, f"f:checkout:86400:{DAY}")
    assert funnel["e:0"] == 200 and funnel["e:0|properties.sku=(other)"] == 195
    assert len([f for f in funnel if "properties.sku=" in f]) == 6


def test_capped_output_caps_every_value_the_counters_break_down_by() -> None:
    cap = ValueCap(1)
    capped_output(session(1), cap, DAY)
    second = capped_output(session(2), cap, DAY)
    assert second["landing_page"] == OTHER and second["channel"] == "Direct"
    assert second["audience"] == {"browser": OTHER, "country": "GB", "device": "desktop"}


def test_a_table_shows_the_top_values_and_the_rest_as_other() -> None:
    assert cap_values({"a": 5, "b": 9, "c": 1, "d": 1}, 2) == {"b": 9, "a": 5, OTHER: 2}
    assert cap_values({"a": 1}, 2) == {"a": 1}
