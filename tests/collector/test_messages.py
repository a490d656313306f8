"""The collector's request rules, without a server: calls, limits, gzip, write keys, what is produced."""

from __future__ import annotations

import base64
import gzip
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.collector.messages import CollectorConfig, Refusal, accept
from streams.core.input.decode import decode_message

CONFIG = CollectorConfig(topic="clickstream")
LOCKED = CollectorConfig(topic="clickstream", write_keys=frozenset({"wk_live", "wk_other"}))
NOW = datetime(2024, 3, 13, 10, 0, 5, 250_000, tzinfo=UTC)


def track(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Added",
        "anonymousId": "anon-1",
        "messageId": "m-1",
        "timestamp": "2024-03-13T10:00:00.000Z",
        "properties": {"product_id": "p42"},
        **fields,
    }


def post(call: str, body: Any, config: CollectorConfig = CONFIG, **headers: Any) -> list[dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    accepted = accept(call, raw, config=config, received_at=NOW, **headers)
    return [{"key": key.decode(), **orjson.loads(value)} for key, value in accepted.records]


def refused(call: str, body: Any, config: CollectorConfig = CONFIG, **headers: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        post(call, body, config, **headers)
    return caught.value


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_a_batch_is_produced_message_by_message_keyed_by_device_and_stamped() -> None:
    body = {
        "batch": [track(), track(type="identify", userId="user_1", messageId="m-2", event=None)],
        "sentAt": "2024-03-13T10:00:01.000Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3.4"}},
        "writeKey": "secret",
    }
    records = post("batch", body)
    # the sign-in travels with the device's page views: keyed by the anonymous id, not the user's
    assert [r["key"] for r in records] == ["anon-1", "anon-1"]
    signed_in = post("identify", {"userId": "user_1", "timestamp": "2024-03-13T10:00:00Z"})
    assert [r["key"] for r in signed_in] == ["user_1"]
    for record in records:
        assert record["receivedAt"] == "2024-03-13T10:00:05.250Z"
        assert record["sentAt"] == "2024-03-13T10:00:01.000Z"
        assert record["context"]["library"]["name"] == "analytics-python"
        assert "writeKey" not in record
    # what the worker then reads: the client's clock corrected by the collector's
    decoded = decode_message(orjson.dumps({k: v for k, v in records[0].items() if k != "key"}))
    assert decoded.events[0].timestamp == datetime(2024, 3, 13, 10, 0, 4, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("call", "kind"),
    [("track", "track"), ("t", "track"), ("page", "page"), ("p", "page"), ("screen", "screen"),
     ("identify", "identify"), ("i", "identify"), ("alias", "alias"), ("a", "alias"), ("group", "group")],
)  # fmt: skip
def test_single_calls_take_their_type_from_the_path(call: str, kind: str) -> None:
    body = {
        "anonymousId": "anon-1",
        "userId": "user_1",
        "previousId": "anon-0",
        "event": "x",
        "timestamp": "2024-03-13T10:00:00Z",
        "writeKey": "k",
        "_metadata": {"bundled": []},
    }
    (record,) = post(call, body)
    # identify's and alias's anonymous id (alias: previousId) decides where they are stitched
    assert record["type"] == kind and record["key"] == ("anon-0" if kind == "alias" else "anon-1")
    assert "_metadata" not in record and "writeKey" not in record


def test_a_message_keeps_its_own_context_over_the_batchs() -> None:
    body = {
        "batch": [track(context={"locale": "de-DE", "library": {"name": "mine"}})],
        "context": {"locale": "en"},
    }
    (record,) = post("b", body)
    assert record["context"] == {"locale": "de-DE", "library": {"name": "mine"}}


def test_gzip_bodies() -> None:
    body = orjson.dumps({"batch": [track()]})
    assert post("batch", gzip.compress(body), content_encoding="gzip")[0]["event"] == "Product Added"
    deflated = zlib.compress(body)
    assert post("batch", deflated, content_encoding="deflate")[0]["event"] == "Product Added"
    assert refused("batch", b"\x1f\x8bnot gzip", content_encoding="gzip").status == 400
    assert "truncated" in refused("batch", gzip.compress(body)[:-12], content_encoding="gzip").message
    assert refused("batch", body, content_encoding="br").message == "content encoding 'br' is not gzip"


def test_segment_size_limits() -> None:
    big = track(properties={"blob": "x" * 33_000})
    too_big = refused("track", big)
    assert (too_big.status, too_big.code) == (413, "too_large")
    assert too_big.message.startswith("message 0 is ") and too_big.message.endswith("the limit is 32768")
    fits = track(properties={"blob": "x" * 30_000})
    assert len(post("track", fits)) == 1
    body = {"batch": [{**fits, "messageId": f"m{i}"} for i in range(17)]}  # 17 x 30 KB > 500 KB
    assert refused("batch", body).status == 413
    # a small gzip body that inflates past the request limit is refused without inflating it all
    bomb = gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}")
    assert len(bomb) < 10_000
    refusal = refused("batch", bomb, content_encoding="gzip")
    assert (refusal.status, refusal.message) == (413, "the body inflates past 512000 bytes")


def test_write_keys() -> None:
    assert post("track", track(), LOCKED, authorization=basic("wk_live"))
    assert post("track", {**track(), "writeKey": "wk_other"}, LOCKED)
    for headers, body, why in [
        ({}, track(), "no write key"),
        ({"authorization": basic("wk_wrong")}, track(), "unknown write key"),
        ({}, {**track(), "writeKey": "wk_wrong"}, "unknown write key"),
        ({"authorization": "Basic %%%"}, track(), "not valid basic auth"),
    ]:
        refusal = refused("track", body, LOCKED, **headers)
        assert refusal.status == 401 and why in refusal.message
    assert post("track", track(), CONFIG)  # no keys configured: any request


def test_a_request_with_one_bad_message_is_refused_whole_with_every_reason() -> None:
    body = {"batch": [track(), track(event=None), "oops", track(anonymousId=None)]}
    refusal = refused("batch", body)
    assert (refusal.status, refusal.code) == (400, "invalid_request")
    assert [(e["index"], e["message"]) for e in refusal.errors] == [
        (1, "segment: track without event"),
        (2, "segment: a message is a JSON object, not str"),
        (3, "segment: track without userId or anonymousId"),
    ]
    assert refusal.message.startswith("message 1: segment: track without event; message 2:")


@pytest.mark.parametrize(
    ("call", "body", "status", "message"),
    [
        ("nope", {}, 404, "no such call /v1/nope"),
        ("track", b"{not json", 400, "the body is not JSON"),
        ("track", b"[1]", 400, "the body is a JSON list, not an object"),
        ("batch", {"batch": []}, 400, "a batch is an object with a non-empty `batch` array"),
        ("batch", {"batch": {}}, 400, "a batch is an object with a non-empty `batch` array"),
        ("batch", {"batch": [{"type": "track"}], "context": 1}, 400, "the batch's context is not an object"),
        ("page", {"anonymousId": "a", "timestamp": "yesterday"}, 400, "segment: timestamp: Value error"),
    ],
)
def test_refusals(call: str, body: Any, status: int, message: str) -> None:
    refusal = refused(call, body)
    assert refusal.status == status and refusal.message.startswith(message), refusal.message
    assert refusal.body()["code"] == refusal.code


def test_group_calls_are_produced_keyed_by_their_user() -> None:
    (record,) = post("group", {"userId": "user_1", "groupId": "g1", "timestamp": "2024-03-13T10:00:00Z"})
    assert record["key"] == "user_1"
    assert decode_message(orjson.dumps(record)).ignored == 1


def test_a_server_side_senders_agent_is_not_taken_for_the_visitors() -> None:
    """curl or a backend's HTTP library sends for the visitor: its agent would make the call a bot
    (kept out of funnels by default); a browser's agent is the visitor's own."""
    from streams.collector.messages import Client, _with_client

    chrome = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
    )
    for agent, kept in (("curl/8.5.0", None), ("okhttp/4.12.0", None), (chrome, chrome)):
        message: dict[str, object] = {"type": "track", "event": "Order Completed"}
        _with_client(message, Client(address=None, user_agent=agent), "drop", None)
        assert message["context"] == ({"userAgent": kept} if kept else {}), agent
