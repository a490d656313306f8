"""A stitched person's held events go as soon as the partitions they could conflict with have passed
them (issue 30), and a later event of the person still never goes before an earlier one.

Four journey partitions, one input source (`in/0`). The person `u` lives on partition 0, the
anonymous ids `a` and `b` on 1 and 2, and partition 3 never says how far it has got (idle, or
on a worker that is gone): the hold watermark of partition 0 never passes anything, so on main
nothing held there would ever go. Each test plays the worker's part with the engine's own API:
the items a partition forwards are delivered when the test says, and so are the watermarks.
"""

from __future__ import annotations

from typing import Any

from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine, partition_for
from streams.core.journeys.identity import Item, forwarder_source
from streams.core.journeys.journey import Outputs
from streams.core.journeys.merge import MAX_MERGED_IDS
from streams.core.journeys.notices import Notice
from tests.core.journeys.test_identity import config, event

PARTITIONS = 4
SOURCE = "in/0"


def _on(prefix: str, partition: int) -> str:
    """An id of that prefix living on that partition."""
    return next(f"{prefix}{i}" for i in range(1000) if partition_for(f"{prefix}{i}", PARTITIONS) == partition)


U, A, B = _on("u", 0), _on("a", 1), _on("b", 2)


def ts(minute: int) -> int:
    return ClickEvent.model_validate(event("x", minute, user_id="x")).ts_ms


class Cluster:
    """The engine of every partition, with the forwarded items and notices held back until
    delivered."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or Engine(
            config(), {}, PARTITIONS, expected_sources=[SOURCE], forwarding=True, early_release=True
        )
        self.items: dict[int, list[Item]] = {}
        self.notices: list[tuple[int, Notice]] = []

    def ingest(self, body: dict[str, Any]) -> Outputs:
        """An event applied on its home partition; what it forwards waits in `items`, its notice
        in `notices`."""
        click = ClickEvent.model_validate(body)
        home = self.engine.home_partition(click)
        out = self.engine.process(click, home)
        for target, item in self.engine.outbox:
            assert target == 0
            self.items.setdefault(home, []).append(item)
        self.engine.outbox.clear()
        noticed = self.engine.notice_for(click)
        if noticed is not None:
            self.notices.append(noticed)
        return out

    def deliver_notices(self) -> None:
        """Ingest's batches of `in/0` for partition 0 (before its watermark there moves)."""
        for target, notice in self.notices:
            assert target == 0
            self.engine.notice(target, notice.encode())
        self.notices.clear()

    def deliver(self, home: int) -> Outputs:
        out: Outputs = []
        for item in self.items.pop(home, []):
            out += self.engine.accept(0, item.encode())
        return out

    def observe(self, minute: int, *sources: str) -> Outputs:
        out: Outputs = []
        for source in sources:
            out += self.engine.observe(0, source, ts(minute))
        return out

    def held(self) -> list[str]:
        journey = self.engine.load(U)
        return [body["event"]["event_id"] for body in journey.held] if journey else []


def fwd(partition: int) -> str:
    return forwarder_source(partition)


def event_ids(out: Outputs) -> list[str]:
    return [found for o in out if (found := getattr(o, "event_id", None)) is not None]


def test_a_linked_persons_events_go_once_their_own_partitions_have_passed_them() -> None:
    cluster = Cluster()
    cluster.observe(0, SOURCE, fwd(1), fwd(2))  # partition 3 never says anything
    login = event("login", 9, anonymous_id=A, user_id=U)
    cluster.ingest(login)
    cluster.deliver_notices()
    assert cluster.deliver(1) == []
    assert cluster.observe(10, SOURCE) == []  # the anonymous id's home has not passed it yet
    assert cluster.held() == [login["event_id"]]
    out = cluster.observe(10, fwd(1))
    assert [o.type for o in out if o.type == "identity"] == ["identity"]
    assert cluster.held() == []
    assert cluster.engine.hold_watermark(0) is None  # the rule before: nothing would have gone

    later = event("product_view", 11, anonymous_id=A)  # signed out, on the linked device
    cluster.ingest(later)
    cluster.deliver(1)
    assert cluster.held() == [later["event_id"]]
    out = cluster.observe(12, SOURCE, fwd(1))
    assert later["event_id"] in event_ids(out) and cluster.held() == []


def _linked_to_both(cluster: Cluster) -> None:
    for anonymous, minute in ((A, 1), (B, 3)):
        cluster.ingest(event("login", minute, anonymous_id=anonymous, user_id=U))
    cluster.deliver_notices()
    cluster.deliver(1)
    cluster.deliver(2)
    cluster.observe(5, SOURCE, fwd(1), fwd(2))
    journey = cluster.engine.load(U)
    assert journey is not None and not journey.held and {A, B} <= {journey.anonymous_id, *journey.merged}


def test_a_later_event_of_a_linked_person_never_overtakes_one_still_on_its_way() -> None:
    cluster = Cluster()
    _linked_to_both(cluster)
    earlier = event("product_view", 20, anonymous_id=B)  # on its way from partition 2
    later = event("add_to_cart", 21, anonymous_id=A)
    cluster.ingest(earlier)
    cluster.ingest(later)
    cluster.deliver(1)
    out = cluster.observe(22, SOURCE, fwd(1), fwd(3))  # every partition but 2 has passed both
    assert event_ids(out) == [] and cluster.held() == [later["event_id"]]
    cluster.deliver(2)
    out = cluster.observe(22, fwd(2))
    assert [i for i in event_ids(out) if i in (earlier["event_id"], later["event_id"])] == [
        earlier["event_id"],
        later["event_id"],
    ]


def test_a_link_learned_after_the_event_was_held_still_goes_first() -> None:
    """A backend's purchase with the user id alone, held; the sign-in of a new device before
    it is still on its way from that device's home: its notice came with the source, so the
    purchase waits for that home, and the merge goes first."""
    for noticed in (True, False):
        cluster = Cluster()
        cluster.observe(0, SOURCE, fwd(1), fwd(2), fwd(3))
        purchase = event("purchase", 30, user_id=U, properties={"value": 10})
        cluster.ingest(purchase)
        cluster.ingest(event("login", 29, anonymous_id=B, user_id=U))
        if noticed:
            cluster.deliver_notices()
        out = cluster.observe(31, SOURCE, fwd(1), fwd(3))
        if not noticed:  # what the notice prevents: the purchase before the sign-in
            assert purchase["event_id"] in event_ids(out)
            continue
        assert event_ids(out) == [] and cluster.held() == [purchase["event_id"]]
        cluster.deliver(2)
        out = cluster.observe(31, fwd(2))
        kinds = [(o.type, getattr(o, "event_id", None)) for o in out]
        linked = kinds.index(("identity", f"e-login-29-{U}-{B}"))
        assert linked < min(i for i, (_, eid) in enumerate(kinds) if eid == purchase["event_id"])
        assert cluster.held() == []


def test_after_a_restart_held_events_wait_for_every_partition_until_the_lost_notices_are_passed() -> None:
    """Notices are not stored: a restarted partition (or one a rebalance moved) does not know
    the ones it was sent before, so up to its applied markers' watermark it waits for all."""
    cluster = Cluster()
    cluster.observe(0, SOURCE, fwd(1), fwd(2), fwd(3))
    purchase = event("purchase", 30, user_id=U, properties={"value": 10})
    cluster.ingest(purchase)
    cluster.ingest(event("login", 29, anonymous_id=B, user_id=U))
    cluster.deliver_notices()
    cluster.engine.flush()

    restarted = Cluster(
        Engine(config(), cluster.engine.store, PARTITIONS, [SOURCE], forwarding=True, early_release=True)
    )
    restarted.items = cluster.items
    restarted.engine.rebuild_deadlines(0, [key for key in restarted.engine.store])
    restarted.engine.notices_lost_until(0, ts(30))  # how far in/0 had got (its marker)
    restarted.observe(0, fwd(2))
    out = restarted.observe(31, SOURCE, fwd(1), fwd(3))
    assert event_ids(out) == [] and restarted.held() == [purchase["event_id"]]
    restarted.deliver(2)
    out = restarted.observe(31, fwd(2))
    assert event_ids(out)[0] == f"e-login-29-{U}-{B}" and purchase["event_id"] in event_ids(out)


def test_a_person_with_more_linked_ids_than_the_journey_keeps_waits_for_every_partition() -> None:
    """The journey keeps the last `MAX_MERGED_IDS` merged ids: past that, which partitions may
    still send the person something is not known, and the hold watermark decides."""
    cluster = Cluster()
    cluster.observe(0, SOURCE, fwd(1), fwd(2), fwd(3))
    devices = [_on(f"d{i}-", 1) for i in range(MAX_MERGED_IDS)]
    for minute, device in enumerate(devices, start=1):
        cluster.ingest(event("login", minute, anonymous_id=device, user_id=U))
    cluster.deliver_notices()
    cluster.deliver(1)
    cluster.observe(20, SOURCE, fwd(1), fwd(2), fwd(3))
    journey = cluster.engine.load(U)
    assert journey is not None and len(journey.merged) >= MAX_MERGED_IDS and not journey.held
    purchase = event("purchase", 30, user_id=U, properties={"value": 10})
    cluster.ingest(purchase)
    assert event_ids(cluster.observe(31, SOURCE, fwd(1), fwd(3))) == []  # 2 not passed
    assert purchase["event_id"] in event_ids(cluster.observe(31, fwd(2)))


def test_an_anonymous_id_whose_merge_is_still_held_counts_too() -> None:
    """The sign-in's merge has arrived but waits (the partition's own source is behind it), and
    its notice is settled: the device's home is known from the held merge alone, and its signed-
    out event still on the way goes before the person's later purchase."""
    cluster = Cluster()
    cluster.observe(0, fwd(1), fwd(2), fwd(3))
    cluster.observe(8, SOURCE)
    cluster.ingest(event("login", 9, anonymous_id=A, user_id=U))
    cluster.deliver_notices()
    cluster.deliver(1)
    cluster.observe(10, fwd(1))  # the notice is settled: the merge is here
    on_its_way = event("product_view", 11, anonymous_id=A)
    cluster.ingest(on_its_way)
    purchase = event("purchase", 12, user_id=U, properties={"value": 10})
    cluster.ingest(purchase)
    out = cluster.observe(13, SOURCE, fwd(2), fwd(3))
    assert purchase["event_id"] not in event_ids(out)
    cluster.deliver(1)
    out = cluster.observe(13, fwd(1))
    ids = event_ids(out)
    assert ids.index(on_its_way["event_id"]) < ids.index(purchase["event_id"])


def test_the_persons_own_events_still_on_their_way_go_first() -> None:
    """The device's home has passed the forwarded event, the partition's own source has not:
    the person's own events before it may still come through that source."""
    cluster = Cluster()
    cluster.observe(0, SOURCE, fwd(1), fwd(2), fwd(3))
    cluster.ingest(event("login", 1, anonymous_id=A, user_id=U))
    cluster.deliver_notices()
    cluster.deliver(1)
    cluster.observe(2, SOURCE, fwd(1))
    assert cluster.held() == []
    forwarded = event("product_view", 20, anonymous_id=A)
    cluster.ingest(forwarded)
    cluster.deliver(1)
    assert event_ids(cluster.observe(21, fwd(1))) == []  # the own source is at minute 2
    purchase = event("purchase", 15, user_id=U, properties={"value": 10})
    cluster.ingest(purchase)
    ids = event_ids(cluster.observe(16, SOURCE))
    assert purchase["event_id"] in ids and cluster.held() == [forwarded["event_id"]]
    cart = event("add_to_cart", 18, user_id=U)
    cluster.ingest(cart)
    ids = event_ids(cluster.observe(21, SOURCE))
    assert forwarded["event_id"] in ids and cluster.held() == []
    # the cart (18) applied before the view (20): no cart step without a view before it
    assert cart["event_id"] not in ids


def test_without_the_setting_no_notice_is_sent_and_held_events_wait_for_every_partition() -> None:
    """`early_release` is off by default (a rolling upgrade: a worker before it dead-letters
    notices, and without notices the early rule is not safe): the first test's sign-in then
    stays held while partition 3 says nothing, a peer's notice is checked and ignored, and a
    malformed one is refused (the agent dead-letters it)."""
    engine = Engine(config(), {}, PARTITIONS, expected_sources=[SOURCE], forwarding=True)
    cluster = Cluster(engine)
    cluster.observe(0, SOURCE, fwd(1), fwd(2))
    login = event("login", 9, anonymous_id=A, user_id=U)
    cluster.ingest(login)
    assert cluster.notices == []
    engine.notice(0, Notice(U, A, ts(9)).encode())
    cluster.deliver(1)
    assert cluster.observe(10, SOURCE, fwd(1), fwd(2)) == []
    assert cluster.held() == [login["event_id"]]
    out = cluster.observe(10, fwd(3))  # the last partition passes it: the rule before
    assert [o.type for o in out if o.type == "identity"] == ["identity"] and cluster.held() == []
    try:
        engine.notice(0, {"notice": U})
    except ValueError as refused:
        assert "needs a user id" in str(refused)
    else:
        raise AssertionError("a malformed notice was taken")


def test_a_hold_parked_on_a_forwarder_that_goes_idle_goes_with_the_hold_watermark() -> None:
    """Waiting for partition 2's forwarder (the person has an id there), the event is parked on
    it; that forwarder is then forgotten (idle, or its partition moved): the event goes as soon
    as every partition still waited for has passed it, not when a forwarder that is gone moves."""
    cluster = Cluster()
    _linked_to_both(cluster)
    later = event("add_to_cart", 21, anonymous_id=A)
    cluster.ingest(later)
    cluster.deliver(1)
    assert cluster.observe(22, SOURCE, fwd(1), fwd(3)) == [] and cluster.held() == [later["event_id"]]
    cluster.engine.forget_source(0, fwd(2))
    assert cluster.held() == []
    journey = cluster.engine.load(U)
    assert journey is not None and journey.session is not None and journey.session.last == ts(21)
