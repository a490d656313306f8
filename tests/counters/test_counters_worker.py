"""Counters through the real worker: the API's step counts equal offline mode's for the same
window, and a worker killed before committing any offset, whose successor gets everything
redelivered, leaves them unchanged."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, offline_outputs, send_ticks, traffic

WINDOW = {"start": "2024-03-10T00:00:00+00:00", "end": "2024-05-20T00:00:00+00:00"}


async def get_json(port: int, path: str, **query: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", params=query) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def get_metric(port: int, name: str, labels: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    selector = re.escape(name) + (rf"\{{{re.escape(labels)}\}}" if labels else "")
    match = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def expected_steps(outputs: list[dict[str, Any]]) -> tuple[list[int], Counter[tuple[int, str]]]:
    entered = Counter(
        o["step_index"] for o in outputs if o["type"] == "micro" and o.get("funnel") == "checkout"
    )
    dropped = Counter(
        (o["step_index"], o["reason"])
        for o in outputs
        if o["type"] == "dropoff" and o["funnel"] == "checkout"
    )
    return [entered[k] for k in range(5)], dropped


async def wait_for(check: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"condition not met in {timeout_s} s; last: {last}")


@pytest.mark.timeout(400)
async def test_api_counts_equal_offline_and_survive_a_crash_before_commit(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    lines, ticks = traffic(users=500, seed=31)
    expected = offline_outputs(settings, lines + ticks)
    entered, dropped = expected_steps(expected)
    port = free_port()
    crashy = {
        **SOURCE_IDLE,
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_WEB_PORT": str(port),
        "CONVERSIONS_COMMIT_INTERVAL_S": "3600",
    }  # nothing is committed before the kill

    await ensure_topics(settings)
    first = start_worker("first", env=crashy)
    await produce_lines(settings, lines)
    await send_ticks(settings, ticks)

    dropped_per_step = [sum(v for (k, _), v in dropped.items() if k == index) for index in range(5)]

    async def settled() -> dict[str, Any] | None:
        report = await get_json(port, "/funnels/checkout", **WINDOW)
        counts = [s["entered"] for s in report["steps"]], [s["dropped"] for s in report["steps"]]
        return report if counts == (entered, dropped_per_step) else None

    report = await wait_for(settled)
    assert [s["entered"] for s in report["steps"]] == entered
    for step in report["steps"]:
        for reason, count in step["dropped_by_reason"].items():
            assert dropped[(step["index"], reason)] == count
        assert sum(step["dropped_by_reason"].values()) == sum(
            v for (k, _), v in dropped.items() if k == step["index"]
        )
        exact = len(
            {
                o["user_id"] or o["anonymous_id"]
                for o in expected
                if o["type"] == "micro" and o.get("funnel") == "checkout" and o["step_index"] == step["index"]
            }
        )
        assert abs(step["unique_users"] - exact) <= max(2, exact * 0.02)  # HyperLogLog
    by_platform = await get_json(port, "/funnels/checkout", by="context.platform", **WINDOW)
    assert sum(rows[0]["entered"] for rows in by_platform["breakdown"].values()) == entered[0]
    goals = await get_json(port, "/goals", **WINDOW)
    assert goals["goals"]["purchase"]["count"] == sum(
        1 for o in expected if o["type"] == "macro" and o["goal"] == "purchase"
    )
    await asyncio.sleep(2)  # let the counters agent apply whatever stragglers there are
    before = await get_json(port, "/funnels", **WINDOW)
    counted = await get_metric(port, "conversions_counter_messages_total", 'result="applied"')
    assert counted > 0
    first.kill()

    # the successor's counters read every output message again (a new group starts at the beginning)
    second = start_worker("second", env={**crashy, "CONVERSIONS_COUNTERS_GROUP": "redelivery"})
    await wait_for(lambda: _skipped_at_least(port, counted))
    await asyncio.sleep(3)
    after = await get_json(port, "/funnels", **WINDOW)
    assert after == before
    assert "journeys recovered" in second.log_text()


async def _skipped_at_least(port: int, count: float) -> bool:
    return await get_metric(port, "conversions_counter_messages_total", 'result="skipped"') >= count


async def test_api_refuses_bad_queries(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    await ensure_topics(settings)
    start_worker(env={"CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(port)})
    async with aiohttp.ClientSession() as session:
        for path, status in [
            ("/funnels/nope", 404),
            ("/funnels/checkout?by=context.locale", 400),
            ("/funnels/checkout?window=soon", 400),
            ("/funnels?start=later", 400),
        ]:
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                assert response.status == status, path
                assert "error" in await response.json()
        async with session.post(f"http://127.0.0.1:{port}/funnels") as response:
            assert response.status == 405, "the web server is read-only"
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert "conversions_events_in_total" in await response.text()

    now = datetime.now(UTC)
    live = [
        {
            "event_id": f"live-{i}",
            "event": name,
            "user_id": user,
            "timestamp": (now + timedelta(seconds=i)).isoformat(),
        }
        for i, (user, name) in enumerate([("a", "product_view"), ("b", "product_view"), ("a", "add_to_cart")])
    ]
    await produce_lines(settings, [orjson.dumps(e) for e in live])
    rate = await wait_for(
        lambda: get_metric(port, "conversions_step_rate", 'funnel="checkout",step="add_to_cart"'),
        timeout_s=60,
    )
    assert rate == 0.5
