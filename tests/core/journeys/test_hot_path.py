"""The engine's per-event shortcuts (issue 30) change nothing: the cached next deadline is always
the one computed afresh, every partition observed at once fires what observing each does, and an
event name's plan leaves to test only what its name does not settle."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator
from tests.core.journeys.test_journey_properties import clickstreams, config

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


def test_observe_all_fires_what_observing_each_partition_fires() -> None:
    events = _simulated(users=80)
    engines = [Engine(DEFAULT, {}, 4, expected_sources=["s"]) for _ in range(2)]
    outputs: list[list[bytes]] = [[], []]
    latest = 0
    for event in events:
        latest = max(latest, event.ts_ms)
        for n, engine in enumerate(engines):
            produced = engine.process(event)
            if n == 0:
                produced += engine.observe_all("s", latest)
            else:
                for partition in range(4):
                    produced += engine.observe(partition, "s", latest)
            outputs[n] += [o.to_json() for o in produced]
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) > len(events) // 2


def test_an_event_names_plan_keeps_only_what_its_name_leaves_open() -> None:
    machine = Engine(DEFAULT, {}, 1).machine
    plan = machine._plan("page_view")  # onboarding's pricing_page: page_view on /pricing*
    [(funnel, steps, exclusions)] = plan.funnels
    assert funnel.name == "onboarding" and exclusions == ()
    [(index, rest)] = steps
    assert index == 0 and rest is not None and rest.events is None and rest.url is not None
    product = machine._plan("product_view")  # checkout's first step: the name is all it asks
    assert [(f.name, s) for f, s, _ in product.funnels] == [("checkout", ((0, None),))]
    purchase = machine._plan("purchase")  # the goal, then the steps that need it
    assert [(g.name, rest) for g, rest in purchase.goals] == [("purchase", None)]
    [(_, [(index, needs_goal)], _)] = purchase.funnels
    assert index == 4 and needs_goal is not None
    assert needs_goal.goal == "purchase" and needs_goal.events is None
    assert machine._plan("refund").funnels[0][2] == (None,)  # checkout's exclusion, by name alone
    assert machine._plan("no_such_event").funnels == ()
