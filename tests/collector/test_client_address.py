"""The collector's client: the address from the connection, or from X-Forwarded-For only behind a
trusted proxy; the User-Agent header where the message has none; the address looked up into
`context.location` and then dropped (the default), truncated or kept before anything is written
to the clickstream topic, checked on the real broker."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from streams.collector import Collector, CollectorConfig, kafka_producer
from streams.collector.messages import Client, accept, client_address
from streams.core.input.geo import GeoLookup
from streams.kafka import ensure_topics
from streams.settings import Settings
from tests.collector.test_collector_clients import records

WRITE_KEY = "wk_test_client"
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0"


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("81.2.69.142", None, (), "81.2.69.142"),  # no proxy: the connection's peer
        ("81.2.69.142", "5.9.0.1", (), "81.2.69.142"),  # an untrusted peer's header is ignored
        ("10.0.0.5", "5.9.0.1", ("10.0.0.0/8",), "5.9.0.1"),  # behind a trusted proxy
        # the rightmost address not a trusted proxy: the client's own claim (left) is not believed
        ("10.0.0.5", "1.2.3.4, 5.9.0.1, 10.0.0.7", ("10.0.0.0/8",), "5.9.0.1"),
        ("10.0.0.5", "10.0.0.6", ("10.0.0.0/8",), "10.0.0.5"),  # only proxies: the peer
        ("10.0.0.5", "garbage", ("10.0.0.0/8",), "10.0.0.5"),
        ("::ffff:10.0.0.5", "2a02:ec0::1", ("10.0.0.0/8",), "2a02:ec0::1"),
        (None, "5.9.0.1", (), None),
    ],
)
def test_the_client_address(
    peer: str | None, forwarded: str | None, trusted: tuple[str, ...], client: str
) -> None:
    assert client_address(peer, forwarded, trusted) == client


def one(mode: Any, message: dict[str, Any], client: Client) -> dict[str, Any]:
    config = CollectorConfig(topic="clickstream", ip_mode=mode)
    accepted = accept(
        "track",
        orjson.dumps(message),
        config=config,
        received_at=datetime(2024, 3, 13, 10, tzinfo=UTC),
        client=client,
        locate=GeoLookup().lookup,
    )
    ((_, value),) = accepted.records
    return dict(orjson.loads(value))


TRACK = {"anonymousId": "a1", "event": "Signed Up", "messageId": "m1", "timestamp": "2024-03-13T10:00:00Z"}


@pytest.mark.parametrize(
    ("mode", "kept"), [("drop", None), ("truncate", "81.2.69.0"), ("keep", "81.2.69.142")]
)
def test_the_request_fills_the_message_then_the_ip_mode_applies(mode: Any, kept: str | None) -> None:
    produced = one(mode, TRACK, Client("81.2.69.142", CHROME))
    assert produced["context"]["userAgent"] == CHROME
    assert produced["context"]["location"] == {"country": "GB"}
    assert produced["context"].get("ip") == kept
    # the message's own address and user agent win over the request's; the mode applies to it too
    own = {**TRACK, "context": {"ip": "5.9.0.1", "userAgent": "Theirs/1.0"}}
    produced = one(mode, own, Client("81.2.69.142", CHROME))
    assert (
        produced["context"]["userAgent"] == "Theirs/1.0"
        and produced["context"]["location"]["country"] == "DE"
    )
    assert ("5.9.0.1" in orjson.dumps(produced).decode()) == (mode == "keep")


@pytest.fixture
async def proxied(settings: Settings) -> AsyncIterator[Collector]:
    await ensure_topics(settings)
    config = CollectorConfig(
        topic=settings.topic(settings.topic_clickstream[0]),
        port=0,
        write_keys=frozenset({WRITE_KEY}),
        trusted_proxies=("127.0.0.1/32",),
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


async def test_no_address_reaches_the_topic_in_drop_mode(settings: Settings, proxied: Collector) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    sent = [
        # behind the (trusted, loopback) proxy: the forwarded client, looked up, then dropped
        ({**TRACK, "messageId": "m-fwd"}, {"X-Forwarded-For": "198.51.100.9, 81.2.69.142"}),
        # an address the page put in the message itself: dropped all the same
        ({**TRACK, "messageId": "m-own", "context": {"ip": "5.9.0.1"}}, {}),
    ]
    async with aiohttp.ClientSession() as http:
        for message, headers in sent:
            async with http.post(
                proxied.url + "/v1/track",
                data=orjson.dumps(message),
                headers={**auth, **headers, "User-Agent": CHROME},
            ) as answer:
                assert answer.status == 200
    produced = dict(
        (m["messageId"], m)
        for _, m in await records(settings, settings.topic(settings.topic_clickstream[0]), 2)
    )
    assert produced["m-fwd"]["context"]["location"] == {"country": "GB"}
    assert produced["m-own"]["context"]["location"] == {"country": "DE"}
    assert produced["m-fwd"]["context"]["userAgent"] == CHROME
    raw = orjson.dumps(produced).decode()
    for address in ("81.2.69.142", "5.9.0.1", "198.51.100.9", "127.0.0.1"):
        assert address not in raw
