"""The live dashboard in real headless Chromium, against the demo a new user runs.

The demo starts its own broker, Redis and worker, and sends shop traffic on a simulated clock
60x faster than real time with an incident planted at 20 simulated minutes (the mobile payment
rate falls from 0.8 to 0.3), so the example config's payment alert fires within minutes. The
worker runs with an access token: the page first asks for it. One browser session drives every
panel: the funnel, the trend with its alert band and marks, in progress vs dropped, time to
convert, the channels table (sorted by clicking), the audience panel, and the API with and without the token.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
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


TOKEN = "demo-token-0123456789abcdef"
DASHBOARD_LINE = re.compile(r"open the live dashboard: (http://\S+/)")


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}}
    env |= {
        "CONVERSIONS_DATA_DIR": str(tmp_path),
        "CONVERSIONS_WEB_PORT": str(port),
        "CONVERSIONS_WEB_TOKEN": TOKEN,
        "CONVERSIONS_METRICS_PUBLIC": "true",
    }
    command = [sys.executable, "-m", "streams.cli", "demo", "--rate", "400", "--speed", "60"]
    command += ["--incident-at", "20m", "--incident-for", "2h", "--seconds", "600"]
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker_log = tmp_path / "demo" / "worker.log"

    def logs() -> str:
        worker = worker_log.read_text()[-3000:] if worker_log.exists() else "(no worker log)"
        return f"{log_path.read_text()[-3000:]}\nworker.log:\n{worker}"

    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None or _get(url + "live", TOKEN) != 200:
            assert process.poll() is None, "the demo exited:\n" + logs()
            assert time.monotonic() < deadline, "no dashboard after 180 s:\n" + logs()
            time.sleep(1)
            # the URL the demo prints, as a user would: it moves to a free port when `port` was
            # taken meanwhile (by the broker or Redis it started, say)
            printed = DASHBOARD_LINE.search(log_path.read_text())
            url = printed.group(1) if printed else None
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, f"the demo failed ({code}):\n" + logs()


async def _entered(page: Page, step: str) -> int:
    value = await page.locator(f'[data-testid=step][data-step="{step}"]').get_attribute("data-entered")
    return int(value or 0)


async def _column(page: Page, column: str) -> list[float]:
    cells = await page.locator(f"[data-testid=channel-row] td[data-column={column}]").all_inner_texts()
    return [float(c.replace(",", "").rstrip("%")) if c not in ("\u2013", "") else -1.0 for c in cells]


NONZERO = re.compile(r"^[1-9][0-9]*$")


def _check_security_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
    assert headers["server"] == "conversions"


# the planted alert alone may take its 360 s on a loaded machine: above the suite's 300 s default
@pytest.mark.timeout(600)
async def test_dashboard_panels_the_planted_alert_and_the_token(demo: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1300, "height": 900})
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        # Chromium reports what the Content-Security-Policy blocks on the console
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))

        # the token: refused without it, as a bearer token or after signing in
        assert _get(demo + "live") == 401 and _get(demo + "channels") == 401
        assert _get(demo + "live", "not-the-token-at-all") == 401
        assert _get(demo + "channels", TOKEN) == 200 and _get(demo + "metrics") == 200, "metrics is public"
        for faust_page in ("table/journeys/", "router/"):  # journeys and hosts: not served at all
            assert _get(demo + faust_page) == 401 and _get(demo + faust_page, TOKEN) == 404
        response = await page.goto(demo)
        assert response is not None and response.status == 401
        _check_security_headers(await response.all_headers())
        await page.fill("[data-testid=token-input]", "wrong-token-0123456789")
        await page.click("[data-testid=sign-in]")
        await expect(page.locator("[data-testid=login-error]")).to_be_visible()
        await page.fill("[data-testid=token-input]", TOKEN)
        await page.click("[data-testid=sign-in]")
        await expect(page.locator("[data-testid=status]")).to_contain_text("latest event", timeout=30_000)
        await expect(page.locator("[data-testid=generation]")).to_be_hidden()  # nothing reprocesses
        api = await page.request.get(demo + "live")
        assert api.status == 200, "the session cookie opens the API"
        _check_security_headers(api.headers)
        _check_security_headers((await page.request.get(demo)).headers)

        steps = page.locator("[data-testid=step]")
        await expect(steps).to_have_count(5, timeout=30_000)
        first = page.locator('[data-testid=step][data-step="product_view"]')
        await expect(first).to_have_attribute("data-entered", NONZERO, timeout=60_000)
        await expect(page.locator('[data-testid=step][data-step="purchase"]')).to_have_attribute(
            "data-entered", NONZERO, timeout=60_000
        )
        # it moves without a reload
        before = await _entered(page, "product_view")
        await expect(first).not_to_have_attribute("data-entered", str(before), timeout=30_000)
        shown = await first.locator("[data-testid=step-count]").inner_text()
        assert int(shown.replace(",", "")) > 0
        await expect(page.locator("[data-testid=recent-macro]").first).to_contain_text(
            "purchase", timeout=30_000
        )
        await expect(page.locator("[data-testid=goal][data-goal=purchase] .big")).not_to_have_text("0")

        # in progress vs dropped: attempts waiting at their step, and the count moves
        progress = page.locator("[data-testid=progress-step]")
        await expect(progress).to_have_count(5)
        cart = page.locator('[data-testid=progress-step][data-step="add_to_cart"]')
        await expect(cart).to_have_attribute("data-in-progress", NONZERO, timeout=30_000)
        waiting = await cart.get_attribute("data-in-progress")
        await expect(cart).not_to_have_attribute("data-in-progress", waiting or "", timeout=30_000)
        await expect(page.locator('[data-testid=progress-step][data-step="purchase"]')).to_have_attribute(
            "data-entered", NONZERO, timeout=60_000
        )  # the attempts opened in the window have reached every step
        await expect(page.locator("[data-testid=progress-text]").first).to_contain_text("projected")

        # time to convert: a histogram per step after the first, with a median
        ttc = page.locator('[data-testid=ttc-step][data-step="payment"]')
        await expect(ttc).to_have_attribute("data-conversions", NONZERO, timeout=30_000)
        assert float(await ttc.get_attribute("data-median") or 0) > 0
        assert await ttc.locator("rect").count() >= 5

        # the example configuration's experiment, on the demo's variants
        experiment = page.locator("[data-testid=experiment][data-name=one_page_checkout]")
        await expect(experiment).to_be_visible(timeout=30_000)
        variants = experiment.locator("[data-testid=experiment-variant]")
        await expect(variants).to_have_count(2, timeout=60_000)
        await expect(variants.first).to_have_attribute("data-entered", NONZERO)

        # channels and landing pages: rows with sessions, sorted by a click on a column
        rows = page.locator("[data-testid=channel-row]")
        await expect(rows.first).to_be_visible(timeout=30_000)
        await page.select_option("[data-testid=window-select]", "1h")
        await expect(
            page.locator("[data-testid=channel-row] td[data-column=sessions]").first
        ).not_to_have_text("0", timeout=60_000)
        await page.click("[data-testid=channel-table] th[data-sort=conversions]")
        await expect(page.locator("[data-testid=channel-table] th[data-sort=conversions]")).to_have_attribute(
            "aria-sort", "descending"
        )
        values = await _column(page, "conversions")
        assert values == sorted(values, reverse=True) and values[0] > 0
        await page.click("[data-testid=channel-table] th[data-sort=conversions]")
        await expect(page.locator("[data-testid=channel-table] th[data-sort=conversions]")).to_have_attribute(
            "aria-sort", "ascending"
        )
        values = await _column(page, "conversions")
        assert values == sorted(values)
        await page.check("[data-testid=channel-split]")
        await expect(page.locator("[data-testid=channel-table] th[data-sort=visitor_type]")).to_be_visible()

        # the audience panel: the demo's people carry user agents, addresses and locales
        await expect(page.locator("[data-testid=audience-row]").first).to_be_visible(timeout=30_000)
        await expect(
            page.locator("[data-testid=audience-row] td[data-column=sessions]").first
        ).not_to_have_text("0", timeout=30_000)
        await page.click("[data-testid=audience-tabs] button[data-dim='audience.browser']")
        await expect(page.locator('[data-testid=audience-row][data-value="Chrome"]')).to_be_visible(
            timeout=10_000
        )

        await page.select_option("[data-testid=breakdown-select]", "context.platform")
        mobile = page.locator("[data-testid=breakdown-table] tr[data-value=mobile]")
        await expect(mobile).to_be_visible(timeout=10_000)
        await expect(page.locator("[data-testid=breakdown-table] tr[data-value=web]")).to_be_visible()
        label = page.locator("#window-label")
        hour = await label.inner_text()
        await page.select_option("[data-testid=window-select]", "15m")
        await expect(label).not_to_have_text(hour, timeout=10_000)
        assert page.url == demo, "selectors must not reload the page"

        # the planted incident: the alert fires and the trend shows the drop under its band
        alert = page.locator("[data-testid=firing-alert]")
        await expect(alert.first).to_be_visible(timeout=360_000)
        text = await alert.first.inner_text()
        assert "checkout: payment" in text and "context.platform=mobile" in text
        assert await page.locator("[data-testid=firing-alert]").count() == 1, "only mobile was broken"
        await page.select_option("[data-testid=window-select]", "1h")
        chart = page.locator("[data-testid=trend-svg]")
        await expect(chart).to_have_attribute("data-buckets", "60", timeout=10_000)  # 1 h of minutes
        await expect(page.locator("[data-testid=trend-value]")).to_have_value("mobile", timeout=10_000)
        await expect(page.locator("[data-testid=trend-mark][data-state=fired]")).to_be_visible(timeout=10_000)
        await expect(page.locator("[data-testid=trend-band]")).to_be_visible()
        line = page.locator("[data-testid=trend-line]")
        drawn = await line.get_attribute("d") or ""
        assert drawn.count("L") > 10, "the chart is drawn"
        rate = await page.locator("[data-testid=trend-rate]").inner_text()
        baseline = await page.locator("[data-testid=trend-baseline]").inner_text()
        assert float(rate.rstrip("%")) < float(baseline.rstrip("%")), (rate, baseline)
        await expect(line).not_to_have_attribute("d", drawn, timeout=30_000)  # it moves

        # signing out ends this session: the page asks for the token again, the API refuses
        await page.click("[data-testid=sign-out]")
        await expect(page.locator("[data-testid=token-input]")).to_be_visible()
        assert (await page.request.get(demo + "live")).status == 401

        await browser.close()
        assert not page_errors, page_errors
        blocked = [line for line in console if "Content Security Policy" in line]
        assert not blocked, blocked
