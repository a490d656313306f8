"""The views as plain functions over the read protocols: the in-memory counters store and a small
alert reader stand in for Redis and the alerts service, with nothing running."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pytest

from streams.core.records.outputs import Alert
from streams.counters.memory_store import MemoryCounterStore
from streams.web import views
from tests.counters.conftest import BASE, CONFIG, MINUTE
from tests.counters.test_stores import batch, macro, milestone


@pytest.fixture
async def counters() -> MemoryCounterStore:
    store = MemoryCounterStore(app_id="web", shards=2, bucket_ms=MINUTE)
    await store.apply(0, batch([milestone(0, BASE, "a", "ios"), milestone(1, BASE + 5, "a", "ios")]))
    await store.apply(1, batch([milestone(0, BASE + 2 * MINUTE, "b", "web"), macro("m1", BASE, "a")]))
    return store


class Alerts:
    """An `AlertReader`: what the alerts service shows the web."""

    def __init__(self, alert: Alert) -> None:
        self.firing = {("checkout", "payment", "context.platform=mobile"): alert}
        self.history = deque([alert])

    def watermark(self) -> int | None:
        return BASE


def alert() -> Alert:
    return Alert.model_validate(
        {
            "id": "a1",
            "type": "alert",
            "state": "fired",
            "funnel": "checkout",
            "step": "payment",
            "step_index": 3,
            "by": {"context.platform": "mobile"},
            "timestamp": datetime(2024, 3, 13, 10, 20, tzinfo=UTC),
            "window": "12h",
            "baseline": "7d",
            "rate": 0.3,
            "baseline_rate": 0.8,
            "entered": 40,
            "baseline_entered": 400,
        }
    )


async def test_a_funnel_over_the_window_up_to_the_latest_counted_event(counters: MemoryCounterStore) -> None:
    status, body = await views.funnel(counters, CONFIG, "checkout", {"window": "10m"})
    assert status == 200
    assert body["end_ms"] == BASE + 3 * MINUTE  # the bucket after the latest event counted
    assert [s["entered"] for s in body["steps"][:2]] == [2, 1]
    status, early = await views.funnel(counters, CONFIG, "checkout", {"window": "2m"})
    assert status == 200 and [s["entered"] for s in early["steps"][:2]] == [1, 0]


async def test_a_breakdown_and_explicit_times(counters: MemoryCounterStore) -> None:
    query = {"start": str(BASE), "end": "2024-03-13T10:30:00+00:00", "by": "context.platform"}
    status, body = await views.funnel(counters, CONFIG, "checkout", query)
    assert status == 200
    assert [s["entered"] for s in body["breakdown"]["ios"][:2]] == [1, 1]
    assert [s["entered"] for s in body["breakdown"]["web"][:2]] == [1, 0]


@pytest.mark.parametrize(
    ("name", "query", "status", "says"),
    [
        ("nope", {}, 404, "no funnel 'nope'"),
        ("checkout", {"by": "campaign.nope"}, 400, "has no breakdown"),
        ("checkout", {"window": "soon"}, 400, "invalid duration"),
        ("checkout", {"start": "yesterday"}, 400, "unreadable time"),
        ("checkout", {"start": str(BASE), "end": str(BASE)}, 400, "start must be before end"),
        ("checkout", {"start": "0", "end": "4102444800000"}, 400, "narrow it"),
    ],
)
async def test_bad_queries_say_what_to_change(
    counters: MemoryCounterStore, name: str, query: dict[str, str], status: int, says: str
) -> None:
    answered, body = await views.funnel(counters, CONFIG, name, query)
    assert answered == status and says in body["error"]


async def test_goals_and_the_overview(counters: MemoryCounterStore) -> None:
    status, goals = await views.goals(counters, CONFIG, {"window": "1h"})
    assert status == 200 and goals["goals"]["purchase"]["count"] == 1
    status, overview = await views.overview(counters, CONFIG, {"window": "1h"})
    assert status == 200 and set(overview["funnels"]) == set(CONFIG.funnels_by_name)
    assert overview["goals"] == goals


async def test_live_has_everything_the_dashboard_shows(counters: MemoryCounterStore) -> None:
    query = {"window": "1h", "funnel": "checkout", "by": "context.platform"}
    status, body = await views.live(counters, CONFIG, Alerts(alert()), query)
    assert status == 200
    assert body["latest_event_ms"] == BASE + 2 * MINUTE
    assert set(body["funnels"]["checkout"]["breakdown"]) == {"ios", "web"}
    assert body["funnels"]["checkout"]["breakdowns"] == list(CONFIG.funnels_by_name["checkout"].breakdowns)
    assert [m["id"] for m in body["recent_macros"]] == ["m1"]
    assert body["alerts"]["watermark_ms"] == BASE
    assert [a["id"] for a in body["alerts"]["firing"]] == ["a1"]


def test_alerts_without_rules() -> None:
    assert views.alerts(None, CONFIG) == {"rules": 0, "firing": [], "recent": []}


def test_the_dashboard_ships_in_the_package() -> None:
    assert b"<html" in views.dashboard_asset("index.html").lower()
    assert set(views.DASHBOARD_FILES) == {
        "dashboard.js",
        "panels.js",
        "generations.js",
        "dashboard.css",
        "login.css",
    }
    assert b"<form" in views.dashboard_asset("login.html")
