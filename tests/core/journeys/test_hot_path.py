"""The engine's per-event shortcuts (issue 30) change nothing: the cached next deadline is always
the one computed afresh (after events, merges and settled definition changes alike), every
observation fires at that call what firing everything due would fire, and an event name's plan
leaves to test only what its name does not settle."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine
from streams.core.journeys.journey import Outputs
from streams.core.records.outputs import IdentityLink
from streams.core.records.trusted import build
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator
from tests.core.journeys.test_journey_properties import clickstreams, config
from tests.core.journeys.test_versions import AT_CART, CHANGES, A, run_a
from tests.helpers import click

DEFAULT = compile_config(parse_config(DEFAULT_FUNNELS.read_text()))


def _simulated(users: int = 150, days: float = 2.0) -> list[ClickEvent]:
    events: list[ClickEvent] = []
    for line in Simulator(seed=3, users=users, days=days).lines():
        events += decode_message(line).events
    return events


def _assert_due_fresh(engine: Engine) -> int:
    """Every journey whose next deadline is cached has the one `_earliest` computes now."""
    checked = 0
    for journey in engine._cache.values():
        if journey is not None and journey.due is not False:
            assert journey.due == engine.machine._earliest(journey), journey.identity
            checked += 1
    return checked


def test_cached_deadlines_are_always_fresh_over_stitched_traffic() -> None:
    engine = Engine(DEFAULT, {}, 4, expected_sources=["s"])
    latest, checked = 0, 0
    for i, event in enumerate(_simulated()):
        engine.process(event)
        latest = max(latest, event.ts_ms)
        engine.observe_all("s", latest)
        if i % 7 == 0:
            checked += _assert_due_fresh(engine)
        if i % 2_000 == 1_999:
            engine.flush()  # journeys come back from the store with nothing cached
    engine.observe_all("s", latest + 86_400_000)
    checked += _assert_due_fresh(engine)
    assert checked > 1_000


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=clickstreams(max_events=60))
def test_cached_deadlines_are_fresh_over_generated_clickstreams(events: list[dict[str, Any]]) -> None:
    engine = Engine(config("strict", "1h"), {}, 1, expected_sources=["s"])
    latest = 0
    for body in events:
        click = ClickEvent.model_validate(body)
        latest = max(latest, click.ts_ms)
        engine.process(click, 0)
        _assert_due_fresh(engine)
        engine.observe(0, "s", latest)
        _assert_due_fresh(engine)


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_merge_whose_linking_event_is_late_indexes_the_merged_attempts_deadline(partitions: int) -> None:
    """The login is late for the user's journey (over `late_tolerance` behind it), so it never
    applies, yet the anonymous journey is merged: nothing but the merge changes the user's journey,
    whose next deadline `merge_journeys` had cached before the anonymous attempt joined it."""
    engine = Engine(DEFAULT, {}, partitions, expected_sources=["s"])
    latest = 0

    def deliver(event: ClickEvent) -> list[str]:
        nonlocal latest
        latest = max(latest, event.ts_ms)
        out = engine.process(event) + engine.observe_all("s", latest)
        return [o.type for o in out]

    assert deliver(click("product_view", "12:55", user_id=None, anonymous_id="a1")) == ["micro"]
    assert deliver(click("share", "13:00", "u1")) == ["micro"]  # the user's own session, until 13:30
    assert deliver(click("login", "12:45", "u1", anonymous_id="a1")) == ["deadletter", "identity"]
    person = engine.load("u1")
    assert person is not None and "checkout" in person.attempts and person.merged == ["a1"]
    assert person.due is not False and person.due == engine.machine._earliest(person)
    stall = click("x", "13:25").ts_ms  # the merged attempt stalls 30 minutes after its product view
    assert engine.machine.next_deadline(person) == stall
    clock = engine._clocks[engine.partition_of("u1")]
    assert clock.scheduled["u1"] == stall
    # the first observation whose watermark passes 13:25 emits the stall, not one past 13:30
    assert deliver(click("share", "13:36", "u2")) == ["micro", "stalled"]


@pytest.mark.parametrize("change", sorted(set(CHANGES) - {"unchanged"}))
def test_advance_settling_a_changed_definition_leaves_a_fresh_next_deadline(change: str) -> None:
    """A journey written under A, its next deadline cached under B (as indexing it does: the
    attempt is due at the journey's own time, to be settled), then advanced to that time: settling
    changes the attempts, and the deadline cached before must go. (In the engine an applied event
    or a merge forgets it too, and `_fire_due` advances past that time; `advance` must not rely on
    its callers for that.)"""
    journey, _ = run_a(AT_CART)
    machine = Engine(CHANGES[change], {}, 1, known=[A.funnels[0].definition]).machine  # type: ignore[list-item]
    assert machine.next_deadline(journey) == journey.last_ts  # the settling, due at once
    settled = machine.advance(journey, journey.last_ts)
    assert [o.type for o in settled] in (["carried"], ["dropoff"])
    assert journey.due == machine._earliest(journey)
    assert machine.next_deadline(journey) == machine._earliest(journey)[0] > journey.last_ts  # type: ignore[index]


def _late_deliveries(events: list[ClickEvent], seed: int = 5, share: float = 0.05) -> list[ClickEvent]:
    """The events in time order, but a `share` of them delivered 40 minutes to 3 hours late (a
    device uploading what it buffered offline): an old event reopens a journey whose deadlines
    are then already below the watermark, though no source moved."""
    rng = random.Random(seed)
    keyed = []
    for n, event in enumerate(events):
        delay = rng.randint(40 * 60_000, 3 * 3_600_000) if rng.random() < share else 0
        keyed.append((event.ts_ms + delay, n, event))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [event for _, _, event in keyed]


class _FireEverythingDue:
    """The reference for when deadlines fire: after every observation, every journey is advanced
    to the watermark, its next deadline computed afresh (no heap, no cached `due`, no shortcut).
    Events are applied by the engine's own `process` and held items released by its own hold
    release: only when deadlines fire is compared. One source, `s`, feeds every partition."""

    def __init__(self, config: CompiledConfig, partitions: int) -> None:
        self.engine = Engine(config, {}, partitions, expected_sources=["s"])
        self.floor: int | None = None

    def observe(self, event_time: int) -> Outputs:
        engine = self.engine
        out: Outputs = []
        for partition in range(engine.partitions):
            clock = engine._clock(partition)
            clock.waiting_for.discard("s")
            clock.sources["s"] = max(event_time, clock.sources.get("s", event_time))
            out += engine._release_due(partition, clock)
        floor = event_time - engine.config.late_tolerance
        self.floor = floor if self.floor is None else max(self.floor, floor)
        for identity, journey in list(engine._cache.items()):  # never flushed: every journey
            if journey is None:
                continue
            if journey.linked_to is not None:
                if journey.last_ts + engine.rules.ttl < self.floor:
                    engine._delete(identity)
                continue
            journey.changed()
            fired = engine.machine.advance(journey, self.floor)
            if fired:
                out += fired
                engine._put(journey)
        return out


def _emitted(outputs: Outputs) -> list[bytes]:
    """What one call emitted, in an order of its own (the order within a call is the heap's)."""
    return sorted(o.to_json() for o in outputs)


def test_every_observe_fires_what_firing_everything_due_fires_at_that_call() -> None:
    """Per event: what `process` returns, then what observing returns (`observe_all`, and `observe`
    on each partition in turn), against the reference, call by call: a deadline emitted one
    observation late (on a heartbeat, or the next event that moves the source) fails it."""
    events = _late_deliveries(_simulated(users=80))
    reference = _FireEverythingDue(DEFAULT, 4)
    together, each = (Engine(DEFAULT, {}, 4, expected_sources=["s"]) for _ in range(2))
    latest, fired_unmoved, fired = 0, 0, 0
    for n, event in enumerate(events):
        moved = event.ts_ms > latest
        latest = max(latest, event.ts_ms)
        expected = _emitted(reference.engine.process(event))
        assert _emitted(together.process(event)) == expected, n
        assert _emitted(each.process(event)) == expected, n
        due = reference.observe(latest)
        fired += len(due)
        fired_unmoved += bool(due) and not moved
        expected = _emitted(due)
        assert _emitted(together.observe_all("s", latest)) == expected, n
        assert _emitted([o for p in range(4) for o in each.observe(p, "s", latest)]) == expected, n
    assert fired > len(events) // 2
    assert fired_unmoved > 10  # deadlines due at an observation where no source moved


def test_an_event_names_plan_keeps_only_what_its_name_leaves_open() -> None:
    machine = Engine(DEFAULT, {}, 1).machine
    plan = machine._plan("page_view")  # onboarding's pricing_page: page_view on /pricing*
    [(funnel, steps, exclusions, plain)] = plan.funnels
    assert funnel.name == "onboarding" and exclusions == () and plain is None  # the url to test
    [(index, rest)] = steps
    assert index == 0 and rest is not None and rest.events is None and rest.url is not None
    product = machine._plan("product_view")  # checkout's first step: the name is all it asks
    assert [(f.name, s, p) for f, s, _, p in product.funnels] == [("checkout", ((0, None),), [0])]
    purchase = machine._plan("purchase")  # the goal, then the steps that need it
    assert [(g.name, rest) for g, rest in purchase.goals] == [("purchase", None)]
    [(_, [(index, needs_goal)], _, plain)] = purchase.funnels
    assert index == 4 and needs_goal is not None and plain is None
    assert needs_goal.goal == "purchase" and needs_goal.events is None
    assert machine._plan("refund").funnels[0][2:] == ((None,), [])  # checkout's exclusion alone
    assert machine._plan("no_such_event").funnels == ()


def test_a_journeys_remembered_least_seen_time_is_the_least_of_its_seen_times() -> None:
    """`_remember` keeps the least of `seen_at` rather than scan it per event: over late and
    merged deliveries, flushed now and then (journeys decoded afresh), it is the list's least."""
    engine = Engine(DEFAULT, {}, 4, expected_sources=["s"])
    latest, checked = 0, 0
    for i, event in enumerate(_late_deliveries(_simulated(users=80))):
        engine.process(event)
        latest = max(latest, event.ts_ms)
        engine.observe_all("s", latest)
        for journey in engine._cache.values():
            if journey is not None and journey.seen_of is journey.seen_at:
                assert journey.seen_floor == min(journey.seen_at), journey.identity
                checked += 1
        if i % 1_500 == 1_499:
            engine.flush()
    assert checked > 10_000


def test_a_linked_identity_output_is_the_one_build_makes_of_its_fields() -> None:
    """`Engine._linked` assembles the output from every field in the model's order: the same
    fields, order, fields set and JSON as `build` from the fields it set, and valid."""
    engine = Engine(DEFAULT, {}, 4, expected_sources=["s"])
    latest, linked = 0, 0
    for event in _simulated():
        outputs = engine.process(event)
        latest = max(latest, event.ts_ms)
        outputs += engine.observe_all("s", latest)
        for output in outputs:
            if isinstance(output, IdentityLink) and output.action == "linked":
                fields = {k: v for k, v in output.__dict__.items() if k in output.model_fields_set}
                built = build(IdentityLink, **fields)
                assert list(output.__dict__.items()) == list(built.__dict__.items())
                assert output.model_fields_set == built.model_fields_set
                assert output.to_json() == built.to_json()
                assert IdentityLink.model_validate(output.model_dump()) == output
                linked += 1
    assert linked > 20
