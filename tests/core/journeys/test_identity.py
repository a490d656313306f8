"""Identity stitching in the pure engine: a visitor who signs in at checkout is one journey."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.records.outputs import OutputEvent
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS

EXAMPLE = DEFAULT_FUNNELS.read_text()


def config(identity: str = "") -> CompiledConfig:
    return compile_config(parse_config(EXAMPLE + identity))


def event(name: str, minute: int, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"e-{name}-{minute}-{fields.get('user_id')}-{fields.get('anonymous_id')}",
        "event": name,
        "timestamp": f"2024-03-13T10:{minute:02d}:00Z",
        "context": {"platform": "web"},
    }
    body.update(fields)
    return body


LANDING = {"url": "https://shop.example/spring-sale?utm_source=google&utm_medium=cpc", "referrer": ""}

SEVEN = [
    event("page_view", 0, anonymous_id="anon-1", page=LANDING),
    event("product_view", 2, anonymous_id="anon-1"),
    event("add_to_cart", 5, anonymous_id="anon-1"),
    event("login", 9, anonymous_id="anon-1", user_id="user-1"),
    event("shipping_details", 11, anonymous_id="anon-1", user_id="user-1"),
    event("payment_details", 13, anonymous_id="anon-1", user_id="user-1"),
    event("purchase", 14, user_id="user-1", properties={"value": 59.9}),
]


def run(cfg: CompiledConfig, events: list[dict[str, Any]], partitions: int = 4) -> list[OutputEvent]:
    offline = OfflineRun(cfg, partitions)
    out: list[OutputEvent] = []
    for body in events:
        out += offline.feed(orjson.dumps(body))
    return out + offline.flush()


def of_type(outputs: list[OutputEvent], kind: str) -> list[dict[str, Any]]:
    return [o.model_dump(mode="json") for o in outputs if o.type == kind]


def milestones(outputs: list[OutputEvent]) -> list[tuple[str | None, str | None]]:
    return [(m["step"], m["user_id"]) for m in of_type(outputs, "micro") if m["kind"] == "milestone"]


@pytest.mark.parametrize("partitions", [1, 4, 7])
def test_the_seven_event_checkout_is_one_journey_with_its_true_first_touch(partitions: int) -> None:
    out = run(config(), SEVEN, partitions)
    checkout = [m for m in of_type(out, "micro") if m["funnel"] == "checkout"]
    assert [m["step"] for m in checkout] == ["product_view", "add_to_cart", "shipping", "payment", "purchase"]
    assert len({m["breakdowns"]["campaign.source"] for m in checkout}) == 1  # one attempt throughout
    assert not [d for d in of_type(out, "dropoff") if d["funnel"] == "checkout"]
    assert not of_type(out, "stalled")
    (macro,) = of_type(out, "macro")
    assert macro["user_id"] == "user-1" and macro["anonymous_id"] == "anon-1"
    assert macro["first_touch"] == {
        "timestamp": "2024-03-13T10:00:00Z",
        "landing_page": "/spring-sale",
        "channel": "Paid Search",
    }
    assert macro["decision_time_ms"] == 14 * 60_000
    assert macro["landing_page"] == "/spring-sale" and macro["channel"] == "Paid Search"
    assert macro["micro_path"] == ["product_view", "add_to_cart", "shipping", "payment", "purchase"]
    assert macro["page_views"] == 1 and macro["sessions"] == 1
    (link,) = of_type(out, "identity")
    assert link["action"] == "linked" and link["anonymous_id"] == "anon-1" and link["user_id"] == "user-1"
    assert link["anonymous_history"] and not link["user_history"]
    assert link["timestamp"] == "2024-03-13T10:09:00Z"
    assert link["first_touch"]["landing_page"] == "/spring-sale"
    assert link["attempts_kept"] == {"checkout": 1}
    (session,) = of_type(out, "session")
    assert session["page_views"] == 1 and session["conversions"] == ["purchase"]


def test_without_stitching_the_same_events_are_two_journeys_as_before() -> None:
    out = run(config("identity: {stitch: false}\n"), SEVEN)
    assert not of_type(out, "identity")
    reached = milestones(out)
    assert ("add_to_cart", None) in reached and ("shipping", "user-1") not in reached
    (macro,) = of_type(out, "macro")
    assert macro["micro_path"] == [] and macro["channel"] == "Direct"
    assert [d["reason"] for d in of_type(out, "dropoff") if d["funnel"] == "checkout"] == ["window_expired"]


def test_link_on_restricts_which_events_link() -> None:
    restricted = config("identity: {link_on: [signup]}\n")
    out = run(restricted, SEVEN)
    assert not of_type(out, "identity")  # login is not a linking event here
    linked = run(config("identity: {link_on: [login]}\n"), SEVEN)
    assert [o["action"] for o in of_type(linked, "identity")] == ["linked"]


def test_signed_out_events_of_a_linked_device_still_reach_the_person() -> None:
    events = [
        *SEVEN[:4],
        event("shipping_details", 20, anonymous_id="anon-1"),  # signed out, same device
        event("payment_details", 21, anonymous_id="anon-1"),
    ]
    out = run(config(), events)
    assert milestones(out)[-2:] == [("shipping", "user-1"), ("payment", "user-1")]


def test_a_second_device_merges_into_the_same_person_and_keeps_the_earliest_first_touch() -> None:
    phone = [
        event("page_view", 0, anonymous_id="phone", page=LANDING, context={"platform": "mobile"}),
        event("product_view", 1, anonymous_id="phone"),
        event("login", 3, anonymous_id="phone", user_id="user-1"),
    ]
    laptop = [
        event("page_view", 50, anonymous_id="laptop", page={"url": "https://shop.example/p/42"}),
        event("login", 51, anonymous_id="laptop", user_id="user-1"),
        event("add_to_cart", 52, anonymous_id="laptop"),
        event("shipping_details", 53, anonymous_id="laptop", user_id="user-1"),
        event("payment_details", 54, anonymous_id="laptop", user_id="user-1"),
        event("purchase", 55, user_id="user-1"),
    ]
    out = run(config(), phone + laptop)
    assert [o["anonymous_id"] for o in of_type(out, "identity")] == ["phone", "laptop"]
    steps = [m["step"] for m in of_type(out, "micro") if m["funnel"] == "checkout"]
    assert steps == ["product_view", "add_to_cart", "shipping", "payment", "purchase"]
    (macro,) = of_type(out, "macro")
    assert macro["first_touch"]["landing_page"] == "/spring-sale"
    assert macro["first_touch"]["timestamp"] == "2024-03-13T10:00:00Z"
    # the phone's session had ended (30 minutes without activity) before the laptop's began
    assert macro["sessions"] == 2 and macro["page_views"] == 2


def test_a_step_on_a_device_before_its_sign_in_stays_with_that_devices_attempt() -> None:
    """Documented limit of merging in real time: before their link the two journeys are apart,
    so the laptop's add_to_cart (before it signed in) cannot extend the phone's attempt; at the
    merge the more advanced attempt continues (here the phone's: product_view)."""
    events = [
        event("product_view", 1, anonymous_id="phone"),
        event("login", 3, anonymous_id="phone", user_id="user-1"),
        event("add_to_cart", 30, anonymous_id="laptop"),
        event("login", 31, anonymous_id="laptop", user_id="user-1"),
    ]
    out = run(config(), events)
    assert [m["step"] for m in of_type(out, "micro") if m["funnel"] == "checkout"] == ["product_view"]
    assert of_type(out, "identity")[-1]["attempts_kept"] == {"checkout": 0}


def test_two_users_are_never_merged_and_the_refusal_is_explained() -> None:
    events = [
        event("page_view", 0, anonymous_id="kiosk"),
        event("login", 1, anonymous_id="kiosk", user_id="alice"),
        event("product_view", 2, anonymous_id="kiosk", user_id="alice"),
        event("login", 10, anonymous_id="kiosk", user_id="bob"),
        event("product_view", 11, anonymous_id="kiosk", user_id="bob"),
        event("page_view", 12, anonymous_id="kiosk"),  # signed out: the device stays alice's
    ]
    out = run(config(), events)
    links = of_type(out, "identity")
    assert [(o["action"], o["user_id"]) for o in links] == [
        ("linked", "alice"),
        ("refused", "bob"),
        ("refused", "bob"),
    ]
    assert links[1]["linked_user_id"] == "alice" and "never merged" in links[1]["reason"]
    views = [(m["user_id"], m["step"]) for m in of_type(out, "micro") if m["funnel"] == "checkout"]
    assert views == [("alice", "product_view"), ("bob", "product_view")]
    sessions = {(s["user_id"], s["page_views"]) for s in of_type(out, "session")}
    assert ("alice", 2) in sessions


def test_when_both_journeys_hold_an_attempt_the_more_advanced_continues_and_the_other_is_merged() -> None:
    events = [
        event("product_view", 0, user_id="user-1"),  # server-side view, as the user
        event("product_view", 1, anonymous_id="anon-1"),
        event("add_to_cart", 2, anonymous_id="anon-1"),
        event("login", 3, anonymous_id="anon-1", user_id="user-1"),
        event("shipping_details", 4, anonymous_id="anon-1", user_id="user-1"),
    ]
    out = run(config(), events)
    dropped = [
        (d["reason"], d["step"], d["user_id"]) for d in of_type(out, "dropoff") if d["funnel"] == "checkout"
    ]
    assert dropped[0] == ("merged", "product_view", "user-1")
    (link,) = of_type(out, "identity")
    assert link["attempts_merged"] == {"checkout": 0} and link["user_history"]
    entered = [m for m in of_type(out, "micro") if m["funnel"] == "checkout" and m["step_index"] == 0]
    # entered = completed + dropped + open: two attempts entered, one merged away, one goes on
    assert len(entered) == 2
    assert ("shipping", "user-1") in milestones(out)


def test_a_link_delivered_twice_merges_once() -> None:
    offline = OfflineRun(config(), 4)
    out: list[OutputEvent] = []
    for body in [*SEVEN[:4], SEVEN[3], *SEVEN[4:], SEVEN[3]]:
        out += offline.feed(orjson.dumps(body))
    out += offline.flush()
    assert len(of_type(out, "identity")) == 1
    assert len(of_type(out, "macro")) == 1


def test_a_user_only_purchase_that_arrives_before_the_sign_in_still_carries_the_first_touch() -> None:
    # the backend's confirmation (user id only) reaches the engine in the same batch as, but
    # before, the browser's sign-in and checkout steps: held until event time has passed them
    batch = [SEVEN[6], *SEVEN[3:6]]
    offline = OfflineRun(config(), 4)
    out: list[OutputEvent] = []
    for body in SEVEN[:3]:
        out += offline.feed(orjson.dumps(body))
    out += offline.feed(orjson.dumps(batch))
    out += offline.flush()
    (macro,) = of_type(out, "macro")
    assert macro["first_touch"]["landing_page"] == "/spring-sale"
    assert macro["micro_path"] == ["product_view", "add_to_cart", "shipping", "payment", "purchase"]


def test_on_simulated_stitched_traffic_every_purchase_carries_the_persons_first_touch_known_then() -> None:
    """An independent reference: a purchase's person is its user and every anonymous id linked to
    that user by then (first link wins); its first touch is the earliest event of any of them."""
    from streams.tools.simulate import Simulator

    events = Simulator(seed=5, users=1_500, days=3).events()
    linked_at: dict[str, tuple[str, str]] = {}  # anonymous id -> (user, link time)
    for body in events:
        anon, user = body.get("anonymous_id"), body.get("user_id")
        if anon and user and anon not in linked_at:
            linked_at[anon] = (user, body["timestamp"])
    first_seen: dict[str, str] = {}
    for body in events:
        for key in (body.get("anonymous_id"), body.get("user_id")):
            if key is not None:
                first_seen.setdefault(key, body["timestamp"])
    expected: dict[str, str] = {}
    for body in events:
        if body["event"] != "purchase":
            continue
        user, at = body.get("user_id"), body["timestamp"]
        if user is None:
            continue  # a guest: checked by the single-identity tests
        ids = [user] + [a for a, (u, when) in linked_at.items() if u == user and when <= at]
        expected[body["event_id"]] = min(first_seen[i] for i in ids if i in first_seen)
    offline = OfflineRun(config(), 4)
    out: list[OutputEvent] = []
    for body in events:
        out += offline.feed(orjson.dumps(body))
    macros = {m["event_id"]: m for m in of_type(out + offline.flush(), "macro") if m["goal"] == "purchase"}
    assert len(expected) > 300
    assert sum(1 for m in macros.values() if m["anonymous_id"] is not None) > 200
    for event_id, first in expected.items():  # to the second: the simulator writes microseconds
        assert macros[event_id]["first_touch"]["timestamp"][:19] == first[:19], event_id
    assert len(of_type(out, "identity")) > 300


def test_a_visit_stamped_with_one_millisecond_keeps_its_landing_page_and_channel() -> None:
    """Trackers in a tight loop stamp a whole visit alike: the device's events (landing page,
    campaign) go before the backend's at the same time, whatever order a batch brings them in
    (what arrives after event time has passed it is late, and taken in arrival order)."""
    at = 30
    visit = [
        event("page_view", at, anonymous_id="anon-1", page=LANDING),
        event("product_view", at, anonymous_id="anon-1"),
        event("identify", at, anonymous_id="anon-1", user_id="user-1"),
        event("purchase", at, user_id="user-1", properties={"value": 5.0}),
    ]
    for order in ([3, 0, 1, 2], [2, 3, 1, 0], [0, 1, 2, 3], [3, 2, 1, 0]):
        offline = OfflineRun(config(), 4)
        out = offline.feed(orjson.dumps([visit[i] for i in order])) + offline.flush()
        (macro,) = of_type(out, "macro")
        assert macro["landing_page"] == "/spring-sale" and macro["channel"] == "Paid Search", order
        assert macro["first_touch"]["landing_page"] == "/spring-sale", order


def test_a_redone_run_does_not_forward_what_the_merged_anonymous_journey_already_held() -> None:
    """Found by `make crash`: after a kill, the home partition redid a run whose stub had been
    written; its anonymous events, already inside the merge, were forwarded again and applied
    to the person before the merge, which then added them a second time."""
    from streams.core.input.event import ClickEvent
    from streams.core.journeys.engine import Engine
    from streams.core.journeys.identity import Merge

    engine = Engine(config(), {}, 4, expected_sources=["in/0"], forwarding=True)
    clicks = [ClickEvent.model_validate(body) for body in SEVEN[:4]]
    home = engine.home_partition(clicks[0])
    assert engine.partition_of("user-1") != home, "the two ids live on different partitions"
    for click in clicks:
        engine.process(click, home)
    assert [type(item) for _, item in engine.outbox] == [Merge]
    engine.outbox.clear()
    for click in clicks:  # the same run again, the stub in place
        engine.process(click, home)
    forwarded = [item.event["event"] for _, item in engine.outbox]
    assert forwarded == ["login"]  # the linking event: the person's journey knows it by its id


def test_an_item_refused_when_released_says_where_its_event_was_read() -> None:
    """A person's items (their own events, events forwarded from another partition) are applied
    when event time has passed them; one refused then as late is dead-lettered with the topic,
    partition and offset it was read at, carried in the item, not with none."""
    from streams.core.journeys.engine import Engine
    from streams.core.journeys.identity import Forwarded, forwarder_source
    from tests.helpers import click

    engine = Engine(compile_config(parse_config(EXAMPLE)), {}, 2, expected_sources=["in/0"], forwarding=True)
    home = engine.partition_of("u1")
    first = click("product_view", "12:00", "u1")
    engine.process(first, home, source=("clickstream", 0, 5))
    for source in ("in/0", forwarder_source(1 - home)):  # every source of the partition has passed it
        engine.observe(home, source, first.ts_ms)
    assert engine.load("u1") is not None and not engine.load("u1").held  # applied: at 12:00
    late = click("add_to_cart", "09:00", "u1")  # hours behind it, forwarded from the other partition
    item = Forwarded("u1", late.to_json_dict(), late.ts_ms, source=("clickstream", 1, 7))
    out = engine.accept(home, orjson.loads(orjson.dumps(item.encode())))
    letters = [o for o in out if o.type == "deadletter"]
    assert [(d.reason, d.source_topic, d.source_partition, d.source_offset) for d in letters] == [
        ("late_event", "clickstream", 1, 7)
    ]


def test_the_items_written_out_constructors_follow_their_dataclass_fields() -> None:
    """`Forwarded` and `Merge` write their `__init__` out (mypyc compiles it): every field, in the
    declared order, set from its argument or to its default."""
    from dataclasses import MISSING, fields

    from streams.core.journeys.identity import Forwarded, Merge

    # a value of each field's type (the compiled __init__ checks them), no two alike
    sample = {
        "person": "the person",
        "anonymous_id": "an anonymous id",
        "journey": b"a stored journey",
        "event": {"event": "an event"},
        "ts": 1_700_000_000_000,
        "body": {"body": "a held body"},
        "source": ("clickstream", 3, 42),
    }
    for cls in (Forwarded, Merge):
        given = {f.name: sample[f.name] for f in fields(cls)}
        built = cls(*given.values())
        assert {f.name: getattr(built, f.name) for f in fields(cls)} == given
        bare = cls(*[given[f.name] for f in fields(cls) if f.default is MISSING])
        for f in fields(cls):
            assert getattr(bare, f.name) == (given[f.name] if f.default is MISSING else f.default)
