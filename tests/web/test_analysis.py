"""The analysis views over the in-memory store: a step's trend and its alert overlay (against
sums computed by hand from the same outputs), the 400s that say what to change, and the access
token on a real aiohttp server."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine
from streams.core.measures import insights
from streams.core.measures.counters import increments
from streams.core.records.outputs import Alert
from streams.counters.base import CountedMessage
from streams.counters.memory_store import MemoryCounterStore
from streams.settings import DEFAULT_FUNNELS
from streams.web import analysis
from streams.web.auth import COOKIE, Access, middleware
from tests.counters.conftest import BASE, CONFIG, MINUTE
from tests.counters.test_stores import milestone
from tests.helpers import click

HOUR = 60 * MINUTE


def _counted(outputs: list[dict[str, Any]]) -> list[CountedMessage]:
    return [
        CountedMessage("t", i, str(o["id"]), increments(o, CONFIG, MINUTE)) for i, o in enumerate(outputs)
    ]


@pytest.fixture(scope="module")
async def shop() -> MemoryCounterStore:
    """25 hours of shipping (step 2) -> payment (step 3) on mobile: 10 shipping a minute, 8 paying,
    then from BASE + 24 h, 3 of 10 for half an hour (the incident), then 8 of 10 again."""
    outputs = []
    for minute in range(25 * 60):
        at = BASE - 24 * HOUR + minute * MINUTE
        paying = 3 if 24 * 60 <= minute < 24 * 60 + 30 else 8
        for i in range(10):
            outputs.append(milestone(2, at + i * 1000, f"u{minute}-{i}", "mobile"))
            if i < paying:
                outputs.append(milestone(3, at + i * 1000 + 500, f"u{minute}-{i}", "mobile"))
    store = MemoryCounterStore(app_id="a", shards=2, bucket_ms=MINUTE)
    await store.apply(0, _counted(outputs))
    return store


class Alerts:
    def __init__(self, *alerts: Alert) -> None:
        fired = [a for a in alerts if a.state == "fired"]
        self.firing = {("checkout", "payment", "context.platform=mobile"): fired[-1]} if fired else {}
        self.history = deque(reversed(alerts))

    def watermark(self) -> int | None:
        return None


def _alert(state: str, at_ms: int, baseline_rate: float) -> Alert:
    return Alert.model_validate(
        {
            "id": f"{state}-{at_ms}",
            "type": "alert",
            "state": state,
            "funnel": "checkout",
            "step": "payment",
            "step_index": 3,
            "by": {"context.platform": "mobile"},
            "timestamp": datetime.fromtimestamp(at_ms / 1000, UTC),
            "window": "15m",
            "baseline": "1d",
            "rate": 0.3,
            "baseline_rate": baseline_rate,
            "entered": 150,
            "baseline_entered": 14_000,
        }
    )


async def test_the_trend_and_what_the_alert_judges_at_each_bucket(shop: MemoryCounterStore) -> None:
    fired_at = BASE + 15 * MINUTE
    query = {"window": "1h", "by": "context.platform", "value": "mobile", "end": str(BASE + 45 * MINUTE)}
    status, body = await analysis.series(
        shop, CONFIG, Alerts(_alert("fired", fired_at, 0.8)), "checkout", query
    )
    assert status == 200, body
    assert body["step"] == "payment" and body["bucket_ms"] == MINUTE and len(body["buckets"]) == 60
    rates = [b["rate"] for b in body["buckets"]]
    assert rates[:15] == [0.8] * 15 and rates[15:45] == [0.3] * 30
    assert [b["entered_previous"] for b in body["buckets"]] == [10] * 60
    overlay = body["alert"]
    assert overlay["rule"]["window"] == "15m" and overlay["note"] is None
    points = {p["end_ms"]: p for p in overlay["points"]}
    before = points[BASE]  # window [BASE - 15m, BASE) and a day of 0.8 before it
    assert before["rate"] == pytest.approx(0.8) and before["entered_previous"] == 150
    assert before["baseline_rate"] == pytest.approx(0.8) and not before["frozen"]
    assert before["fire_below"] == pytest.approx(0.56) and before["resolve_above"] == pytest.approx(0.68)
    mid = points[BASE + 15 * MINUTE]
    assert mid["rate"] == pytest.approx(0.3) and mid["frozen"] and mid["baseline_rate"] == 0.8
    assert [c["state"] for c in overlay["changes"]] == ["fired"]

    # unfrozen, the baseline at BASE + 30m is a day of minutes, 15 of them from the incident
    status, plain = await analysis.series(shop, CONFIG, None, "checkout", query)
    point = next(p for p in plain["alert"]["points"] if p["end_ms"] == BASE + 30 * MINUTE)
    assert point["baseline_entered_previous"] == 10 * (24 * 60 - 15)
    expected = (8 * (24 * 60 - 30) + 3 * 15) / (10 * (24 * 60 - 15))
    assert point["baseline_rate"] == pytest.approx(expected)


async def test_a_coarse_trend_says_how_it_draws_the_window(shop: MemoryCounterStore) -> None:
    query = {"window": "24h", "by": "context.platform", "value": "mobile", "end": str(BASE + HOUR)}
    status, body = await analysis.series(shop, CONFIG, None, "checkout", query)
    assert status == 200 and body["bucket_ms"] == HOUR and len(body["buckets"]) == 24
    assert "drawn as 1h" in body["alert"]["note"]
    status, overall = await analysis.series(
        shop, CONFIG, None, "checkout", {"window": "1h", "step": "payment"}
    )
    assert (
        status == 200
        and overall["alert"] is None
        and overall["rules"] == [{"by": ["context.platform"], "window": "15m"}]
    ), "the rule judges each platform: no overlay for all of them together"


@pytest.mark.parametrize(
    ("view", "query", "says"),
    [
        ("series", {"step": "nope"}, "has no step 'nope'"),
        ("series", {"step": "product_view"}, "first step"),
        ("series", {"by": "context.platform"}, "by and value go together"),
        ("series", {"by": "nope", "value": "x"}, "has no breakdown"),
        ("series", {"bucket": "90s"}, "multiple of the counters' 1m"),
        ("series", {"window": "7d", "bucket": "1m"}, "at most 1000"),
        ("series", {"colour": "red"}, "unknown parameter 'colour'"),
        ("progress", {"window": "later"}, "invalid duration"),
        ("ttc", {"by": "x"}, "unknown parameter 'by'"),
        ("channels", {"dimension": "country"}, "dimension must be one of"),  # audience.country is one
        ("channels", {"goal": "nope"}, "no goal 'nope'"),
        ("channels", {"sort": "nope"}, "cannot sort by"),
        ("channels", {"limit": "0"}, "between 1 and 500"),
        ("channels", {"limit": "ten"}, "whole number"),
        ("channels", {"split": "platform"}, "split must be visitor_type"),
        ("channels", {"start": "0", "end": "4102444800000"}, "narrow it"),
    ],
)
async def test_bad_parameters_say_what_to_change(
    shop: MemoryCounterStore, view: str, query: dict[str, str], says: str
) -> None:
    if view == "series":
        status, body = await analysis.series(shop, CONFIG, None, "checkout", query)
    elif view == "progress":
        status, body = await analysis.progress_view(shop, CONFIG, "checkout", query)
    elif view == "ttc":
        status, body = await analysis.time_to_convert_view(shop, CONFIG, "checkout", query)
    else:
        status, body = await analysis.channels(shop, CONFIG, query)
    assert status == 400 and says in body["error"], body


async def test_unknown_funnels_are_404(shop: MemoryCounterStore) -> None:
    for view in (analysis.progress_view, analysis.time_to_convert_view):
        status, body = await view(shop, CONFIG, "nope", {})
        assert status == 404 and body["funnels"] == sorted(CONFIG.funnels_by_name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    """A real aiohttp server with the guard in front of a page and /metrics."""
    access = Access(web_token="w" * 32, metrics_token="m" * 32)
    app = web.Application(middlewares=[middleware(access)])

    async def page(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/live", page)
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_token_is_needed_as_bearer_or_signed_in_cookie(guarded: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{guarded}/live") as response:
            assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
            assert "needs a token" in (await response.json())["error"]
        async with http.get(f"{guarded}/live", headers={"Accept": "text/html"}) as response:
            assert response.status == 401 and 'action="/login"' in await response.text()
        async with http.get(f"{guarded}/live", headers={"Authorization": "Bearer " + "x" * 32}) as response:
            assert response.status == 401
        async with http.get(f"{guarded}/live", headers={"Authorization": "Bearer " + "w" * 32}) as response:
            assert response.status == 200
        async with http.post(f"{guarded}/login", data={"token": "nope"}, allow_redirects=False) as response:
            assert response.status == 401 and "not the one" in await response.text()
        async with http.post(f"{guarded}/login", data={"token": "w" * 32}, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/"
            cookie = response.cookies[COOKIE]
            assert "w" * 8 not in cookie.value, "the cookie is not the token"
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with http.get(f"{guarded}/live") as response:
            assert response.status == 200, "the session cookie is enough"
        # /metrics has its own token; the web cookie does not open it
        async with http.get(f"{guarded}/metrics") as response:
            assert response.status == 401
        async with http.get(
            f"{guarded}/metrics", headers={"Authorization": "Bearer " + "m" * 32}
        ) as response:
            assert response.status == 200


def test_metrics_can_be_public_and_nothing_is_guarded_without_tokens() -> None:
    public = Access(web_token="w" * 32, metrics_public=True)
    assert public.allows("/metrics", None, None) and not public.allows("/live", None, None)
    assert public.allows("/live", "Bearer " + "w" * 32, None)
    assert not Access(web_token=None).enabled and Access(web_token=None).allows("/live", None, None)
    web_only = Access(web_token="w" * 32)
    assert web_only.allows("/metrics", "bearer " + "w" * 32, None), "the web token opens /metrics then"


async def test_progress_counts_attempts_carried_over_to_a_new_version() -> None:
    """A step renamed (a compatible change): the attempts open at the restart are carried over.
    The new version's progress shows them entered and in progress at the steps they had reached;
    the old version's no longer shows them in progress (issue 25: `ci`/`co` fields)."""
    a = CONFIG
    b_source = DEFAULT_FUNNELS.read_text().replace("{name: add_to_cart,  match", "{name: basket, match")
    b = compile_config(parse_config(b_source))
    va, vb = a.funnels_by_name["checkout"].version, b.funnels_by_name["checkout"].version
    assert va != vb

    def at(minute: int, name: str, user: str) -> ClickEvent:
        return click(name, f"2024-03-13T10:{minute:02d}:00Z", user, session_id=f"s-{user}")

    store: dict[str, bytes] = {}
    first = Engine(a, store, 1, expected_sources=["s"])
    under_a = []
    for e in [at(0, "product_view", "u1"), at(1, "add_to_cart", "u1"), at(2, "product_view", "u2")]:
        under_a += first.process(e, 0) + first.observe(0, "s", e.ts_ms)
    first.flush()
    second = Engine(b, store, 1, expected_sources=["s"], known=[a.funnels_by_name["checkout"].definition])  # type: ignore[list-item]
    second.rebuild_deadlines(0, list(store))
    under_b = []
    for e in [
        at(5, "product_view", "u3"),
        at(6, "newsletter_signup", "u1"),
        at(6, "newsletter_signup", "u2"),
    ]:
        under_b += second.process(e, 0) + second.observe(0, "s", e.ts_ms)
    assert sorted(str(o.identity) for o in under_b if o.type == "carried") == ["u1", "u2"]

    counters = MemoryCounterStore(app_id="a", shards=1, bucket_ms=MINUTE)
    offset = 0  # what the counters process did under A, then after its restart under B
    for config, outputs in ((a, under_a), (b, under_b)):
        messages = []
        for output in outputs:
            dumped = output.model_dump(mode="json")
            messages.append(CountedMessage("t", offset, dumped["id"], increments(dumped, config, MINUTE)))
            offset += 1
        await counters.apply(0, messages)
    window = {"start": "2024-03-13T00:00:00+00:00", "end": "2024-03-14T00:00:00+00:00"}

    status, body = await analysis.progress_view(counters, b, "checkout", window)
    assert status == 200, body
    rows = {r["step"]: r for r in body["steps"]}
    # u1 (carried at basket), u2 (carried at product_view), u3 (opened under B)
    assert [(r["entered"], r["in_progress"], r["carried_in"]) for r in body["steps"][:2]] == [
        (3, 2, 2),
        (1, 1, 1),
    ]
    assert rows["basket"]["reached_next"] == 0 and rows["product_view"]["reached_next"] == 1
    assert body["overall"]["entered"] == 3 and body["overall"]["in_progress"] == 3

    # the old version's cohort: both left it, neither dropped nor in progress there
    size, cohorts = await counters.cohorts(f"checkout@{va}", body["start_ms"], body["end_ms"])
    rows_a = insights.progress(cohorts, size, BASE, [s.name for s in a.funnels_by_name["checkout"].steps], {})
    assert [(r["entered"], r["in_progress"], r["dropped"], r["carried_out"]) for r in rows_a[:2]] == [
        (2, 0, 0, 1),
        (1, 0, 0, 1),
    ]


async def test_a_bucket_whose_arrivals_outnumber_its_entries_shows_at_most_100_percent() -> None:
    """Shipping entered in one minute, payment reached in the next: the second minute has two
    arrivals at payment and none or one at shipping. Its rate is 1 (the alert's clamp), its counts
    as counted."""
    outputs = [
        milestone(2, BASE, "a", "mobile"),
        milestone(2, BASE + 1000, "b", "mobile"),
        milestone(2, BASE + MINUTE, "c", "mobile"),
        milestone(3, BASE + MINUTE + 500, "a", "mobile"),
        milestone(3, BASE + MINUTE + 700, "b", "mobile"),
    ]
    store = MemoryCounterStore(app_id="a", shards=2, bucket_ms=MINUTE)
    await store.apply(0, _counted(outputs))
    query = {"start": str(BASE), "end": str(BASE + 2 * MINUTE), "step": "payment"}
    status, body = await analysis.series(store, CONFIG, None, "checkout", query)
    assert status == 200, body
    buckets = [(b["entered_previous"], b["entered"], b["rate"]) for b in body["buckets"]]
    assert buckets == [(2, 0, 0.0), (1, 2, 1.0)]
