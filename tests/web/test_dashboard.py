"""The live dashboard in real headless Chromium, against the demo a new user runs.

The demo starts its own broker, Redis and worker, and sends shop traffic on a simulated clock
60x faster than real time with an incident planted at 20 simulated minutes (the mobile payment
rate falls from 0.8 to 0.3), so the example config's payment alert fires within minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from streams.tools.infra import free_port

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# without the background-networking flags Chromium keeps dialling out, and this network refuses
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}}
    env |= {"CONVERSIONS_DATA_DIR": str(tmp_path), "CONVERSIONS_WEB_PORT": str(port)}
    command = [sys.executable, "-m", "streams.cli", "demo", "--rate", "400", "--speed", "60"]
    command += ["--incident-at", "20m", "--incident-for", "2h", "--seconds", "600"]
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while _get(url + "live") != 200:
            assert process.poll() is None, "the demo exited:\n" + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no dashboard after 120 s:\n" + log_path.read_text()[-3000:]
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    worker_log = tmp_path / "demo" / "worker.log"
    assert code == 0, (
        f"the demo failed ({code}):\n{log_path.read_text()[-3000:]}\n{worker_log.read_text()[-3000:]}"
    )


async def _entered(page: Page, step: str) -> int:
    value = await page.locator(f'[data-testid=step][data-step="{step}"]').get_attribute("data-entered")
    return int(value or 0)


async def test_dashboard_shows_a_moving_funnel_its_breakdowns_and_the_planted_alert(demo: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        await page.goto(demo)

        steps = page.locator("[data-testid=step]")
        await expect(steps).to_have_count(5, timeout=30_000)
        first = page.locator('[data-testid=step][data-step="product_view"]')
        await expect(first).to_have_attribute("data-entered", re.compile(r"^[1-9][0-9]*$"), timeout=60_000)
        await expect(page.locator('[data-testid=step][data-step="purchase"]')).to_have_attribute(
            "data-entered", re.compile(r"^[1-9][0-9]*$"), timeout=60_000
        )
        await expect(page.locator("[data-testid=status]")).to_contain_text("latest event")

        # it moves without a reload
        before = await _entered(page, "product_view")
        await expect(first).not_to_have_attribute("data-entered", str(before), timeout=30_000)
        shown = await first.locator("[data-testid=step-count]").inner_text()
        assert int(shown.replace(",", "")) > 0

        await expect(page.locator("[data-testid=recent-macro]").first).to_contain_text(
            "purchase", timeout=30_000
        )
        await expect(page.locator("[data-testid=goal][data-goal=purchase] .big")).not_to_have_text("0")

        await page.select_option("[data-testid=breakdown-select]", "context.platform")
        mobile = page.locator("[data-testid=breakdown-table] tr[data-value=mobile]")
        await expect(mobile).to_be_visible(timeout=10_000)
        await expect(page.locator("[data-testid=breakdown-table] tr[data-value=web]")).to_be_visible()

        label = page.locator("#window-label")
        fifteen = await label.inner_text()
        await page.select_option("[data-testid=window-select]", "1h")
        await expect(label).not_to_have_text(fifteen, timeout=10_000)
        assert page.url == demo, "selectors must not reload the page"

        alert = page.locator("[data-testid=firing-alert]")
        await expect(alert.first).to_be_visible(timeout=360_000)
        text = await alert.first.inner_text()
        assert "checkout: payment" in text
        assert "context.platform=mobile" in text
        assert await page.locator("[data-testid=firing-alert]").count() == 1, "only mobile was broken"

        await browser.close()
        assert not page_errors, page_errors
