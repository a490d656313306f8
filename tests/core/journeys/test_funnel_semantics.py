"""Funnel semantics (issue 15): best chains as ClickHouse's windowFunnel and PostHog count them,
`strict` and `any` defined precisely, held properties, attribution, and old states that go on.

The hypothesis properties compare the engine with `window_funnel_reference`, written apart from
it, per person and funnel, for any event sequence, window and `within`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine
from streams.core.journeys.journey import Journey, JourneyMachine
from streams.core.measures.counters import counter_name, increments
from streams.core.records.outputs import OutputEvent
from tests.core.journeys.window_funnel_reference import (
    any_attempts,
    best_attempts,
    first_attempts,
    furthest_sequential,
    furthest_strict,
)

STEPS = ["product_view", "add_to_cart", "payment_details", "purchase"]
NOISE = ["page_view", "newsletter_signup"]
START = datetime(2024, 3, 13, tzinfo=UTC)
MS = {"none": None, "10m": 600_000, "30m": 1_800_000, "1h": 3_600_000, "3h": 10_800_000, "1d": 86_400_000}


def config(
    order: str = "sequential",
    entry: str = "best",
    window: str = "1h",
    within_cart: str = "none",
    within_pay: str = "none",
    scope: str = "user",
    extra: str = "",
    exclusions: bool = False,
) -> CompiledConfig:
    excluded = "    exclusions: [{match: {event: refund}}]\n" if exclusions else ""
    return compile_config(
        parse_config(f"""
version: 1
session_timeout: 30m
goals: [{{name: purchase, match: {{event: purchase}}}}]
funnels:
  - name: f
    order: {order}
    entry: {entry}
    scope: {scope}
    window: {window}
    stalled_after: 20m
    steps:
      - {{name: product_view, match: {{event: product_view}}}}
      - {{name: add_to_cart, match: {{event: add_to_cart}}, within: {within_cart}}}
      - {{name: payment_details, match: {{event: payment_details}}, within: {within_pay}}}
      - {{name: purchase, match: {{goal: purchase}}}}
    breakdowns: [context.platform]
{excluded}{extra}""")
    )


_ids = iter(range(10**9))


def click(name: str, at: str, user: str = "u1", **fields: Any) -> ClickEvent:
    """`at` is H:MM or H:MM:SS(.fff) on 2024-03-13."""
    clock, _, millis = at.partition(".")
    parts = [int(p) for p in clock.split(":")] + [0]
    moment = START + timedelta(
        hours=parts[0], minutes=parts[1], seconds=parts[2], milliseconds=int(millis or 0)
    )
    body = {"event_id": f"t{next(_ids)}", "event": name, "user_id": user, "timestamp": moment.isoformat()}
    return ClickEvent.model_validate({**body, **fields})


def run(
    cfg: CompiledConfig, *events: ClickEvent, until: str | None = None
) -> tuple[Journey, list[OutputEvent]]:
    machine = JourneyMachine(cfg)
    journey: Journey | None = None
    out: list[OutputEvent] = []
    for e in events:
        journey, fresh = machine.apply(journey, e)
        out += fresh
    assert journey is not None
    if until is not None:
        out += machine.advance(journey, click("x", until).ts_ms)
    return journey, out


def funnel_kinds(outputs: list[OutputEvent]) -> list[str]:
    """Funnel outputs only: micro:<step>, dropoff:<step>:<reason>, stalled:<step>."""
    labels = []
    for o in outputs:
        d = o.model_dump()
        if d.get("funnel") != "f":
            continue
        labels.append(":".join(str(x) for x in (d["type"], d["step"], d.get("reason")) if x is not None))
    return labels


# ---- scenarios -----------------------------------------------------------------------------


def test_the_issue_example_a_second_view_re_anchors_the_window() -> None:
    events = (click("product_view", "0:00"), click("product_view", "0:20"), click("add_to_cart", "0:40"))
    _, best = run(config(window="30m"), *events, until="3:00")
    assert funnel_kinds(best) == [
        "micro:product_view",
        "micro:add_to_cart",
        "dropoff:add_to_cart:window_expired",
    ]
    dropoff = next(o.model_dump() for o in best if o.type == "dropoff")
    # the chain that reached add_to_cart started at 0:20: it could go on until 0:50
    assert dropoff["timestamp"] == START + timedelta(minutes=50)
    assert dropoff["started_at"] == START and dropoff["time_in_funnel_ms"] == 40 * 60_000
    _, first = run(config(window="30m", entry="first"), *events, until="3:00")
    assert funnel_kinds(first) == [
        "micro:product_view",
        "stalled:product_view",
        "dropoff:product_view:window_expired",
    ]


def test_the_attempt_drops_only_when_no_chain_can_extend() -> None:
    cfg = config(window="30m")
    journey, _ = run(cfg, click("product_view", "0:00"), click("product_view", "0:20"))
    machine = JourneyMachine(cfg)
    assert machine.next_deadline(journey) == click("x", "0:40").ts_ms  # the stall, 20m after 0:20
    assert machine.advance(journey, click("x", "0:45").ts_ms)[0].type == "stalled"
    assert machine.next_deadline(journey) == click("x", "0:50").ts_ms  # not 0:30: the 0:20 chain
    assert funnel_kinds(machine.advance(journey, click("x", "0:51").ts_ms)) == [
        "dropoff:product_view:window_expired"
    ]


def test_a_later_step_refreshes_the_chain_so_within_is_met() -> None:
    """Greedy "earliest next step" misses it: the second cart is within 10m of the payment."""
    events = (
        click("product_view", "0:00"),
        click("add_to_cart", "0:05"),
        click("add_to_cart", "0:50"),
        click("payment_details", "0:55"),
    )
    _, best = run(config(window="2h", within_pay="10m"), *events)
    assert funnel_kinds(best) == [
        "micro:product_view",
        "micro:add_to_cart",
        "stalled:add_to_cart",
        "micro:payment_details",
    ]
    _, first = run(config(window="2h", within_pay="10m", entry="first"), *events)
    assert funnel_kinds(first) == [
        "micro:product_view",
        "micro:add_to_cart",
        "dropoff:add_to_cart:step_timeout",
    ]


def test_window_bounds_are_inclusive() -> None:
    cfg = config(window="30m")
    _, on_time = run(cfg, click("product_view", "0:00"), click("add_to_cart", "0:30"))
    assert funnel_kinds(on_time)[-1] == "micro:add_to_cart"
    _, late = run(cfg, click("product_view", "0:00"), click("add_to_cart", "0:30:00.001"))
    assert funnel_kinds(late)[-1] == "dropoff:product_view:window_expired"
    within = config(window="1d", within_cart="10m")
    _, on_time = run(within, click("product_view", "0:00"), click("add_to_cart", "0:10"))
    assert funnel_kinds(on_time)[-1] == "micro:add_to_cart"


def test_events_of_one_millisecond_count_in_step_order_whatever_their_arrival() -> None:
    cart = click("add_to_cart", "0:00:00.500")
    view = click("product_view", "0:00:00.500")
    _, out = run(config(), cart, view)
    micros = [o.model_dump() for o in out if o.type == "micro"]
    assert [(m["step"], m["event_id"]) for m in micros] == [
        ("product_view", view.event_id),
        ("add_to_cart", view.event_id),  # reached when its step 1 came: reported with that event
    ]
    _, out = run(
        config(), click("purchase", "0:01"), click("payment_details", "0:01"), click("product_view", "0:01")
    )
    assert funnel_kinds(out) == ["micro:product_view"]  # no add_to_cart at all
    _, out = run(config(), click("add_to_cart", "0:01"), click("product_view", "0:01:00.001"))
    assert funnel_kinds(out) == ["micro:product_view"]  # a millisecond earlier is earlier


def test_events_that_served_a_completed_attempt_serve_no_other() -> None:
    names = ["product_view", "add_to_cart", "payment_details", "purchase", "product_view"]
    _, out = run(config(), *(click(name, "0:01") for name in names))
    assert funnel_kinds(out) == [
        "micro:product_view",
        "micro:add_to_cart",
        "micro:payment_details",
        "micro:purchase",
        "micro:product_view",  # a new attempt, which the millisecond's cart does not advance
    ]


def test_one_event_is_one_step_of_a_chain() -> None:
    cfg = compile_config(
        parse_config("""
version: 1
funnels:
  - name: f
    steps:
      - {name: any_page, match: {event: page_view}}
      - {name: checkout_page, match: {event: page_view, url: "/checkout*"}}
""")
    )
    checkout: dict[str, Any] = {"page": {"url": "https://s.ex/checkout"}}
    _, once = run(cfg, click("page_view", "0:00", **checkout))
    assert funnel_kinds(once) == ["micro:any_page"]
    _, twice = run(cfg, click("page_view", "0:00", **checkout), click("page_view", "0:01", **checkout))
    assert funnel_kinds(twice) == ["micro:any_page", "micro:checkout_page"]


def test_an_exclusion_ends_every_chain() -> None:
    _, out = run(
        config(exclusions=True),
        click("product_view", "0:00"),
        click("product_view", "0:10"),
        click("refund", "0:15"),
        click("add_to_cart", "0:20"),
    )
    assert funnel_kinds(out) == ["micro:product_view", "dropoff:product_view:excluded"]


def test_progress_of_any_chain_restarts_the_stall_clock() -> None:
    _, out = run(
        config(window="1d"),
        click("product_view", "0:00"),
        click("add_to_cart", "0:05"),
        click("product_view", "0:20"),
        until="2:00",
    )
    stalls = [o.model_dump() for o in out if o.type == "stalled"]
    assert [(s["step"], s["timestamp"]) for s in stalls] == [("add_to_cart", START + timedelta(minutes=40))]


def test_strict_keeps_the_chain_a_step_one_event_starts() -> None:
    events = (
        click("product_view", "0:00"),
        click("add_to_cart", "0:01"),
        click("product_view", "0:02"),
        click("add_to_cart", "0:03"),
        click("add_to_cart", "0:04"),  # a repeat of the chain's last step keeps it
        click("payment_details", "0:05"),
    )
    _, best = run(config(order="strict"), *events)
    assert funnel_kinds(best) == ["micro:product_view", "micro:add_to_cart", "micro:payment_details"]
    _, first = run(config(order="strict", entry="first"), *events)
    assert funnel_kinds(first) == [
        "micro:product_view",
        "micro:add_to_cart",
        "dropoff:add_to_cart:out_of_order",
        "micro:product_view",
        "micro:add_to_cart",
        "micro:payment_details",
    ]


@pytest.mark.parametrize("order", ["sequential", "strict"])
def test_each_step_says_when_its_chain_reached_the_step_before(order: str) -> None:
    """`previous_at` (the step-to-step times the counters sum): the time of the step the event
    extended, also for a strict funnel's last step, whose chain is not kept after it."""
    _, out = run(
        config(order=order),
        click("product_view", "0:00"),
        click("add_to_cart", "0:01"),
        click("payment_details", "0:03"),
        click("purchase", "0:07"),
    )
    micro = [o.model_dump() for o in out if o.type == "micro" and o.model_dump().get("funnel") == "f"]
    assert [(m["step"], m["previous_at"]) for m in micro] == [
        ("product_view", None),
        ("add_to_cart", click("x", "0:00").timestamp),
        ("payment_details", click("x", "0:01").timestamp),
        ("purchase", click("x", "0:03").timestamp),
    ]


def test_strict_drops_out_of_order_when_every_chain_is_broken() -> None:
    _, out = run(
        config(order="strict"),
        click("product_view", "0:00"),
        click("add_to_cart", "0:01"),
        click("purchase", "0:02"),  # skips payment: the only chain breaks
        click("payment_details", "0:03"),
    )
    assert funnel_kinds(out) == [
        "micro:product_view",
        "micro:add_to_cart",
        "dropoff:add_to_cart:out_of_order",
    ]


def test_any_order_keeps_one_window_from_the_attempts_first_step() -> None:
    cfg = config(order="any", window="1h")
    _, out = run(
        cfg,
        click("add_to_cart", "0:00"),
        click("product_view", "0:50"),
        click("payment_details", "1:10"),
        click("purchase", "1:20"),
    )
    assert funnel_kinds(out) == [
        "micro:add_to_cart",
        "stalled:add_to_cart",
        "micro:product_view",
        "dropoff:add_to_cart:window_expired",  # the furthest step index done
        "micro:payment_details",
        "micro:purchase",
    ]


# ---- hold and attribution ------------------------------------------------------------------

HELD = "    hold: [properties.product_id]\n    max_held_attempts: 2\n"


def product(name: str, at: str, product_id: str | None, **fields: Any) -> ClickEvent:
    properties = {"product_id": product_id} if product_id is not None else {}
    return click(name, at, properties=properties, **fields)


def test_held_attempts_share_the_value_and_the_oldest_is_evicted() -> None:
    cfg = config(window="1d", extra=HELD, exclusions=True)
    _, out = run(
        cfg,
        product("product_view", "0:00", "p1"),
        product("product_view", "0:01", "p2"),
        product("add_to_cart", "0:02", "p1"),
        product("add_to_cart", "0:03", None),  # no value: no attempt can take it
        product("payment_details", "0:04", "p2"),  # p2 has no cart yet
        product("product_view", "0:05", "p3"),  # a third value: p1, the oldest, is evicted
        product("refund", "0:06", "p2"),  # ends p2 only
    )
    outputs = [o.model_dump() for o in out if o.model_dump().get("funnel") == "f"]
    assert [(o["type"], o["step"], o.get("reason"), o["breakdowns"]) for o in outputs][:5] == [
        ("micro", "product_view", None, {"context.platform": None}),
        ("micro", "product_view", None, {"context.platform": None}),
        ("micro", "add_to_cart", None, {"context.platform": None}),
        ("dropoff", "add_to_cart", "evicted", {"context.platform": None}),
        ("micro", "product_view", None, {"context.platform": None}),
    ]
    assert [(o["type"], o["step"], o.get("reason")) for o in outputs[5:]] == [
        ("dropoff", "product_view", "excluded")
    ]
    held = [o for o in outputs if o["type"] == "dropoff"]
    assert held[0]["started_at"] == START and held[1]["started_at"] == START + timedelta(minutes=1)


def test_an_exclusion_without_the_held_value_ends_every_held_attempt() -> None:
    _, out = run(
        config(window="1d", extra=HELD, exclusions=True),
        product("product_view", "0:00", "p1"),
        product("product_view", "0:01", "p2"),
        product("refund", "0:02", None),
    )
    assert funnel_kinds(out)[2:] == ["dropoff:product_view:excluded", "dropoff:product_view:excluded"]


def test_attribution_at_a_named_step_is_unknown_before_it() -> None:
    cfg = config(window="1h", extra="    attribution: {step: add_to_cart}\n")
    _, out = run(
        cfg,
        click("product_view", "0:00", context={"platform": "web"}),
        click("add_to_cart", "0:01", context={"platform": "ios"}),
        click("product_view", "0:02", context={"platform": "android"}),
        until="2:00",
    )
    funnel = [o.model_dump() for o in out if o.model_dump().get("funnel") == "f"]
    assert [(o["type"], o["step"], o["breakdowns"]["context.platform"]) for o in funnel] == [
        ("micro", "product_view", None),
        ("micro", "add_to_cart", "ios"),
        ("stalled", "add_to_cart", "ios"),
        ("dropoff", "add_to_cart", "ios"),
    ]
    _, before = run(cfg, click("product_view", "0:00", context={"platform": "web"}), until="2:00")
    assert [o.model_dump()["breakdowns"] for o in before if o.type == "dropoff"] == [
        {"context.platform": None}
    ]


def test_attribution_must_name_a_step() -> None:
    with pytest.raises(ValueError, match="has no step 'basket'"):
        config(extra="    attribution: {step: basket}\n")


# ---- state -------------------------------------------------------------------------------

# A journey written by the engine before issue 15 (STATE_VERSION 2): user u1, in an open session
# since 10:00, an attempt at `checkout` that reached add_to_cart (step 1) at 10:05 from a
# product_view at 10:01, one remembered event id.
V2_JOURNEY = (
    b'[2,"u1",null,1710324000000,"/p/1","direct",1710324300000,2,1,1,'
    b'[1,"s-1",1710324000000,1710324300000,"/p/1","direct",null,1,3,2,[]],'
    b'{"f":[2,1710324060000,1710324300000,1,3,"s-1",{"context.platform":"web"},false]},'
    b'["product_view","add_to_cart"],"AAAAAAAAAAA=",[0]]'
)


@pytest.mark.parametrize("version", [1, 2])
def test_a_journey_stored_before_best_chains_loads_and_continues(version: int) -> None:
    raw = V2_JOURNEY
    if version == 1:
        state = orjson.loads(raw)
        state[0], state[-2], state[-1] = 1, [0], [1710324300]
        raw = orjson.dumps(state)
    journey = Journey.loads(raw)
    attempt = journey.attempts["f"]
    assert (attempt.reached, attempt.chains) == (1, [])
    cfg = config(window="2h", within_pay="30m")
    machine = JourneyMachine(cfg)
    assert machine.next_deadline(journey) == click("x", "10:25").ts_ms  # stalled_after: 20m
    out = machine.apply(journey, click("payment_details", "10:30"))[1]
    assert [(o.model_dump()["step"], o.model_dump()["breakdowns"]) for o in out if o.type == "micro"] == [
        ("payment_details", {"context.platform": "web"})
    ]
    fired = machine.advance(journey, click("x", "13:00").ts_ms)
    dropoff = [o.model_dump() for o in fired if o.type == "dropoff"]
    assert [(d["step"], d["reason"], d["timestamp"]) for d in dropoff] == [
        ("payment_details", "window_expired", START + timedelta(hours=12, minutes=1))
    ]
    assert Journey.loads(journey.dumps()) == journey


def test_chains_cost_two_short_integers_per_step() -> None:
    journey, _ = run(
        config(window="1d"),
        click("product_view", "0:00"),
        click("add_to_cart", "0:01"),
        click("product_view", "0:02"),
        click("add_to_cart", "0:03"),
        click("payment_details", "0:04"),
        click("product_view", "0:05"),
    )
    attempt = journey.attempts["f"]
    assert attempt.chains == [300_000, 300_000, 120_000, 180_000, 120_000, 240_000]
    assert Journey.loads(journey.dumps()) == journey


# ---- properties against the reference --------------------------------------------------------


@st.composite
def clickstreams(draw: st.DrawFn, products: bool = False, max_events: int = 40) -> list[dict[str, Any]]:
    """Events of 1-3 users in time order (ties included), gaps from 0 to hours, some re-sent."""
    count = draw(st.integers(1, max_events))
    at = START
    events: list[dict[str, Any]] = []
    for i in range(count):
        at += timedelta(seconds=draw(st.sampled_from([0, 0, 5, 60, 300, 300, 600, 1200, 1800, 3600, 9000])))
        user = draw(st.sampled_from(["ann", "ann", "ann", "bob", "cid"]))
        body: dict[str, Any] = {
            "event_id": f"e{i}",
            "event": draw(st.sampled_from(STEPS + STEPS + NOISE + ["refund"])),
            "user_id": user,
            "timestamp": at.isoformat(),
        }
        if products:
            body["properties"] = {"product_id": draw(st.sampled_from(["p1", "p2", "p3", None]))}
            body["context"] = {"platform": draw(st.sampled_from(["web", "ios"]))}
        events.append(body)
        if draw(st.integers(0, 9)) == 0:
            events.append(dict(draw(st.sampled_from(events))))  # an at-least-once redelivery
    return events


def engine_outputs(
    cfg: CompiledConfig, events: list[dict[str, Any]], flush: bool = True
) -> tuple[list[dict[str, Any]], Engine]:
    engine = Engine(cfg, {}, 1, expected_sources=["s"])
    out: list[OutputEvent] = []
    latest = 0
    for body in events:
        event = ClickEvent.model_validate(body)
        latest = max(latest, event.ts_ms)
        out += engine.process(event, 0)
        out += engine.observe(0, "s", latest)
    if flush:
        out += engine.observe(0, "s", latest + 400 * 86_400_000)
    engine.flush()  # the journeys reach the store (read by the tests) at the end of a run
    return [o.model_dump(mode="json") for o in out], engine


def unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    return [e for e in events if not (e["event_id"] in seen or seen.add(e["event_id"]))]  # type: ignore[func-returns-value]


def step_events(
    events: list[dict[str, Any]], user: str, product_id: str | None = None
) -> list[tuple[int, int]]:
    """The person's step events for the reference: (epoch ms, step index), arrival order."""
    chosen = []
    for e in unique(events):
        if e["user_id"] != user or e["event"] not in STEPS:
            continue
        if product_id is not None and (e.get("properties") or {}).get("product_id") != product_id:
            continue
        chosen.append(
            (int(datetime.fromisoformat(e["timestamp"]).timestamp() * 1000), STEPS.index(e["event"]))
        )
    return chosen


def furthest(outputs: list[dict[str, Any]]) -> dict[str, int]:
    reached: dict[str, int] = defaultdict(lambda: -1)
    for o in outputs:
        if o["type"] == "micro" and o.get("funnel") == "f":
            reached[o["user_id"]] = max(reached[o["user_id"]], o["step_index"])
    return reached


def within_list(within_cart: str, within_pay: str) -> list[int | None]:
    return [None, MS[within_cart], MS[within_pay], None]


common = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
windows = st.sampled_from(["none", "10m", "30m", "1h", "3h"])
withins = st.sampled_from(["none", "10m", "1h"])


@common
@given(events=clickstreams(), window=windows, within_cart=withins, within_pay=withins)
def test_sequential_reaches_what_window_funnel_counts(
    events: list[dict[str, Any]], window: str, within_cart: str, within_pay: str
) -> None:
    outputs, _ = engine_outputs(config("sequential", "best", window, within_cart, within_pay), events)
    reached = furthest(outputs)
    for user in {e["user_id"] for e in events}:
        expected = furthest_sequential(
            step_events(events, user), 4, MS[window], within_list(within_cart, within_pay)
        )
        assert reached[user] == expected, (user, step_events(events, user))


def attempt_reports(outputs: list[dict[str, Any]], user: str) -> list[tuple[str, int, int, str]]:
    reports = []
    for o in outputs:
        if o.get("funnel") != "f" or o["user_id"] != user:
            continue
        if o["type"] == "micro":
            reports.append(("micro", o["step_index"], int(o["final"]), ""))
        elif o["type"] == "dropoff":
            at = int(datetime.fromisoformat(o["timestamp"]).timestamp() * 1000)
            reports.append(("dropoff", o["step_index"], at, o["reason"]))
    return reports


@common
@given(events=clickstreams(), window=windows, within_cart=withins, within_pay=withins)
def test_sequential_attempts_report_and_drop_off_as_the_reference_says(
    events: list[dict[str, Any]], window: str, within_cart: str, within_pay: str
) -> None:
    """Attempt boundaries: each step reported once per attempt, a drop-off exactly when (and
    why) the last chain that could extend no longer can."""
    outputs, _ = engine_outputs(config("sequential", "best", window, within_cart, within_pay), events)
    within = within_list(within_cart, within_pay)
    for user in {e["user_id"] for e in events}:
        expected = best_attempts(step_events(events, user), 4, MS[window], within)
        assert attempt_reports(outputs, user) == expected, (user, step_events(events, user))


@common
@given(events=clickstreams(), window=windows, within_cart=withins, within_pay=withins)
def test_strict_reaches_what_posthogs_strict_funnel_counts(
    events: list[dict[str, Any]], window: str, within_cart: str, within_pay: str
) -> None:
    outputs, _ = engine_outputs(config("strict", "best", window, within_cart, within_pay), events)
    reached = furthest(outputs)
    for user in {e["user_id"] for e in events}:
        expected = furthest_strict(
            step_events(events, user), 4, MS[window], within_list(within_cart, within_pay)
        )
        assert reached[user] == expected, (user, step_events(events, user))


def reported(outputs: list[dict[str, Any]], user: str) -> list[tuple[int, bool]]:
    return [
        (o["step_index"], o["final"])
        for o in outputs
        if o["type"] == "micro" and o.get("funnel") == "f" and o["user_id"] == user
    ]


@common
@given(events=clickstreams(), window=windows)
def test_any_order_reports_what_its_reference_does(events: list[dict[str, Any]], window: str) -> None:
    outputs, _ = engine_outputs(config("any", "best", window), events)
    for user in {e["user_id"] for e in events}:
        assert reported(outputs, user) == any_attempts(step_events(events, user), 4, MS[window])


@common
@given(events=clickstreams(), window=windows, within_cart=withins, within_pay=withins)
def test_entry_first_keeps_one_chain_per_attempt(
    events: list[dict[str, Any]], window: str, within_cart: str, within_pay: str
) -> None:
    outputs, _ = engine_outputs(config("sequential", "first", window, within_cart, within_pay), events)
    within = within_list(within_cart, within_pay)
    for user in {e["user_id"] for e in events}:
        assert reported(outputs, user) == first_attempts(step_events(events, user), 4, MS[window], within)


@common
@given(events=clickstreams(products=True), window=windows, within_cart=withins)
def test_held_attempts_reach_what_window_funnel_counts_per_value(
    events: list[dict[str, Any]], window: str, within_cart: str
) -> None:
    cfg = config("sequential", "best", window, within_cart, extra="    hold: [properties.product_id]\n")
    outputs, _ = engine_outputs(cfg, events)
    reached: dict[tuple[str, str], int] = defaultdict(lambda: -1)
    events_by_id = {e["event_id"]: e for e in events}
    for o in outputs:
        if o["type"] == "micro" and o.get("funnel") == "f":
            key = (o["user_id"], events_by_id[o["event_id"]]["properties"]["product_id"])
            reached[key] = max(reached[key], o["step_index"])
    within = within_list(within_cart, "none")
    for user in {e["user_id"] for e in events}:
        for value in ("p1", "p2", "p3"):
            expected = furthest_sequential(step_events(events, user, value), 4, MS[window], within)
            assert reached[(user, value)] == expected


configs = st.builds(
    config,
    order=st.sampled_from(["sequential", "strict"]),
    entry=st.sampled_from(["best", "first"]),
    window=st.sampled_from(["none", "30m", "1h", "1d"]),
    within_cart=withins,
    scope=st.sampled_from(["user", "session"]),
    extra=st.sampled_from(
        [
            "",
            "    hold: [properties.product_id]\n    max_held_attempts: 2\n",
            "    attribution: {step: add_to_cart}\n",
        ]
    ),
    exclusions=st.booleans(),
)


@common
@given(events=clickstreams(products=True, max_events=60), cfg=configs)
def test_counters_reconcile_entered_with_completed_dropped_and_open(
    events: list[dict[str, Any]], cfg: CompiledConfig
) -> None:
    """Per step and breakdown value: entered = entered at the next step + dropped + still open."""
    outputs, engine = engine_outputs(cfg, events, flush=False)
    fields: Counter[str] = Counter()
    for output in outputs:
        for op in increments(output, cfg, 60_000):
            if op.key.startswith(f"f:{counter_name(cfg.funnels_by_name['f'])}:60:"):
                fields[op.field] += int(op.amount)
    open_at: Counter[str] = Counter()
    for raw in engine.store.values():
        for attempt in Journey.loads(raw).attempts.values():
            open_at[f"{attempt.reached}"] += 1
            for path, value in attempt.breakdowns.items():
                open_at[f"{attempt.reached}|{path}={'' if value is None else value}"] += 1
    values = {k.split("=", 1)[1] for k in fields if "|" in k} | {""}
    attribution = cfg.funnels_by_name["f"].attribution_step or 0
    for value in values:
        suffix = f"|context.platform={value}"
        for k in range(3):
            entered, dropped, still_open = (
                fields[f"e:{k}{suffix}"],
                fields[f"d:{k}{suffix}"],
                open_at[f"{k}{suffix}"],
            )
            if k < attribution and value:  # not read yet: every attempt is under no value
                assert entered == dropped == still_open == 0
                continue
            if k + 1 == attribution:  # read at the next step: they go on under every value
                going_on = sum(fields[f"e:{k + 1}|context.platform={v}"] for v in values)
            else:
                going_on = fields[f"e:{k + 1}{suffix}"]
            assert entered == going_on + dropped + still_open, (k, value)
        assert open_at[f"3{suffix}"] == 0
    for k in range(3):
        assert fields[f"e:{k}"] == fields[f"e:{k + 1}"] + fields[f"d:{k}"] + open_at[f"{k}"]


@common
@given(events=clickstreams(products=True, max_events=60), cfg=configs)
def test_redeliveries_and_replays_change_nothing(events: list[dict[str, Any]], cfg: CompiledConfig) -> None:
    first, _ = engine_outputs(cfg, events)
    again, _ = engine_outputs(cfg, events)
    assert first == again
    clean, _ = engine_outputs(cfg, unique(events))
    assert [o for o in first if o["type"] != "deadletter"] == [o for o in clean if o["type"] != "deadletter"]
    ids = [o["id"] for o in first if o["type"] != "deadletter"]
    assert len(ids) == len(set(ids))
