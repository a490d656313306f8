"""The journey state machine, scenario by scenario, in event time."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

import orjson
import pytest

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.journeys.engine import Engine
from streams.core.journeys.journey import (
    STATE_VERSION,
    Attempt,
    Journey,
    JourneyMachine,
    Session,
    write_state_version,
)
from streams.core.records.outputs import OutputEvent
from tests.helpers import click

BASE = """
version: 1
session_timeout: 30m
late_tolerance: 10m
goals:
  - {name: purchase, match: {event: purchase}, value: properties.value}
funnels:
  - name: checkout
    scope: {scope}
    order: {order}
    window: {window}
    stalled_after: 20m
    steps:
      - {{name: view, match: {{event: product_view}}}}
      - {{name: cart, match: {{event: add_to_cart}}, within: {within}}}
      - {{name: pay, match: {{event: payment_details}}}}
      - {{name: buy, match: {{goal: purchase}}}}
    exclusions:
      - match: {{event: refund}}
    breakdowns: [context.platform, channel, landing_page]
micro:
  - {{name: newsletter, match: {{event: newsletter_signup}}}}
  - {{name: tutorial, match: {{event: video_play, properties.category: tutorial}}}}
"""


def machine(
    order: str = "sequential", scope: str = "user", window: str = "2h", within: str = "none"
) -> JourneyMachine:
    text = BASE.replace("{scope}", scope).replace("{order}", order).replace("{window}", window)
    text = text.replace("{within}", within).replace("{{", "{").replace("}}", "}")
    return JourneyMachine(compile_config(parse_config(text)))


def run(m: JourneyMachine, *events: Any, until: str | None = None) -> tuple[Journey, list[OutputEvent]]:
    journey: Journey | None = None
    out: list[OutputEvent] = []
    for e in events:
        journey, fresh = m.apply(journey, e)
        out += fresh
    assert journey is not None
    if until is not None:
        out += m.advance(journey, click("x", until).ts_ms)
    return journey, out


def kinds(outputs: list[OutputEvent]) -> list[str]:
    labels = []
    for o in outputs:
        d = o.model_dump()
        labels.append(
            ":".join(
                str(x)
                for x in (d["type"], d.get("step") or d.get("name") or d.get("goal"), d.get("reason"))
                if x is not None
            )
        )
    return labels


def test_a_full_checkout() -> None:
    journey, out = run(
        machine(),
        click("page_view", "10:00", page={"url": "https://s.ex/p/1?utm_source=google&utm_medium=cpc"}),
        click("product_view", "10:01", context={"platform": "ios"}),
        click("newsletter_signup", "10:02"),
        click("add_to_cart", "10:03"),
        click("payment_details", "10:04"),
        click("purchase", "10:05", properties={"value": 59.9, "currency": "EUR"}),
    )
    assert kinds(out) == [
        "micro:view",
        "micro:newsletter",
        "micro:cart",
        "micro:pay",
        "micro:buy",
        "macro:purchase",
    ]
    macro = out[-1].model_dump()
    assert macro["value"] == 59.9 and macro["currency"] == "EUR"
    assert macro["decision_time_ms"] == 5 * 60_000
    assert macro["micro_path"] == ["view", "newsletter", "cart", "pay", "buy"]
    assert (macro["landing_page"], macro["channel"]) == ("/p/1", "Paid Search")
    assert macro["page_views"] == 1 and macro["sessions"] == 1
    assert out[-2].model_dump()["final"] is True
    assert out[0].model_dump()["breakdowns"] == {
        "context.platform": "ios",
        "channel": "Paid Search",
        "landing_page": "/p/1",
    }
    assert journey.attempts == {} and journey.path == []


def test_sequential_ignores_steps_out_of_order_and_counts_each_once() -> None:
    _, out = run(
        machine(),
        click("add_to_cart", "10:00"),
        click("product_view", "10:01"),
        click("payment_details", "10:02"),
        click("product_view", "10:03"),
        click("add_to_cart", "10:04"),
    )
    assert kinds(out) == ["micro:view", "micro:cart"]


def test_strict_breaks_on_a_step_out_of_order_and_restarts() -> None:
    _, out = run(
        machine(order="strict"),
        click("product_view", "10:00"),
        click("payment_details", "10:01"),
        click("product_view", "10:02"),
        click("add_to_cart", "10:03"),
    )
    assert kinds(out) == ["micro:view", "dropoff:view:out_of_order", "micro:view", "micro:cart"]


def test_strict_a_step_one_event_starts_a_new_chain_within_the_attempt() -> None:
    """With `entry: best` (the default) the attempt goes on: the new chain can still progress.
    `entry: first` ends it out of order and opens another (tests/core/journeys/test_funnel_semantics.py)."""
    journey, out = run(
        machine(order="strict"),
        click("product_view", "10:00"),
        click("add_to_cart", "10:01"),
        click("product_view", "10:02"),
    )
    assert kinds(out) == ["micro:view", "micro:cart"]
    assert journey.attempts["checkout"].reached == 1


def test_any_order_completes_when_every_step_is_done() -> None:
    _, out = run(
        machine(order="any"),
        click("payment_details", "10:00"),
        click("add_to_cart", "10:01"),
        click("payment_details", "10:02"),
        click("product_view", "10:03"),
        click("purchase", "10:04"),
    )
    assert kinds(out) == ["micro:pay", "micro:cart", "micro:view", "micro:buy", "macro:purchase"]
    assert [o.model_dump()["step_index"] for o in out[:4]] == [2, 1, 0, 3]


def test_window_expiry_drops_the_attempt_and_allows_re_entry() -> None:
    m = machine(window="1h")
    _, out = run(
        m, click("product_view", "10:00"), click("add_to_cart", "10:10"), click("payment_details", "11:30")
    )
    # deadlines fire in event-time order: stalled 10:30, session end 10:40, window 11:00
    assert kinds(out) == [
        "micro:view",
        "micro:cart",
        "stalled:cart",
        "session",
        "dropoff:cart:window_expired",
    ]
    dropoff = out[-1].model_dump()
    assert dropoff["timestamp"].isoformat() == "2024-03-13T11:00:00+00:00"
    assert dropoff["time_in_funnel_ms"] == 10 * 60_000
    _, again = run(m, click("product_view", "10:00"), click("product_view", "11:30"))
    assert kinds(again) == [
        "micro:view",
        "stalled:view",
        "session",
        "dropoff:view:window_expired",
        "micro:view",
    ]


def test_no_window_means_no_expiry() -> None:
    _, out = run(
        machine(window="none"), click("product_view", "10:00"), click("add_to_cart", "2024-03-20T10:00:00Z")
    )
    assert kinds(out)[-1] == "micro:cart"
    assert "dropoff:view:window_expired" not in kinds(out)


def test_step_within() -> None:
    m = machine(within="10m")
    _, late = run(m, click("product_view", "10:00"), click("add_to_cart", "10:11"))
    assert kinds(late) == ["micro:view", "dropoff:view:step_timeout"]
    _, in_time = run(m, click("product_view", "10:00"), click("add_to_cart", "10:09"))
    assert kinds(in_time) == ["micro:view", "micro:cart"]


def test_exclusion_ends_the_attempt() -> None:
    _, out = run(
        machine(), click("product_view", "10:00"), click("refund", "10:01"), click("add_to_cart", "10:02")
    )
    assert kinds(out) == ["micro:view", "dropoff:view:excluded"]
    _, nothing = run(machine(), click("refund", "10:00"))
    assert nothing == []


def test_session_scope_drops_at_the_end_of_the_session() -> None:
    m = machine(scope="session", window="none")
    _, out = run(m, click("product_view", "10:00"), click("add_to_cart", "10:45"))
    assert kinds(out) == ["micro:view", "stalled:view", "dropoff:view:session_ended", "session"]
    _, user_scope = run(machine(window="none"), click("product_view", "10:00"), click("add_to_cart", "10:45"))
    assert kinds(user_scope) == ["micro:view", "stalled:view", "session", "micro:cart"]


def test_sessions_split_on_inactivity_campaign_and_session_id() -> None:
    m = machine()
    _, out = run(
        m,
        click("page_view", "10:00", page={"url": "https://s.ex/a", "referrer": "https://www.google.com/"}),
        click("page_view", "10:10"),
        click("page_view", "10:50"),  # 40 min gap: new session
        click("page_view", "10:51", campaign={"source": "newsletter", "medium": "email"}),  # new campaign
        click("page_view", "10:52", session_id="explicit-1"),  # new session id
        click("page_view", "10:53", session_id="explicit-1"),
    )
    sessions = [o.model_dump() for o in out if o.type == "session"]
    assert [(s["events"], s["channel"], s["landing_page"]) for s in sessions] == [
        (2, "Organic Search", "/a"),
        (1, "Direct", None),
        (1, "Email", None),
    ]
    assert sessions[0]["duration_ms"] == 10 * 60_000 and sessions[0]["page_views"] == 2
    assert len({s["id"] for s in sessions}) == 3


def test_duplicate_event_ids_are_applied_once() -> None:
    first = click("product_view", "10:00")
    _, out = run(machine(), first, first, click("add_to_cart", "10:01"), first)
    assert kinds(out) == ["micro:view", "micro:cart"]


def test_late_events_within_tolerance_join_the_session_and_later_ones_are_reported() -> None:
    m = machine()
    _, out = run(
        m,
        click("page_view", "10:30"),
        click("product_view", "10:25", session_id="other"),
        click("add_to_cart", "10:05"),
    )
    assert kinds(out) == ["micro:view", "deadletter:late_event"]
    late = out[-1].model_dump()
    assert late["reason"] == "late_event" and "more than the late tolerance (10m)" in late["detail"]


def test_advance_fires_deadlines_in_order_whatever_the_jump() -> None:
    m = machine(window="1h", scope="session")
    events = [click("product_view", "10:00"), click("add_to_cart", "10:05")]
    _, step_by_step = run(m, *events)
    journey, _ = run(m, *events)
    for minute in range(10, 200, 7):
        step_by_step += m.advance(journey, click("x", f"{10 + minute // 60}:{minute % 60:02d}").ts_ms)
    _, one_jump = run(m, *events, until="13:30")
    assert kinds(step_by_step) == kinds(one_jump)
    assert kinds(one_jump)[2:] == ["stalled:cart", "dropoff:cart:session_ended", "session"]


def test_state_round_trips_and_stays_small() -> None:
    journey, _ = run(
        machine(),
        click("page_view", "10:00", page={"url": "https://s.ex/p/1"}),
        click("product_view", "10:01", context={"platform": "web"}),
        click("add_to_cart", "10:02"),
    )
    raw = journey.dumps()
    assert Journey.loads(raw) == journey
    assert len(raw) < 1024


def version_4(journey: Journey) -> bytes:
    """The journey as version 4 wrote it: its fields as they are, in order."""
    write_state_version(4)
    try:
        return journey.dumps()
    finally:
        write_state_version(STATE_VERSION)


def test_a_busy_users_remembered_ids_stay_compact_and_version_1_states_still_load() -> None:
    clicks = [click("page_view", f"10:{i // 30:02d}:{i % 30 * 2:02d}") for i in range(240)]
    journey, _ = run(machine(), *clicks)
    assert len(journey.seen) == 240  # ten minutes' worth: all still within the tolerance
    raw = journey.dumps()
    assert Journey.loads(raw) == journey
    assert len(raw) < 240 * 16 + 512  # 20-digit fingerprints and epoch seconds took twice that

    version_1 = orjson.loads(version_4(journey))
    version_1[0] = 1
    version_1[1 + [f.name for f in fields(Journey)].index("seen")] = journey.seen
    version_1[1 + [f.name for f in fields(Journey)].index("seen_at")] = journey.seen_at
    assert Journey.loads(orjson.dumps(version_1)) == journey


def test_the_written_out_constructors_and_stored_values_follow_the_dataclass_fields() -> None:
    """`Session`, `Attempt` and `Journey` write their `__init__` and stored values out (mypyc
    compiles those, not the generated ones): the fields' order, names and defaults, as declared."""
    journey, _ = run(
        machine(window="1h"),
        click("page_view", "10:00", page={"url": "https://s.ex/p/1"}),
        click("product_view", "10:01"),
        click("add_to_cart", "10:02"),
    )
    session, (attempt,) = journey.session, journey.attempts.values()
    assert session is not None
    stored = orjson.loads(version_4(journey))[1:]  # version 5 is the same, compacted (test_versions)
    names = [f.name for f in fields(Journey) if f.compare]
    for name, value in zip(names, stored, strict=True):
        if name == "session":
            assert value == session.values() == [getattr(session, f.name) for f in fields(Session)]
        elif name == "attempts":
            assert value == {"checkout": [getattr(attempt, f.name) for f in fields(Attempt)]}
        elif name not in {"seen", "seen_at"}:  # packed (the round trip above checks them)
            assert value == getattr(journey, name)
    for record in (journey, session, attempt):
        cls = type(record)
        given = {f.name: getattr(record, f.name) for f in fields(cls) if f.compare}
        assert cls(**given) == record
        bare = cls(*[given[f.name] for f in fields(cls) if MISSING is f.default is f.default_factory])
        for f in fields(cls):
            if f.default is not MISSING:
                assert getattr(bare, f.name) == f.default
            elif f.default_factory is not MISSING:
                assert getattr(bare, f.name) == f.default_factory()


def test_goal_value_must_be_a_number() -> None:
    _, out = run(machine(), click("purchase", "10:00", properties={"value": "lots"}))
    assert out[-1].model_dump()["value"] is None


def test_secondary_micro_with_field_equality() -> None:
    _, out = run(
        machine(),
        click("video_play", "10:00", properties={"category": "tutorial"}),
        click("video_play", "10:01", properties={"category": "ad"}),
    )
    assert kinds(out) == ["micro:tutorial"]


def test_an_attempt_of_a_funnel_gone_from_the_config_ends_as_definition_changed() -> None:
    journey, _ = run(machine(), click("product_view", "10:00"))
    journey.attempts["gone"] = journey.attempts["checkout"]
    m = machine()
    out = m.advance(journey, click("x", "10:01").ts_ms)
    assert [(o.type, o.funnel, o.reason) for o in out] == [("dropoff", "gone", "definition_changed")]  # type: ignore[attr-defined]
    assert "gone" not in journey.attempts


@pytest.mark.parametrize("partitions", [1, 3])
def test_engine_fires_deadlines_for_idle_journeys_when_the_source_moves_on(partitions: int) -> None:
    m = machine(window="1h")
    engine = Engine(m.config, {}, partitions, expected_sources=["s"])
    partition = engine.partition_of("quiet")
    # a user's own event waits until its source has got that far: an anonymous journey linked
    # to the user at an earlier time could still be on its way from another partition
    assert engine.process(click("product_view", "10:00", user="quiet")) == []
    assert kinds(engine.observe(partition, "s", click("x", "10:00").ts_ms)) == ["micro:view"]
    assert engine.observe(partition, "s", click("x", "10:05").ts_ms) == []
    fired = engine.observe(partition, "s", click("x", "12:00").ts_ms)
    assert kinds(fired) == ["stalled:view", "session", "dropoff:view:window_expired"]
    assert engine.pending_deadlines(partition) == 0


def test_engine_waits_for_every_expected_source() -> None:
    m = machine(window="1h")
    engine = Engine(m.config, {}, 1, expected_sources=["a", "b"])
    engine.process(click("product_view", "10:00"))
    assert engine.observe(0, "a", click("x", "23:00").ts_ms) == []
    assert engine.watermark(0) is None
    fired = engine.observe(0, "b", click("x", "12:00").ts_ms)
    assert "dropoff:view:window_expired" in kinds(fired)
    assert engine.watermark(0) == click("x", "11:50").ts_ms
    assert engine.forget_source(0, "b") == [] and engine.watermark(0) == click("x", "22:50").ts_ms


def test_a_source_that_went_idle_first_still_moves_event_time_once_every_source_is_idle() -> None:
    m = machine(window="1h")
    engine = Engine(m.config, {}, 1, expected_sources=["a", "b"])
    engine.process(click("product_view", "10:00"))
    assert engine.observe(0, "a", click("x", "12:00").ts_ms) == []  # b not heard from yet
    assert engine.forget_source(0, "a") == [] and engine.watermark(0) is None
    fired = engine.forget_source(0, "b")
    assert "dropoff:view:window_expired" in kinds(fired)
    assert engine.watermark(0) == click("x", "11:50").ts_ms


def test_engine_rebuilds_its_deadline_index_from_the_store() -> None:
    m = machine(window="1h")
    store: dict[str, bytes] = {}
    engine = Engine(m.config, store, 1, ["s"])
    engine.process(click("product_view", "10:00"))
    engine.flush()  # the end of a run: its journeys are written to the store
    restarted = Engine(m.config, store, 1, ["s"])
    assert restarted.rebuild_deadlines(0, list(store)) == 1
    assert "dropoff:view:window_expired" in kinds(restarted.observe(0, "s", click("x", "12:00").ts_ms))
