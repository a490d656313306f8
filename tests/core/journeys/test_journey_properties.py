"""Properties of the journey engine over generated clickstreams (hypothesis)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine

STEPS = ["product_view", "add_to_cart", "payment_details", "purchase"]
NAMES = [*STEPS, "refund", "page_view", "newsletter_signup"]
START = datetime(2024, 3, 13, tzinfo=UTC)


def config(
    order: str = "sequential",
    window: str = "none",
    scope: str = "user",
    exclusions: bool = True,
    within: str = "none",
) -> CompiledConfig:
    exclusion = "    exclusions: [{match: {event: refund}}]\n" if exclusions else ""
    return compile_config(
        parse_config(f"""
version: 1
session_timeout: 30m
goals: [{{name: purchase, match: {{event: purchase}}}}]
funnels:
  - name: f
    order: {order}
    window: {window}
    scope: {scope}
    stalled_after: 20m
    steps:
      - {{name: product_view, match: {{event: product_view}}}}
      - {{name: add_to_cart, match: {{event: add_to_cart}}, within: {within}}}
      - {{name: payment_details, match: {{event: payment_details}}}}
      - {{name: purchase, match: {{goal: purchase}}}}
{exclusion}micro: [{{name: newsletter, match: {{event: newsletter_signup}}}}]
""")
    )


@st.composite
def clickstreams(draw: st.DrawFn, max_events: int = 40) -> list[dict[str, Any]]:
    """Events of 1-3 users in time order; gaps from seconds to hours; some re-sent."""
    count = draw(st.integers(1, max_events))
    at = START
    events: list[dict[str, Any]] = []
    for i in range(count):
        at += timedelta(seconds=draw(st.sampled_from([0, 5, 60, 600, 1500, 1900, 3700, 9000])))
        user = draw(st.sampled_from(["ann", "bob", "cid"]))
        body = {
            "event_id": f"e{i}",
            "event": draw(st.sampled_from(NAMES)),
            "user_id": user,
            "timestamp": at.isoformat(),
        }
        if draw(st.booleans()) and draw(st.booleans()):
            body["session_id"] = f"{user}-s{draw(st.integers(0, 2))}"
        events.append(body)
        if draw(st.integers(0, 9)) == 0:
            events.append(dict(draw(st.sampled_from(events))))  # an at-least-once redelivery
    return events


def run(cfg: CompiledConfig, events: list[dict[str, Any]], flush: bool = True) -> list[dict[str, Any]]:
    engine = Engine(cfg, {}, 1, expected_sources=["s"])
    out = []
    latest = 0
    for body in events:
        click = ClickEvent.model_validate(body)
        latest = max(latest, click.ts_ms)
        out += engine.process(click, 0)
        out += engine.observe(0, "s", latest)
    if flush:
        out += engine.observe(0, "s", latest + 400 * 86_400_000)
    return [o.model_dump(mode="json") for o in out]


def without_redeliveries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for body in events:
        if body["event_id"] not in seen:
            seen.add(body["event_id"])
            kept.append(body)
    return kept


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
orders = st.sampled_from(["sequential", "strict", "any"])
windows = st.sampled_from(["none", "1h", "3h"])
scopes = st.sampled_from(["user", "session"])


@common
@given(events=clickstreams(), order=orders, window=windows, scope=scopes)
def test_deterministic_and_ids_unique(
    events: list[dict[str, Any]], order: str, window: str, scope: str
) -> None:
    cfg = config(order, window, scope)
    first, second = run(cfg, events), run(cfg, events)
    assert first == second
    by_id: dict[str, dict[str, Any]] = {}
    for output in first:
        assert by_id.setdefault(output["id"], output) == output, "one id, one content"
        if output["type"] != "deadletter":  # a late duplicate is reported each time it comes
            assert sum(o["id"] == output["id"] for o in first) == 1


@common
@given(events=clickstreams(max_events=80), order=orders, window=windows)
def test_redeliveries_are_never_applied_twice(events: list[dict[str, Any]], order: str, window: str) -> None:
    """A duplicate is skipped, or, when older than the late tolerance, reported as late: the
    outputs are those of the clickstream without duplicates, plus those late reports."""
    cfg = config(order, window)
    with_duplicates = run(cfg, events)
    late_duplicates = [o for o in with_duplicates if o["type"] == "deadletter"]
    assert all(o["reason"] == "late_event" for o in late_duplicates)
    clean = [o for o in with_duplicates if o["type"] != "deadletter"]
    assert clean == [o for o in run(cfg, without_redeliveries(events)) if o["type"] != "deadletter"]


@common
@given(events=clickstreams(max_events=60))
def test_sequential_reach_equals_an_independent_subsequence_count(events: list[dict[str, Any]]) -> None:
    """With no window and no exclusions, a user reaches step k iff steps 0..k occur in order
    (events of one millisecond count in step order, as ClickHouse's windowFunnel sorts them)."""
    events = without_redeliveries(events)
    out = run(config("sequential", "none", exclusions=False), events)
    reached = {(o["user_id"], o["step_index"]) for o in out if o["type"] == "micro" and o.get("funnel")}
    for user in {e["user_id"] for e in events}:
        mine = [e for e in events if e["user_id"] == user]
        names = [e["event"] for e in sorted(mine, key=lambda e: (e["timestamp"], NAMES.index(e["event"])))]
        for k in range(len(STEPS)):
            position, found = 0, True
            for step in STEPS[: k + 1]:
                try:
                    position = names.index(step, position) + 1
                except ValueError:
                    found = False
                    break
            assert ((user, k) in reached) == found, (user, k, names)


@common
@given(events=clickstreams(), order=orders, window=st.sampled_from(["1h", "3h"]), scope=scopes)
def test_attempts_never_outlive_their_window(
    events: list[dict[str, Any]], order: str, window: str, scope: str
) -> None:
    """An ordered funnel's step (and its end) lies within `window` of the user's latest step-1
    event (the chain that reached it started at one, no earlier); `any` keeps one window from
    the attempt's first step."""
    limit = timedelta(milliseconds={"1h": 3_600_000, "3h": 10_800_000}[window])
    step_one = defaultdict(list)
    for e in without_redeliveries(events):
        if e["event"] == STEPS[0]:
            step_one[e["user_id"]].append(datetime.fromisoformat(e["timestamp"]))
    started: dict[str, datetime] = {}
    done: dict[str, set[int]] = defaultdict(set)
    for o in run(config(order, window, scope), events):
        user = o["user_id"]
        if o["type"] not in ("micro", "dropoff") or not o.get("funnel"):
            continue
        at = datetime.fromisoformat(o["timestamp"])
        anchor = started.get(user, at) if order == "any" else max(s for s in step_one[user] if s <= at)
        assert at - anchor <= limit
        if o["type"] == "micro":
            started.setdefault(user, at)
            assert o["step_index"] not in done[user], "a step counts once per attempt"
            done[user].add(o["step_index"])
            if o["final"]:
                started.pop(user)
                done.pop(user)
        else:
            assert user in started, "a dropoff ends an attempt that started"
            started.pop(user)
            done.pop(user, None)


@common
@given(events=clickstreams(), order=orders)
def test_sessions_account_for_every_event_once(events: list[dict[str, Any]], order: str) -> None:
    events = without_redeliveries(events)
    out = run(config(order, "none"), events)
    sessions = [o for o in out if o["type"] == "session"]
    late = [o for o in out if o["type"] == "deadletter"]
    assert sum(s["events"] for s in sessions) + len(late) == len(events)
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sessions:
        by_user[s["user_id"]].append(s)
    for user_sessions in by_user.values():
        spans = sorted((s["started_at"], s["ended_at"]) for s in user_sessions)
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, "sessions of one user do not overlap"


@common
@given(events=clickstreams())
def test_exclusions_fire_only_on_an_excluded_event(events: list[dict[str, Any]]) -> None:
    refunds = {
        (e["user_id"], datetime.fromisoformat(e["timestamp"])) for e in events if e["event"] == "refund"
    }
    for o in run(config("sequential", "none"), events):
        if o["type"] == "dropoff" and o["reason"] == "excluded":
            assert (o["user_id"], datetime.fromisoformat(o["timestamp"])) in refunds
