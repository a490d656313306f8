"""Which counters an output increments, and how bucket sums become a funnel report."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.measures.counters import (
    Op,
    breakdown_values,
    bucket_of,
    buckets_between,
    decision_bucket,
    increments,
    plan_buckets,
    pseudonymizer,
    step_reports,
    sum_hashes,
)
from streams.settings import DEFAULT_FUNNELS

CONFIG = compile_config(load_config(DEFAULT_FUNNELS))
MINUTE = 60_000
T = "2024-03-13T10:21:14.500Z"
B = f"60:{bucket_of(1710325274500, MINUTE)}"
H = f"3600:{bucket_of(1710325274500, 3_600_000)}"


def test_a_milestone_counts_entered_by_breakdown_and_unique_users() -> None:
    output = {
        "type": "micro",
        "kind": "milestone",
        "funnel": "checkout",
        "step_index": 2,
        "user_id": "u1",
        "timestamp": T,
        "breakdowns": {
            "context.platform": "ios",
            "campaign.source": None,
            "landing_page": "/p/1",
            "channel": "search",
        },
    }
    ops = increments(output, CONFIG, MINUTE)
    assert Op("h", f"f:checkout:{B}", "e:2", 1) in ops
    assert Op("h", f"f:checkout:{B}", "e:2|context.platform=ios", 1) in ops
    assert Op("h", f"f:checkout:{B}", "e:2|campaign.source=", 1) in ops
    assert Op("p", f"u:checkout:2:{B}", "u1", 1) in ops
    assert Op("h", f"g:{B}", "mi", 1) in ops and Op("m", "meta", "latest", 1710325274500) in ops
    assert Op("h", f"f:checkout:{H}", "e:2", 1) in ops, "the hour rollup counts too"
    dims = len(CONFIG.funnels_by_name["checkout"].breakdowns)  # the base field and one per breakdown
    assert sum(op.key.startswith("f:checkout:86400:") for op in ops) == 1 + dims, "and the day rollup"


def test_pseudonymized_counters_hold_no_identity_and_count_each_identity_once() -> None:
    pseudonym = pseudonymizer(b"secret key")
    macro = {
        "type": "macro",
        "goal": "purchase",
        "user_id": "alice@example.com",
        "anonymous_id": "anon-1",
        "timestamp": T,
        "decision_time_ms": 1,
        "breakdowns": {},
    }
    ops = increments(macro, CONFIG, MINUTE, pseudonym)
    text = repr(ops)
    assert "alice" not in text and "anon-1" not in text
    uniques = {op.field for op in ops if op.kind == "p"}
    assert uniques == {pseudonym("alice@example.com")}
    assert pseudonym("alice@example.com") == pseudonymizer(b"secret key")("alice@example.com")
    assert pseudonym("alice@example.com") != pseudonymizer(b"other key")("alice@example.com")
    assert pseudonym("alice@example.com") != pseudonym("bob@example.com")
    plain = increments(macro, CONFIG, MINUTE)
    assert [op for op in plain if op.kind != "p"] == [op for op in ops if op.kind != "p"]


def test_dropoffs_stalls_goals_and_sessions() -> None:
    dropoff = increments(
        {
            "type": "dropoff",
            "funnel": "checkout",
            "step_index": 1,
            "reason": "window_expired",
            "user_id": "u",
            "timestamp": T,
            "breakdowns": {},
        },
        CONFIG,
        MINUTE,
    )
    assert Op("h", f"f:checkout:{B}", "d:1", 1) in dropoff
    assert Op("h", f"f:checkout:{B}", "d:1:window_expired", 1) in dropoff
    stalled = increments(
        {
            "type": "stalled",
            "funnel": "checkout",
            "step_index": 1,
            "user_id": "u",
            "timestamp": T,
            "breakdowns": {},
        },
        CONFIG,
        MINUTE,
    )
    assert Op("h", f"f:checkout:{B}", "st:1", 1) in stalled
    macro = increments(
        {
            "type": "macro",
            "goal": "purchase",
            "value": 59.9,
            "decision_time_ms": 7 * MINUTE,
            "user_id": "u",
            "timestamp": T,
            "channel": "email",
            "landing_page": "/",
            "breakdowns": {"context.platform": "web"},
        },
        CONFIG,
        MINUTE,
    )
    assert Op("h", f"g:{B}", "n:purchase", 1) in macro
    assert Op("f", f"g:{B}", "v:purchase", 59.9) in macro
    assert Op("h", f"g:{B}", "n:purchase|channel=email", 1) in macro
    assert Op("h", f"g:{B}", "dth:purchase:15", 1) in macro
    assert Op("p", f"ug:purchase:{B}", "u", 1) in macro
    session = increments(
        {
            "type": "session",
            "user_id": "u",
            "timestamp": T,
            "page_views": 3,
            "duration_ms": 5_000,
            "landing_page": "/sale",
            "channel": "direct",
        },
        CONFIG,
        MINUTE,
    )
    assert Op("h", f"s:{B}", "pv|landing_page=/sale", 3) in session
    assert Op("h", f"s:{B}", "dur|channel=direct", 5_000) in session


def test_types_not_counted() -> None:
    assert increments({"type": "deadletter", "timestamp": T}, CONFIG, MINUTE) == []
    assert increments({"type": "alert", "timestamp": T}, CONFIG, MINUTE) == []
    unknown = increments(
        {
            "type": "micro",
            "kind": "milestone",
            "funnel": "gone",
            "step_index": 0,
            "user_id": "u",
            "timestamp": T,
        },
        CONFIG,
        MINUTE,
    )
    assert {op.key for op in unknown} == {"meta", f"g:{B}", f"g:{H}", "g:86400:1710288000000"}


def test_buckets_and_windows_align_to_the_bucket_size() -> None:
    assert buckets_between(0, 3 * MINUTE, MINUTE) == [0, MINUTE, 2 * MINUTE]
    assert buckets_between(MINUTE // 2, 3 * MINUTE, MINUTE) == [MINUTE, 2 * MINUTE]
    assert buckets_between(MINUTE, MINUTE, MINUTE) == []


def test_plans_use_the_coarsest_buckets_that_fit() -> None:
    hour, day = 3_600_000, 86_400_000
    plan = plan_buckets(day - 2 * MINUTE, 2 * day + hour + 3 * MINUTE, MINUTE)
    assert plan == [
        f"60:{day - 2 * MINUTE}",
        f"60:{day - MINUTE}",
        f"86400:{day}",
        f"3600:{2 * day}",
        f"60:{2 * day + hour}",
        f"60:{2 * day + hour + MINUTE}",
        f"60:{2 * day + hour + 2 * MINUTE}",
    ]
    assert plan_buckets(30_000, 3 * MINUTE, MINUTE) == [f"60:{MINUTE}", f"60:{2 * MINUTE}"]
    assert plan_buckets(5, 5, MINUTE) == []


@given(start=st.integers(0, 3 * 86_400_000), length=st.integers(0, 3 * 86_400_000))
def test_plans_cover_exactly_the_finest_buckets(start: int, length: int) -> None:
    day = 86_400_000
    covered: list[int] = []
    for item in plan_buckets(start, start + length, MINUTE):
        size_s, begin = item.split(":")
        covered += range(int(begin), int(begin) + int(size_s) * 1000, MINUTE)
    assert covered == buckets_between(start, start + length, MINUTE)
    assert len(plan_buckets(start, start + length, MINUTE)) <= 2 * (60 + 24) + length // day + 2


def test_decision_buckets() -> None:
    assert decision_bucket(30_000) == "1" and decision_bucket(MINUTE * 61) == "360"
    assert decision_bucket(MINUTE * 100_000) == "inf"


def test_reports_from_summed_fields() -> None:
    fields = sum_hashes(
        [
            {
                b"e:0": b"10",
                b"e:1": b"4",
                b"d:0": b"3",
                b"d:0:window_expired": b"3",
                b"e:0|context.platform=ios": b"6",
                b"e:1|context.platform=ios": b"1",
            },
            {"e:0": "10", "e:1": "6"},
        ]
    )
    steps = step_reports(["view", "cart"], fields, {0: 18, 1: 9})
    assert [(s.entered, s.unique_users) for s in steps] == [(20, 18), (10, 9)]
    assert steps[1].rate_from_previous == 0.5 and steps[0].rate_from_previous is None
    assert steps[0].dropped_by_reason == {"window_expired": 3}
    assert breakdown_values(fields, "context.platform") == ["ios"]
    ios = step_reports(["view", "cart"], fields, {}, suffix="|context.platform=ios")
    assert [s.entered for s in ios] == [6, 1]
    assert step_reports(["view", "cart"], {}, {})[1].rate_overall is None
