"""A `deploy` seen through the dashboard, in headless Chromium, on the real broker and Redis
(issue 26, item 8): a day of simulated traffic is history, live traffic keeps flowing, a new
configuration (one more funnel, an alert rule, an experiment) reprocesses in generation 1 on two
workers while generation 0 serves, catches up and cuts over.

The page is served by a worker of generation 1 (generation 0's stop at the flip) and polled every
100 ms across the flip: it shows the reprocessing panel while generation 1 replays, then "cut over
at HH:MM" and the new funnel with its whole history; the checkout funnel it shows is never empty
and never counted twice (always between generation 0's count before the deploy and the history
plus the live events sent so far). Generation 1's counters run in a `conversions counters`
process of that generation, started once the page shows the panel: until then generation 1 cannot
catch up, so the panel is seen whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import async_playwright, expect
from redis.asyncio import Redis

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.generations.registry import Registry
from streams.kafka import ensure_topics
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import LocalInfra, free_port
from streams.tools.producer import clickstream_producer
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import get_json, wait_for
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE
from tests.web.test_dashboard import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

A = """
version: 1
goals:
  - {name: purchase, match: {event: purchase}}
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: product_view, match: {event: product_view}}
      - {name: add_to_cart, match: {event: add_to_cart}}
      - {name: purchase, match: {goal: purchase}}
identity: {stitch: false}
"""
B = A.replace(
    "identity:",
    """  - name: delivery
    window: 1d
    steps:
      - {name: shipping, match: {event: shipping_details}}
      - {name: payment, match: {event: payment_details}}
alerts:
  - {funnel: delivery, step: payment, window: 15m, baseline: 1h, min_entered: 5, relative_drop: 0.5}
experiments:
  - {name: layout, funnel: checkout, variant: properties.variant, control: control, step: add_to_cart}
identity:""",
)
NUMBER = re.compile(r"^[0-9]+$")
LIVE_START = datetime(2024, 3, 12, tzinfo=UTC)  # the day after the history
HISTORY = {"start": "2024-03-11T00:00:00+00:00", "end": LIVE_START.isoformat()}
SAMPLE = """() => {
  const panel = document.getElementById("generation");
  return {
    panel: panel.hidden ? "hidden" : panel.dataset.state,
    number: panel.dataset.number || "",
    lag: panel.dataset.lag || "",
    text: document.getElementById("generation-text").textContent,
    window: document.getElementById("window-label").textContent,
    funnels: [...document.querySelectorAll("#funnel option")].map((o) => o.value),
    steps: [...document.querySelectorAll("[data-testid=step]")].map((s) => [
      s.dataset.step, +s.dataset.entered,
    ]),
  };
}"""


def person(line: bytes) -> bytes:
    """The person whose journey an event joins (`stitch: false`: the user id, else the anonymous
    one): keyed by it, as a collector keys them, each journey's events stay in order on one
    partition. (Keyed by device instead, a person's events on two devices reach two partitions,
    and a replay that reads one partition far ahead of the other judges some late: not what this
    test is about.)"""
    body = orjson.loads(line)
    return str(body.get("user_id") or body["anonymous_id"]).encode()


async def send(settings: Settings, lines: list[bytes]) -> None:
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for line in lines:
            await producer.send(settings.topic("clickstream"), line, key=person(line))
        await producer.flush()
    finally:
        await producer.stop()


def entered_first(settings: Settings, text: str, lines: list[bytes], funnel: str) -> int:
    """Offline mode's count of attempts entering `funnel` over `lines`."""
    run = OfflineRun(
        compile_config(parse_config(text)), settings.partitions, enrichment=settings.enrichment()
    )
    outputs = [orjson.loads(o.to_json()) for o in run.run(lines)]
    return sum(1 for o in outputs if o["type"] == "micro" and o["funnel"] == funnel and o["step_index"] == 0)


@pytest.mark.timeout(300)
async def test_the_dashboard_across_a_deploy_shows_progress_then_the_new_funnel_never_empty(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    infra: LocalInfra,
) -> None:
    config_a, config_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    config_a.write_text(A)
    config_b.write_text(B)
    history = list(Simulator(seed=11, users=400, days=1).lines())  # about 3,200 events
    whole = entered_first(settings, A, history, "checkout")
    delivery = entered_first(settings, B, history, "delivery")
    assert whole > 100 and delivery > 20
    await ensure_topics(settings)
    # a partition silent while the workers join must not let the others run ahead (late events)
    env = {**worker_env, **SOURCE_IDLE, "CONVERSIONS_FUNNELS": str(config_a)}
    g0_port, page_port, other_port = free_port(), free_port(), free_port()
    start_worker("g0", env={**env, "CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(g0_port)})
    await send(settings, history)

    async def first_step(port: int) -> int:
        report = await get_json(port, "/funnels/checkout", window="7d")
        return int(report["steps"][0]["entered"])

    settled: list[int] = []

    async def counted() -> bool:  # generation 0's count, unchanged over two seconds
        settled.append(await first_step(g0_port))
        return len(settled) > 4 and settled[-1] > 0 and settled[-1] == settled[-5]

    await wait_for(counted, timeout_s=90)
    before = settled[-1]
    day = await get_json(g0_port, "/funnels/checkout", **HISTORY)

    sent = 0
    flowing = True

    async def live_traffic() -> None:  # new people viewing a product, five a second
        nonlocal sent
        producer = clickstream_producer(settings)
        await producer.start()
        try:
            while flowing:
                at = LIVE_START + timedelta(seconds=sent)
                body = {"event_id": f"live-{sent}", "event": "product_view", "user_id": f"live-{sent}"}
                line = orjson.dumps({**body, "timestamp": at.isoformat()})
                await producer.send_and_wait(settings.topic("clickstream"), line, key=person(line))
                sent += 1
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()

    traffic = asyncio.create_task(live_traffic())
    deploy_log = (tmp_path / "deploy.log").open("wb")
    deploy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "deploy", "--config", str(config_b), "--workers", "0",
        "--accept-short-history", "--max-lag", "50",
        env={**os.environ, **env}, stdout=deploy_log, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    counters: WorkerProcess | None = None
    try:
        await wait_for(lambda: registry.get(1), timeout_s=60)
        one = {**env, "CONVERSIONS_GENERATION": "1", "CONVERSIONS_COUNTERS_ENABLED": "false"}
        one["CONVERSIONS_WEB_ENABLED"] = "true"
        start_worker("g1-a", env={**one, "CONVERSIONS_WEB_PORT": str(page_port)})
        start_worker("g1-b", env={**one, "CONVERSIONS_WEB_PORT": str(other_port)})

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1300, "height": 900})
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            url = f"http://127.0.0.1:{page_port}/"
            await page.goto(url)
            await page.select_option("[data-testid=window-select]", "7d")
            panel = page.locator("[data-testid=generation]")
            await expect(panel).to_have_attribute("data-state", "reprocessing", timeout=30_000)
            await expect(panel).to_have_attribute("data-lag", NUMBER, timeout=30_000)
            await expect(page.locator("#window-label")).to_contain_text("2024-03-05")  # 7 days shown

            samples: list[dict[str, Any]] = []
            alerts: list[tuple[int, list[str]]] = []  # /alerts' rules, /experiments' names

            async def sample_until_after_the_flip() -> None:
                flipped_at = None
                loop = asyncio.get_running_loop()
                while flipped_at is None or loop.time() - flipped_at < 4:
                    samples.append({**await page.evaluate(SAMPLE), "sent": sent})
                    if len(samples) % 5 == 0:
                        rules = (await (await page.request.get(url + "alerts")).json())["rules"]
                        shown = (await (await page.request.get(url + "experiments")).json())["experiments"]
                        alerts.append((rules, [e["name"] for e in shown]))
                    if flipped_at is None and samples[-1]["panel"] == "cut-over":
                        flipped_at = loop.time()
                    assert loop.time() < started + 150, "no cut-over within 150 s"
                    await asyncio.sleep(0.1)

            started = asyncio.get_running_loop().time()
            sampling = asyncio.create_task(sample_until_after_the_flip())
            await asyncio.sleep(2)  # the panel under reprocessing, sampled
            counters = WorkerProcess(
                {**env, "CONVERSIONS_GENERATION": "1"}, tmp_path / "g1-counters.log", command="counters"
            ).start(wait_ready_s=90)
            try:
                await sampling
            finally:
                sampling.cancel()
                flowing = False
                await traffic

            # the cut-over as the page says it, at the minute the registry recorded
            live = await registry.get(1)
            assert live is not None and live.state == "live" and live.live_ms is not None
            hhmm = datetime.fromtimestamp(live.live_ms / 1000, UTC).strftime("%H:%M")
            await expect(page.locator("[data-testid=generation-text]")).to_contain_text(
                f"cut over at {hhmm} UTC"
            )
            # the unchanged funnel's day of history: generation 1 counted it as 0 had, step by step
            assert (await get_json(page_port, "/funnels/checkout", **HISTORY))["steps"] == day["steps"]
            # the new funnel, with its whole history, chosen on the page
            await page.select_option("[data-testid=funnel-select]", "delivery")
            shipping = page.locator('[data-testid=step][data-step="shipping"]')
            await expect(shipping).to_have_attribute("data-entered", str(delivery), timeout=10_000)
            await browser.close()
        assert not page_errors, page_errors
        assert not [line for line in console if "Content Security Policy" in line], console

        states = [s["panel"] for s in samples]
        assert states[0] == "reprocessing" and states[-1] == "cut-over", states
        flip = states.index("cut-over")
        assert set(states[:flip]) == {"reprocessing"} and set(states[flip:]) == {"cut-over"}, states
        assert all(s["number"] == "1" for s in samples)
        assert all("event time" in s["text"] and "lag" in s["text"] for s in samples[:flip])
        # never empty, never twice: one whole generation's count every time
        shown = [(s["panel"], dict(s["steps"]).get("product_view"), s["sent"], s["window"]) for s in samples]
        wrong = [
            i for i, (_, count, sent, _) in enumerate(shown) if not before <= (count or 0) <= whole + sent
        ]
        assert not wrong, (before, whole, [shown[i] for i in range(max(0, wrong[0] - 3), wrong[0] + 3)])
        # the new funnel is offered from the flip on, never before (it has no partial history)
        assert not any("delivery" in s["funnels"] for s in samples[:flip])
        assert "delivery" in samples[-1]["funnels"]
        # /alerts and /experiments: generation 0's configuration until the flip, then 1's
        assert alerts[0] == (0, []) and alerts[-1] == (1, ["layout"]), alerts
        assert alerts == sorted(alerts), "they never went back"
        assert counters.running  # the counters process of the live generation counts on
        counters.stop()
        assert not counters.error_lines()
    finally:
        if counters is not None:
            counters.stop()
        if deploy.returncode is None:
            deploy.terminate()
            await asyncio.wait_for(deploy.wait(), 30)
        deploy_log.close()
        await redis.aclose()
    text = (tmp_path / "deploy.log").read_text()
    assert "cut over: generation 1 is current" in text, text
