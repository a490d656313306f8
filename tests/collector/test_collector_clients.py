"""The collector with the real tracking libraries, the real broker and the real worker.

`segment-analytics-python` and `rudder-sdk-python` (from PyPI, unmodified) are pointed at the
collector a worker runs (`CONVERSIONS_COLLECTOR_ENABLED`, on loopback; their `host` option) and
send what a shop's backend sends: an anonymous page view from a newsletter link, a product view,
a sign-in (`identify`), an old device id joined by `alias`, and the purchase as the signed-in
user. The worker reads the clickstream topic in its default auto-detection; the journeys must
carry what the libraries sent: one purchase per library's user, with the landing page and
channel of the anonymous first visit, and the links. The libraries post from their own threads;
the test's event loop waits for their `flush()` in a worker thread.

The HTTP answers (auth, limits, CORS, 503) are tested on a collector run in the test's process.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics import Client as SegmentClient  # type: ignore[import-untyped]

from streams.collector import Collector, CollectorConfig, kafka_producer
from streams.kafka import ensure_topics, kafka_client_options
from streams.settings import Settings
from streams.tools.infra import free_port
from tests.collector.conftest import StartCollecting
from tests.helpers import read_topics

FUNNELS = """
version: 1
goals: [{name: purchase, match: {event: Order Completed}, value: properties.revenue}]
funnels:
  - name: checkout
    steps:
      - {name: landing, match: {event: page_view}}
      - {name: product, match: {event: Product Viewed}}
      - {name: purchase, match: {goal: purchase}}
    breakdowns: [context.platform, campaign.source, landing_page, channel, page.referrer]
"""
LANDING = "https://shop.example/?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
PURCHASE_AFTER = timedelta(minutes=4)
WRITE_KEY = "wk_test_live"


@pytest.fixture
async def collector(settings: Settings) -> AsyncIterator[Collector]:
    await ensure_topics(settings)
    config = CollectorConfig(
        topic=settings.topic(settings.topic_clickstream[0]),
        port=0,
        write_keys=frozenset({WRITE_KEY}),
        allowed_origins=frozenset({"https://shop.example", "https://a.example"}),
    )
    running = Collector(config, kafka_producer(settings))
    await running.start()
    for _ in range(200):
        if running.ready:
            break
        await asyncio.sleep(0.05)
    try:
        yield running
    finally:
        await running.stop()


def shop_visit(client: Any, prefix: str, start: datetime) -> None:
    """What a shop's backend sends for one customer, through either library's client API: a visit
    over four minutes, each call stamped with its moment (the libraries' `timestamp` argument)."""
    anon, old_device, user = f"{prefix}-anon", f"{prefix}-old-device", f"{prefix}_user"
    client.page(
        anonymous_id=anon,
        name="Home",
        properties={"url": LANDING, "referrer": "https://mail.example/inbox", "title": "Shop"},
        timestamp=start,
    )
    client.track(
        anonymous_id=anon,
        event="Product Viewed",
        properties={"product_id": "p42"},
        context={"page": {"url": "https://shop.example/p/42"}},
        timestamp=start + timedelta(seconds=40),
    )
    signed_in = start + timedelta(minutes=3)
    client.identify(user_id=user, anonymous_id=anon, traits={"plan": "free"}, timestamp=signed_in)
    client.alias(previous_id=old_device, user_id=user, timestamp=signed_in)
    client.group(user_id=user, group_id="acme", traits={"name": "Acme"}, timestamp=signed_in)
    client.track(
        user_id=user,
        event="Order Completed",
        properties={"revenue": 59.9, "currency": "EUR"},
        timestamp=start + PURCHASE_AFTER,
    )
    client.flush()


async def records(
    settings: Settings, topic: str, expect: int, timeout_s: float = 60.0
) -> list[tuple[str, dict[str, Any]]]:
    """(key, value) of every record on `topic`, once at least `expect` are there."""
    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[tuple[str, dict[str, Any]]] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(found) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found += [(m.key.decode(), orjson.loads(m.value)) for msgs in batch.values() for m in msgs]
        return found
    finally:
        await consumer.stop()


async def test_segment_and_rudderstack_libraries_through_the_collector_give_stitched_journeys(
    settings: Settings, start_collecting_worker: StartCollecting
) -> None:
    running = await start_collecting_worker(FUNNELS, WRITE_KEY)
    errors: list[Exception] = []
    segment = SegmentClient(WRITE_KEY, host=running.url, on_error=lambda e, _: errors.append(e))
    rudder = RudderClient(WRITE_KEY, host=running.url, on_error=lambda e, _: errors.append(e))  # gzip
    start = datetime.now(UTC) - timedelta(minutes=5)
    await asyncio.to_thread(shop_visit, segment, "seg", start)
    await asyncio.to_thread(shop_visit, rudder, "rud", start)
    assert not errors
    for kind, count in {"page": 2, "track": 4, "identify": 2, "alias": 2, "group": 2}.items():
        assert running.metric("conversions_collector_messages_total", type=kind) == count

    # on the topic: each message as sent, stamped, keyed by its identity, without the write key
    topic = settings.topic(settings.topic_clickstream[0])
    produced = await records(settings, topic, expect=12)
    assert len(produced) == 12
    for key, message in produced:
        # by device: the anonymous id (alias: previousId), else the user id
        assert key == (message.get("anonymousId") or message.get("previousId") or message["userId"])
        assert message["context"]["library"]["name"] == "analytics-python"
        assert "receivedAt" in message and "writeKey" not in message
    kinds = sorted(m["type"] for _, m in produced)
    assert kinds == sorted(["page", "track", "identify", "alias", "group", "track"] * 2)

    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=2)
    by_user = {m["user_id"]: m for m in macros}
    assert set(by_user) == {"seg_user", "rud_user"}
    for macro in by_user.values():
        assert (macro["goal"], macro["value"]) == ("purchase", 59.9)
        # the library's moment, through the collector's clock correction (same clock here)
        moment = datetime.fromisoformat(macro["timestamp"])
        assert abs(moment - (start + PURCHASE_AFTER)) < timedelta(seconds=1)
        assert macro["decision_time_ms"] == PURCHASE_AFTER // timedelta(milliseconds=1)
        # the anonymous first visit's landing page and campaign: the identify call stitched them
        assert macro["landing_page"] == "/" and macro["channel"] == "Email"
        assert macro["first_touch"]["landing_page"] == "/"
    # the funnel attempt the purchase closed started on the anonymous landing page view
    micros = await read_topics(settings, [settings.topic(settings.topic_micro)], expect=6, quiet_s=2)
    closing = {m["user_id"]: m for m in micros if m.get("step") == "purchase"}
    assert set(closing) == {"seg_user", "rud_user"}
    for micro in closing.values():
        assert micro["breakdowns"]["campaign.source"] == "newsletter"
        assert micro["breakdowns"]["page.referrer"] == "https://mail.example/inbox"
    # the group calls: valid, produced, read by the worker, and counted as ignored
    assert running.metric("conversions_ignored_total", format="segment") == 2
    assert running.metric("conversions_dead_letters_total", reason="invalid_event") == 0
    aliases = [m for _, m in produced if m["type"] == "alias"]
    assert {(a["previousId"], a["userId"]) for a in aliases} == {
        ("seg-old-device", "seg_user"),
        ("rud-old-device", "rud_user"),
    }
    # identify and alias linked the ids: the landing visit's device and the old one
    links = await read_topics(settings, [settings.topic(settings.topic_identities)], expect=4, quiet_s=1)
    assert {(m["action"], m["event"], m["anonymous_id"], m["user_id"]) for m in links} == {
        ("linked", "identify", f"{p}-anon", f"{p}_user") for p in ("seg", "rud")
    } | {("linked", "alias", f"{p}-old-device", f"{p}_user") for p in ("seg", "rud")}
    assert all(m["anonymous_history"] for m in links if m["event"] == "identify")


async def test_http_answers(settings: Settings, collector: Collector) -> None:
    url = collector.url + "/v1"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    message = {
        "anonymousId": "anon-http",
        "event": "Signed Up",
        "messageId": "m-http-1",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    async with aiohttp.ClientSession() as http:
        async with http.options(
            url + "/t",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        ) as preflight:
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
            assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        async with http.post(
            url + "/track", data=orjson.dumps(message), headers={"Origin": "https://a.example"}
        ) as r:
            assert r.status == 401 and (await r.json())["code"] == "unauthorized"
            assert r.headers["Access-Control-Allow-Origin"] == "https://a.example"
        async with http.post(url + "/track", data=orjson.dumps({**message, "event": ""}), headers=auth) as r:
            assert r.status == 400 and (await r.json())["message"] == "segment: track without event"
        big = gzip.compress(orjson.dumps({**message, "properties": {"x": "y" * 40_000}}))
        async with http.post(url + "/track", data=big, headers={**auth, "Content-Encoding": "gzip"}) as r:
            assert r.status == 413
        async with http.post(url + "/batch", data=b"x" * 600_000, headers=auth) as r:
            assert r.status == 413
        async with http.post(url + "/track", data=orjson.dumps({**message, "writeKey": WRITE_KEY})) as r:
            assert r.status == 200 and await r.json() == {"success": True}
    produced = await records(settings, settings.topic(settings.topic_clickstream[0]), expect=1, timeout_s=20)
    assert [(k, m["messageId"]) for k, m in produced] == [("anon-http", "m-http-1")]


async def test_503_while_the_broker_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """Pointed at a port where no broker listens: the collector starts and answers 503 with
    Retry-After (the libraries retry), never 200."""
    caplog.set_level(logging.CRITICAL, logger="aiokafka")
    nowhere = Settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    running = Collector(CollectorConfig(topic="clickstream", port=0), kafka_producer(nowhere, 2.0))
    await running.start()
    try:
        body = {"anonymousId": "a", "event": "x", "timestamp": datetime.now(UTC).isoformat()}
        async with aiohttp.ClientSession() as http, http.post(running.url + "/v1/track", json=body) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "2"
            assert (await r.json())["code"] == "unavailable"
        assert not running.ready
    finally:
        await running.stop()
