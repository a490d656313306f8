"""The collector's answers to a browser on another site and to a flood (issue 29): origins not
allowed are refused before anything is produced (a `text/plain` POST needs no preflight, so
CORS alone would not stop it), `null` is never allowed, `*` is answered as `*` and only with
write keys; each client and each write key is rate limited (429 with Retry-After), and a batch
holds at most `max_batch_messages`.

Each collector here points at a port where no broker listens: a request it lets through is
answered 503 (nothing can be produced), so a 403, 429 or 400 is the refusal itself, before any
record was made.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from streams.collector import Collector, CollectorConfig, kafka_producer
from streams.settings import Settings
from streams.tools.infra import free_port

KEY = "wk_security_test"
MESSAGE = {"anonymousId": "a", "event": "x", "timestamp": datetime.now(UTC).isoformat()}
PLAIN = {"Content-Type": "text/plain"}  # a "simple" request: the browser sends it without asking

Start = Callable[..., Any]


@pytest.fixture
async def start(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Start]:
    caplog.set_level(logging.CRITICAL, logger="aiokafka")
    nowhere = Settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    running: list[Collector] = []

    async def started(**config: Any) -> str:
        collector = Collector(
            CollectorConfig(topic="clickstream", port=0, **config), kafka_producer(nowhere, 2.0)
        )
        await collector.start()
        running.append(collector)
        return collector.url + "/v1"

    yield started
    for collector in running:
        await collector.stop()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def test_without_write_keys_no_other_site_can_post(start: Start) -> None:
    url = await start()
    body = orjson.dumps(MESSAGE)
    async with aiohttp.ClientSession() as http:
        for origin in ("https://evil.example", "null", "http://127.0.0.1:8080"):
            async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": origin}) as r:
                assert r.status == 403 and (await r.json())["code"] == "forbidden_origin", origin
                assert "Access-Control-Allow-Origin" not in r.headers
            async with http.options(
                url + "/t", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            ) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        async with http.post(url + "/t", data=body, headers=PLAIN) as r:
            assert r.status == 503, "no Origin (a server library, curl): on to the broker"
    # `*` does not open a collector without keys; a listed origin does
    url = await start(allowed_origins=frozenset(("*", "http://localhost:3000")))
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
        async with http.post(
            url + "/t", data=body, headers={**PLAIN, "Origin": "http://localhost:3000"}
        ) as r:
            assert r.status == 503 and r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_with_write_keys_cors_answers_only_the_configured_origins(start: Start) -> None:
    keys = frozenset((KEY,))
    body = orjson.dumps({**MESSAGE, "writeKey": KEY})
    preflight = {"Access-Control-Request-Method": "POST"}
    url = await start(write_keys=keys, allowed_origins=frozenset(("https://shop.example",)))
    async with aiohttp.ClientSession() as http:
        async with http.options(url + "/t", headers={**preflight, "Origin": "https://shop.example"}) as r:
            assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": "https://shop.example"}) as r:
            assert r.status == 503 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        for origin in ("https://evil.example", "null"):
            async with http.options(url + "/t", headers={**preflight, "Origin": origin}) as r:
                assert r.status == 403
            async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": origin}) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    # `*` when asked for: answered as `*`, never an echo, and never for `null`
    url = await start(write_keys=keys, allowed_origins=frozenset(("*",)))
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": "https://any.example"}) as r:
            assert r.status == 503 and r.headers["Access-Control-Allow-Origin"] == "*"
        async with http.post(url + "/t", data=body, headers={**PLAIN, "Origin": "null"}) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


async def test_each_client_is_rate_limited_with_retry_after(start: Start) -> None:
    url = await start(rate_limit=2.0)  # a burst of 4, then 2 a second
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(12):
            async with http.post(url + "/t", data=orjson.dumps(MESSAGE)) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert (await r.json())["code"] == "rate_limited"
    assert statuses[:4] == [503] * 4 and statuses.count(429) >= 6, statuses


async def test_each_write_key_is_rate_limited_whatever_the_address(start: Start) -> None:
    """The key's allowance is spent from two loopback addresses (127.0.0.1 and 127.0.0.2), each
    within its own allowance."""
    url = await start(write_keys=frozenset((KEY, "wk_other")), rate_limit=2.0)
    body = orjson.dumps(MESSAGE)
    seen: dict[str, list[int]] = {}
    for address in ("127.0.0.1", "127.0.0.2"):
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            for key in (KEY, KEY, "wk_other"):
                async with http.post(url + "/t", data=body, headers=basic(key)) as r:
                    seen.setdefault(key, []).append(r.status)
                    if r.status == 429:
                        assert "write key" in (await r.json())["message"]
    assert seen[KEY] == [503, 503, 503, 503], "four of the key's burst of four"
    assert seen["wk_other"] == [503, 503]
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(url + "/t", data=body, headers=basic(KEY)) as r,
    ):
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1, "a new address, the same key"


async def test_a_batch_holds_at_most_the_configured_messages(start: Start) -> None:
    url = await start(max_batch_messages=100)
    track = {**MESSAGE, "type": "track"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/batch", data=orjson.dumps({"batch": [track] * 101})) as r:
            assert r.status == 400
            refusal = await r.json()
            assert refusal["code"] == "too_many_messages" and "the limit is 100" in refusal["message"]
        async with http.post(url + "/batch", data=orjson.dumps({"batch": [track] * 100})) as r:
            assert r.status == 503
            assert r.headers["Server"] == "conversions" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert Settings().collector_max_batch_messages == 500 and Settings().collector_rate_limit == 50
