"""The audience panel and the funnel's version selector in real headless Chromium, against a real
worker (broker and Redis from the session fixtures).

A worker on the example configuration (A) counts a simulated day of shop traffic whose events
carry user agents, addresses and locales (`Simulator.audience`); it is restarted on the same
configuration with checkout's window changed (B, a new definition version) and counts a second
day. The page then shows checkout's current version with a selector for the previous one (whose
steps read `#k`), and the audience panel's rows per device, browser, OS, country and language,
each column marked with its basis, sorted by clicking a header; and the Content-Security-Policy
blocks nothing. A screenshot of the page is left in the test's tmp dir.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page, async_playwright, expect

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.kafka import ensure_topics
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess
from tests.web.test_dashboard import CHROMIUM, CHROMIUM_ARGS, NONZERO

pytestmark = pytest.mark.browser

A = DEFAULT_FUNNELS.read_text()
B = A.replace("window: 7d", "window: 3d", 1)
USERS = 250


def _checkout(url: str, version: str) -> dict[str, object] | None:
    """checkout's report of `version` over the last week, or None while the server is not up."""
    try:
        with urllib.request.urlopen(f"{url}funnels/checkout?window=7d&version={version}", timeout=5) as r:
            body: dict[str, object] = orjson.loads(r.read())
            return body
    except (urllib.error.URLError, OSError):
        return None


def _wait_counted(url: str, version: str, worker: WorkerProcess) -> None:
    """Until the worker's counters hold checkout's first step for `version`."""
    deadline = time.monotonic() + 60
    while True:
        body = _checkout(url, version)
        steps = body["steps"] if body else []
        if isinstance(steps, list) and steps and steps[0]["entered"] > 0:
            return
        assert worker.running, worker.tail()
        assert time.monotonic() < deadline, f"version {version} never counted:\n{worker.tail()}"
        time.sleep(0.5)


def _web(port: int, config: Path) -> dict[str, str]:
    return {
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_WEB_PORT": str(port),
        "CONVERSIONS_FUNNELS": str(config),
    }


async def _numbers(page: Page, column: str) -> list[float]:
    cells = await page.locator(f"[data-testid=audience-row] td[data-column={column}]").all_inner_texts()
    return [float(c.replace(",", "").rstrip("%")) if c not in ("\u2013", "") else -1.0 for c in cells]


async def test_the_audience_panel_and_the_version_selector(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    config_a, config_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    config_a.write_text(A)
    config_b.write_text(B)
    va = compile_config(load_config(config_a)).funnels_by_name["checkout"].version
    vb = compile_config(load_config(config_b)).funnels_by_name["checkout"].version
    assert va != vb
    await ensure_topics(settings)
    first_day = Simulator(seed=11, users=USERS, days=1, bad_rate=0.0, audience=True)
    second_day = Simulator(
        seed=12, users=USERS, days=1, bad_rate=0.0, audience=True, start=first_day.start + timedelta(days=1)
    )

    port = free_port()
    worker = start_worker("a", env=_web(port, config_a))
    await produce_lines(settings, first_day.lines())
    _wait_counted(f"http://127.0.0.1:{port}/", va, worker)
    worker.stop()

    port = free_port()
    worker = start_worker("b", env=_web(port, config_b))
    await produce_lines(settings, second_day.lines())
    url = f"http://127.0.0.1:{port}/"
    _wait_counted(url, vb, worker)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1300, "height": 900})
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        console: list[str] = []  # Chromium reports what the Content-Security-Policy blocks here
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        await page.goto(url)
        await page.select_option("[data-testid=window-select]", "7d")

        # the current version, and the previous one on request: its own counts, steps as #k
        await expect(page.locator("[data-testid=funnel-version]")).to_have_text(
            f"version {vb}", timeout=20_000
        )
        choice = page.locator("[data-testid=version-choice]")
        await expect(choice).to_be_visible()
        options = page.locator("[data-testid=version-select] option")
        await expect(options).to_have_count(2)
        assert await options.evaluate_all("os => os.map(o => o.value)") == [vb, va]
        assert "previous" in await options.nth(1).inner_text()
        await expect(page.locator("[data-testid=version-note]")).to_be_hidden()
        await expect(page.locator('[data-testid=step][data-step="product_view"]')).to_have_attribute(
            "data-entered", NONZERO
        )
        await page.select_option("[data-testid=version-select]", va)
        note = page.locator("[data-testid=version-note]")
        await expect(note).to_be_visible(timeout=10_000)
        await expect(note).to_contain_text(va)
        await expect(page.locator('[data-testid=step][data-step="#0"]')).to_have_attribute(
            "data-entered", NONZERO, timeout=10_000
        )
        await page.select_option("[data-testid=version-select]", vb)
        await expect(note).to_be_hidden(timeout=10_000)
        await expect(page.locator('[data-testid=step][data-step="product_view"]')).to_be_visible()

        # the audience panel: a row per device of the simulated people, each column's basis stated
        rows = page.locator("[data-testid=audience-row]")
        await expect(page.locator('[data-testid=audience-row][data-value="desktop"]')).to_be_visible(
            timeout=30_000
        )
        await expect(page.locator('[data-testid=audience-row][data-value="mobile"]')).to_be_visible()
        assert min(await _numbers(page, "sessions")) > 0
        table = page.locator("[data-testid=audience-table]")
        assert await table.locator("th[data-sort=sessions]").get_attribute("data-basis") == "1"
        assert await table.locator("th[data-sort=conversions]").get_attribute("data-basis") == "2"
        assert await table.locator("th[data-sort=bounce_rate]").get_attribute("data-basis") == "1"
        bases = page.locator("[data-testid=audience-bases] [data-testid=basis]")
        await expect(bases).to_have_count(2)
        await expect(bases.nth(0)).to_contain_text("closed sessions")
        await expect(bases.nth(1)).to_contain_text("as they happen")
        headers = await table.locator("th").evaluate_all("ths => ths.map(t => t.dataset.sort)")
        assert headers == [
            "audience.device",
            "sessions",
            "converting_sessions",
            "conversion_rate",
            "conversions",
            "value",
            "avg_session_duration_ms",
            "pages_per_session",
            "bounce_rate",
        ]

        # another tab: countries, from the addresses' registry blocks
        await page.click("[data-testid=audience-tabs] button[data-dim='audience.country']")
        await expect(page.locator('[data-testid=audience-row][data-value="GB"]')).to_be_visible(
            timeout=10_000
        )
        countries = set(await rows.evaluate_all("rs => rs.map(r => r.dataset.value)"))
        # (a block's registry country is not always its neighbours': 2.16.x.1 spans several)
        assert {"GB", "DE", "FR", "ES"} <= countries, countries
        assert all(len(c) == 2 and c.isupper() for c in countries - {"(other)"}), countries

        # sorting: a click sorts by the column, descending; a second click ascending
        header = table.locator("th[data-sort=pages_per_session]")
        await header.click()
        await expect(header).to_have_attribute("aria-sort", "descending", timeout=10_000)
        values = await _numbers(page, "pages_per_session")
        assert values == sorted(values, reverse=True) and len(values) >= 4
        await header.click()
        await expect(header).to_have_attribute("aria-sort", "ascending", timeout=10_000)
        values = await _numbers(page, "pages_per_session")
        assert values == sorted(values)
        dim_header = table.locator("th[data-sort='audience.country']")
        await dim_header.click()
        await expect(dim_header).to_have_attribute("aria-sort", "ascending", timeout=10_000)
        names = await rows.evaluate_all("rs => rs.map(r => r.dataset.value)")
        assert names == sorted(names)

        # the channels table keeps GA4's channel names
        channels = page.locator("[data-testid=channel-row]")
        await expect(channels.first).to_be_visible()
        ga4 = set(await channels.evaluate_all("rs => rs.map(r => r.dataset.value)"))
        assert ga4 & {"Direct", "Organic Search", "Paid Search", "Email", "Referral"}, ga4

        await page.click("[data-testid=audience-tabs] button[data-dim='audience.device']")
        await expect(page.locator('[data-testid=audience-row][data-value="desktop"]')).to_be_visible()
        await page.select_option("[data-testid=version-select]", va)
        await expect(note).to_be_visible(timeout=10_000)
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        await browser.close()
    assert not page_errors, page_errors
    blocked = [line for line in console if "Content Security Policy" in line]
    assert not blocked, blocked
