"""Segment's browser library in headless Chromium, through the collector, to a stitched purchase.

A small shop is served on loopback: its pages load Segment's snippet and the standalone browser
bundle of `@segment/analytics-next` 1.84.3, as published on the npm registry (kept unmodified
in tests/fixtures/trackers/, MIT licence beside it). The snippet's `_cdn` points the library's
settings request at the shop server, whose settings name the collector, on another port, as the
Segment.io API host, so every call crosses origins (CORS preflight included, since the library
sends basic auth). Debian's Chromium (through Playwright, as the dashboard's test drives it)
clicks through: a landing from a newsletter link (UTM parameters, mail referrer), a product page,
sign-in (`identify`) and the purchase. The collector is the worker's own
(`CONVERSIONS_COLLECTOR_ENABLED`), and the worker must turn that into one purchase by the user
with the anonymous visit's landing page, referrer and campaign.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Page, async_playwright

from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.infra import free_port
from tests.collector.conftest import StartCollecting
from tests.collector.test_collector_clients import FUNNELS, records
from tests.helpers import read_topics

pytestmark = pytest.mark.browser

TRACKERS = Path(__file__).parent.parent / "fixtures" / "trackers"
BUNDLE = TRACKERS / "segment-analytics-next-1.84.3.standalone.js"
WRITE_KEY = "wk_browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
CHROMIUM_ARGS += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Segment's snippet (the documented one, trimmed to the methods used), with `_cdn` on the shop
SNIPPET = """<script>
!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize){
analytics.invoked=!0;analytics.methods=["identify","track","page","alias","group","reset","ready","on"];
analytics.factory=function(e){return function(){
if(window[i].initialized)return window[i][e].apply(window[i],arguments);
var n=Array.prototype.slice.call(arguments);n.unshift(e);analytics.push(n);return analytics}};
for(var n=0;n<analytics.methods.length;n++){
var key=analytics.methods[n];analytics[key]=analytics.factory(key)}
analytics._writeKey="%(key)s";analytics._cdn=location.origin;analytics.SNIPPET_VERSION="5.2.0";
analytics.page();%(extra)s}}();
</script>
<script src="/analytics.js"></script>"""

PAGES = {
    "/": ("Shop", "", '<a id="product" href="/p/42">Headphones</a>'),
    "/p/42": (
        "Headphones",
        "analytics.track('Product Viewed', {product_id: 'p42', price: 59.9});",
        '<a id="signin" href="/signin">Sign in to buy</a>',
    ),
    "/signin": (
        "Sign in",
        "",
        """<form id="form"><input id="user" name="user"><button id="go">Sign in</button></form>
<script>document.getElementById('form').addEventListener('submit', async function (e) {
  e.preventDefault();
  await window.analytics.identify(document.getElementById('user').value, {plan: 'free'});
  location.href = '/checkout';
});</script>""",
    ),
    "/checkout": (
        "Checkout",
        "",
        """<button id="buy" onclick="window.analytics.track('Order Completed',
  {revenue: 59.9, currency: 'EUR'}).then(function () { document.title = 'Thank you'; })">Buy</button>""",
    ),
}


def shop_app(collector_url: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        title, extra, body = PAGES[request.path]
        snippet = SNIPPET % {"key": WRITE_KEY, "extra": extra}
        html = f"<!doctype html><html><head><title>{title}</title>{snippet}</head><body>{body}</body></html>"
        return web.Response(text=html, content_type="text/html")

    async def settings(_: web.Request) -> web.Response:
        """What Segment's CDN serves for a source: here, only the Segment.io destination."""
        host = collector_url.removeprefix("http://") + "/v1"
        return web.json_response(
            {
                "integrations": {"Segment.io": {"apiKey": WRITE_KEY, "apiHost": host, "protocol": "http"}},
                "plan": {"track": {"__default": {"enabled": True}}},
                "metrics": {"sampleRate": 0},
            }
        )

    async def bundle(_: web.Request) -> web.FileResponse:
        return web.FileResponse(BUNDLE)

    app = web.Application()
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/analytics.js", bundle)
    app.router.add_get(f"/v1/projects/{WRITE_KEY}/settings", settings)
    return app


@asynccontextmanager
async def shop(collector_url: str, port: int = 0) -> AsyncIterator[str]:
    """The shop's web server on a loopback port (a free one by default); yields its address."""
    runner = web.AppRunner(shop_app(collector_url), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


VISITOR_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)


async def test_segment_browser_library_through_the_collector_gives_a_stitched_purchase(
    settings: Settings, start_collecting_worker: StartCollecting
) -> None:
    await ensure_topics(settings)
    # the collector answers the shop's origin only (CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS)
    shop_port = free_port()
    running = await start_collecting_worker(
        FUNNELS, WRITE_KEY, CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS=f"http://127.0.0.1:{shop_port}"
    )
    acknowledged = running.acknowledged
    async with shop(running.url, shop_port) as url, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # a visitor's browser: headless Chromium says "HeadlessChrome", which the engine,
            # like ua-parser, counts as a bot and keeps out of funnels (CONVERSIONS_BOTS=exclude)
            page: Page = await browser.new_page(user_agent=VISITOR_AGENT)
            failures: list[str] = []
            # a CORS refusal shows as net::ERR_FAILED; a request cut by the page navigating away
            # (the sign-in form leaves as soon as identify resolves) is net::ERR_ABORTED
            page.on(
                "requestfailed",
                lambda r: (
                    None if r.failure == "net::ERR_ABORTED" else failures.append(f"{r.url} {r.failure}")
                ),
            )
            landing = f"{url}/?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
            await page.goto(landing, referer="https://mail.example/inbox")
            await acknowledged("page", 1)
            await page.click("#product")
            await acknowledged("track", 1)
            await page.click("#signin")
            await acknowledged("page", 3)
            await page.fill("#user", "user_0042")
            await page.click("#go")
            await acknowledged("identify", 1)
            await page.wait_for_url(f"{url}/checkout")
            await page.click("#buy")
            await acknowledged("track", 2)
            assert not failures, failures
        finally:
            await browser.close()

    produced = await records(settings, settings.topic(settings.topic_clickstream[0]), expect=7)
    assert sorted(m["type"] for _, m in produced) == [
        "identify",
        "page",
        "page",
        "page",
        "page",
        "track",
        "track",
    ]
    anonymous = {m["anonymousId"] for _, m in produced}
    assert len(anonymous) == 1  # one browser: the library keeps its anonymous id across pages
    assert {key for key, _ in produced} == anonymous  # keyed by device, sign-in and purchase too
    for _, message in produced:
        assert message["context"]["library"] == {"name": "analytics.js", "version": "next-1.84.3"}
    purchase = next(m for _, m in produced if m.get("event") == "Order Completed")
    assert purchase["userId"] == "user_0042"  # remembered since the identify call

    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=1)
    (macro,) = macros
    assert (macro["user_id"], macro["goal"], macro["value"]) == ("user_0042", "purchase", 59.9)
    assert macro["landing_page"] == "/" and macro["channel"] == "Email"
    assert macro["first_touch"]["landing_page"] == "/" and macro["breakdowns"]["context.platform"] == "web"
    # the audience from the browser's own User-Agent header
    assert (macro["audience"]["browser"], macro["audience"]["device"]) == ("Chrome", "desktop")
    # the funnel attempt the purchase closed started on the anonymous landing page view
    micros = await read_topics(settings, [settings.topic(settings.topic_micro)], expect=3, quiet_s=2)
    (closing,) = [m for m in micros if m.get("step") == "purchase"]
    assert closing["user_id"] == "user_0042"
    assert closing["breakdowns"]["campaign.source"] == "newsletter"
    assert closing["breakdowns"]["page.referrer"] == "https://mail.example/inbox"
    assert sorted(m["step"] for m in micros) == ["landing", "product", "purchase"]
    (link,) = await read_topics(settings, [settings.topic(settings.topic_identities)], expect=1, quiet_s=1)
    assert (link["action"], link["event"], link["user_id"]) == ("linked", "identify", "user_0042")
    assert link["anonymous_id"] in anonymous and link["anonymous_history"]
