"""Segment-spec messages (Segment, RudderStack, Jitsu) as clickstream events.

The messages in tests/fixtures/trackers/segment-spec.json have the shapes the Segment Spec
documents for each call (and RudderStack's and the HTTP batch API's); each test states the event
it must become by hand. The journey test feeds the same shop visit once as Segment messages and
once as our own JSON, written apart, and requires identical outputs: what the issue means by
"the same journeys, conversions and attribution as our own JSON would give".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.input.formats.detect import InputFormatError, format_for, parse_input_formats
from streams.core.input.formats.segment import decode_segment, segment_platform
from streams.core.input.rejection import Decoded
from streams.offline.run import OfflineRun

SPEC: dict[str, Any] = orjson.loads(
    (Path(__file__).parents[2] / "fixtures/trackers/segment-spec.json").read_bytes()
)
MAC_CHROME = SPEC["track"]["context"]["userAgent"]


def decode(message: Any, fmt: str = "auto") -> Decoded:
    return decode_message(orjson.dumps(message), format=fmt)  # type: ignore[arg-type]


def one(message: Any, fmt: str = "auto") -> dict[str, Any]:
    decoded = decode(message, fmt)
    assert decoded.format == "segment" and not decoded.rejects, decoded.rejects
    (event,) = decoded.events
    return event.to_json_dict()


def test_track_as_processed_by_segment_keeps_its_corrected_timestamp() -> None:
    assert one(SPEC["track"]) == {
        "event_id": "ajs-9f1c2b3d4e5f60718293a4b5c6d7e8f9",
        "event": "Product Added",
        "user_id": "user_0042",
        "anonymous_id": "4a9c2e1b-7d3f-4e8a-b6c5-0f1e2d3c4b5a",
        # timestamp and originalTimestamp both present: Segment has corrected it already
        "timestamp": "2024-03-13T10:02:01.249000Z",
        # context.page: the empty referrer is no referrer
        "page": {"url": "https://shop.example/p/42", "title": "Headphones"},
        "context": {
            "platform": "web",
            "user_agent": MAC_CHROME,
            "library": {"name": "analytics.js", "version": "2.11.1"},
            "ip": "203.0.113.7",  # mapped as is: enrichment at ingest drops or truncates it
        },
        "properties": {"product_id": "p42", "price": 59.9, "currency": "EUR"},
    }


def test_page_is_a_page_view_with_its_own_page_and_the_campaign_of_its_url() -> None:
    page = SPEC["page"]
    event = one(page)
    assert event["event"] == "page_view"
    assert event["anonymous_id"] == page["anonymousId"] and "user_id" not in event
    assert event["page"] == {
        "url": page["properties"]["url"],
        "referrer": "https://mail.example/inbox",
        "title": "Welcome | Shop",
    }
    assert event["campaign"] == {"source": "newsletter", "medium": "email", "name": "spring"}
    assert event["properties"]["name"] == "Home" and event["properties"]["category"] == "Shop"
    # a raw client message with sentAt and receivedAt: corrected for the client's clock,
    # receivedAt - (sentAt - timestamp), which is receivedAt here since timestamp == sentAt
    assert event["timestamp"] == "2024-03-13T10:00:00.387000Z"
    assert event["context"] == {"platform": "web", "user_agent": MAC_CHROME, "ip": "203.0.113.7"}


def test_screen_is_a_page_view_titled_by_the_screen() -> None:
    event = one(SPEC["screen"])
    assert (event["event"], event["page"], event["user_id"]) == ("page_view", {"title": "Home"}, "user_0077")
    assert event["context"] == {"platform": "mobile", "ip": "203.0.113.9"}  # channel mobile, no OS given
    assert event["properties"] == {"name": "Home", "variation": "blue signup button"}


def test_identify_links_the_anonymous_id_to_the_user() -> None:
    event = one(SPEC["identify"])
    assert (event["event"], event["user_id"], event["anonymous_id"]) == (
        "identify",
        "user_0042",
        "4a9c2e1b-7d3f-4e8a-b6c5-0f1e2d3c4b5a",
    )
    assert event["properties"] == {"plan": "premium", "logins": 5}  # the traits
    assert ClickEvent.model_validate(event).identity == "user_0042"


def test_alias_links_the_previous_id_to_the_user() -> None:
    event = one(SPEC["alias"])
    assert (event["event"], event["user_id"], event["anonymous_id"]) == (
        "alias",
        "user_0042",
        "39239-239239-239239-23923",
    )
    assert event["properties"] == {}


def test_group_is_accepted_ignored_and_counted() -> None:
    decoded = decode(SPEC["group"])
    assert (decoded.events, decoded.rejects, decoded.ignored) == ([], [], 1)
    batch = decode({"batch": [SPEC["group"], SPEC["track"], SPEC["group"]]})
    assert (len(batch.events), batch.ignored) == (1, 2)


def test_a_native_app_event_takes_its_platform_from_the_library_and_campaign_from_context() -> None:
    event = one(SPEC["mobile_track"])
    assert event["context"] == {
        "platform": "ios",
        "locale": "en-US",
        "timezone": "Europe/Amsterdam",
        "library": {"name": "analytics-ios", "version": "4.1.8"},
    }
    assert event["campaign"] == {
        "source": "newsletter",
        "medium": "email",
        "name": "spring",
        "term": "headphones",
        "content": "image link",
    }


def test_rudderstack_message_with_its_session_and_channel() -> None:
    event = one(SPEC["rudderstack_track"])
    assert event["session_id"] == "1710324000123"
    assert event["context"]["platform"] == "mobile"  # channel web, a phone's user agent
    assert event["timestamp"] == "2024-03-13T10:02:03.906000Z"
    assert event["page"]["referrer"] == "https://www.google.com/"


def test_http_api_batch_with_the_batch_sent_at_and_a_collector_received_at() -> None:
    batch = SPEC["batch"]
    decoded = decode(batch)
    assert [e.event for e in decoded.events] == ["Signed Up", "page_view"]
    assert [e.context["platform"] for e in decoded.events] == ["server", "server"]
    # the client's clock is 2 minutes fast: sent at 10:01, received at 09:59 by the server
    stamped = {**batch, "receivedAt": "2024-03-13T09:59:00+00:00"}
    times = [e.timestamp.isoformat() for e in decode(stamped).events]
    assert times == ["2024-03-13T09:58:00+00:00", "2024-03-13T09:58:30+00:00"]
    # a shared context applies where a message has none of its own
    shared = {**batch, "context": {"userAgent": MAC_CHROME, "library": {"name": "x"}}}
    first = decode(shared).events[0]
    assert (
        first.context["user_agent"] == MAC_CHROME and first.context["library"]["name"] == "analytics-python"
    )


def test_an_array_of_messages_is_a_batch_and_detection_is_by_its_first_element() -> None:
    decoded = decode([SPEC["track"], SPEC["page"]])
    assert decoded.format == "segment" and [e.event for e in decoded.events] == ["Product Added", "page_view"]


def test_a_message_without_message_id_gets_a_digest_of_its_content() -> None:
    bare = {k: v for k, v in SPEC["track"].items() if k != "messageId"}
    first = one(bare)["event_id"]
    resent = one({**bare, "sentAt": "2024-03-13T10:02:09.000Z", "receivedAt": "2024-03-13T10:02:09.100Z"})
    assert first.startswith("segment-") and resent["event_id"] == first
    assert one({**bare, "properties": {"product_id": "p43"}})["event_id"] != first


def test_our_own_json_is_never_read_as_segment() -> None:
    ours = {
        "event_id": "e1",
        "event": "page_view",
        "user_id": "u",
        "type": "track",
        "userId": "x",
        "timestamp": "2024-03-13T10:00:00Z",
    }
    decoded = decode(ours)
    assert decoded.format == "contract" and decoded.events[0].user_id == "u"


def test_declared_formats() -> None:
    ours = {"event_id": "e1", "event": "x", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}
    as_segment = decode(ours, "segment")
    assert [(r.reason, r.detail) for r in as_segment.rejects] == [
        ("invalid_event", "segment: message without type")
    ]
    as_contract = decode(SPEC["track"], "contract")
    (rejection,) = as_contract.rejects
    assert rejection.format == "contract" and rejection.detail.startswith(
        "contract: event_id: Field required"
    )
    assert decode(SPEC["track"], "segment").events[0].event == "Product Added"


BAD: list[tuple[str, Any, str, str]] = [
    ("no event", {**SPEC["track"], "event": None}, "invalid_event", "segment: track without event"),
    (
        "event not text",
        {**SPEC["track"], "event": 7},
        "invalid_event",
        "segment: track: event is a int, not a string",
    ),
    (
        "unknown type",
        {**SPEC["track"], "type": "trak"},
        "invalid_event",
        "segment: type 'trak' is not one of alias, group, identify, page, screen, track",
    ),
    (
        "no ids",
        {k: v for k, v in SPEC["track"].items() if k not in ("userId", "anonymousId")},
        "invalid_event",
        "segment: track without userId or anonymousId",
    ),
    (
        "alias without previousId",
        {**SPEC["alias"], "previousId": ""},
        "invalid_event",
        "segment: alias without previousId",
    ),
    (
        "alias without userId",
        {**SPEC["alias"], "userId": None},
        "invalid_event",
        "segment: alias without userId",
    ),
    (
        "bad timestamp",
        {**SPEC["track"], "timestamp": "last tuesday"},
        "invalid_event",
        "segment: timestamp: Value error, unparseable timestamp 'last tuesday'",
    ),
    (
        "bad sentAt",
        {**SPEC["page"], "sentAt": "soon"},
        "invalid_event",
        "segment: page sentAt: unparseable timestamp 'soon'",
    ),
    (
        "no timestamp at all",
        {k: v for k, v in SPEC["track"].items() if k not in ("timestamp", "originalTimestamp", "receivedAt")},
        "invalid_event",
        "segment: track without timestamp",
    ),
    (
        "properties not an object",
        {**SPEC["track"], "properties": [1]},
        "invalid_event",
        "segment: track: properties is not an object",
    ),
    (
        "traits not an object",
        {**SPEC["identify"], "traits": "vip"},
        "invalid_event",
        "segment: identify: traits is not an object",
    ),
    (
        "context not an object",
        {**SPEC["track"], "context": "web"},
        "invalid_event",
        "segment: track: context is not an object",
    ),
    (
        "context.page not an object",
        {**SPEC["track"], "context": {"page": "/p/42"}},
        "invalid_event",
        "segment: track: context.page is not an object",
    ),
    (
        "context.campaign not an object",
        {**SPEC["track"], "context": {"campaign": "spring"}},
        "invalid_event",
        "segment: track: context.campaign is not an object",
    ),
    (
        "page url not a string",
        {**SPEC["track"], "context": {"page": {"url": 42}}},
        "invalid_event",
        "segment: context.page.url: Input should be a valid string",
    ),
    (
        "page call's url not a string",
        {**SPEC["page"], "properties": {"url": ["x"]}},
        "invalid_event",
        "segment: properties.url: Input should be a valid string",
    ),
    (
        "campaign source too long",
        {**SPEC["track"], "context": {"campaign": {"source": "s" * 300}}},
        "invalid_event",
        "segment: context.campaign.source: String should have at most 256 characters",
    ),
    (
        "messageId not text",
        {**SPEC["track"], "messageId": {"id": 1}},
        "invalid_event",
        "segment: messageId: Input should be a valid string",
    ),
    (
        "userId with a control character",
        {**SPEC["track"], "userId": "u\n1"},
        "invalid_event",
        "segment: userId: String should match pattern",
    ),
    (
        "properties nested too deep",
        {
            **SPEC["track"],
            "properties": {
                "a": {
                    "b": {
                        "c": {
                            "d": {
                                "e": {
                                    "f": {
                                        "g": {
                                            "h": {
                                                "i": {"j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        },
        "too_deeply_nested",
        "segment: properties: Value error, nested deeper than 16 levels",
    ),
    (
        "batch not an array",
        {"batch": {"type": "track"}},
        "invalid_event",
        "segment: batch is a dict, not an array",
    ),
    ("empty batch", {"batch": []}, "empty_batch", "segment: the batch is empty"),
    (
        "batch context not an object",
        {"batch": [SPEC["track"]], "context": 1},
        "invalid_event",
        "segment: the batch's context is not an object",
    ),
]


@pytest.mark.parametrize(("message", "reason", "detail"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_broken_message_is_refused_naming_the_format_and_the_field(
    message: Any, reason: str, detail: str
) -> None:
    raw = orjson.dumps(message)
    for fmt in ("auto", "segment"):
        decoded = decode_message(raw, format=fmt)
        assert not decoded.events
        (rejection,) = decoded.rejects
        assert (rejection.reason, rejection.format, rejection.original) == (reason, "segment", raw)
        assert rejection.detail.startswith(detail), rejection.detail


def test_a_broken_element_of_a_batch_is_refused_alone_with_its_index() -> None:
    bad = {**SPEC["track"], "event": ""}
    decoded = decode({"batch": [SPEC["page"], bad, "oops", SPEC["track"]]})
    assert [e.event for e in decoded.events] == ["page_view", "Product Added"]
    assert [(r.index, r.reason) for r in decoded.rejects] == [(1, "invalid_event"), (2, "not_an_object")]
    assert orjson.loads(decoded.rejects[0].original) == bad
    assert decoded.rejects[1].detail == "segment: a message is a JSON object, not str"


def test_batch_limits_and_nesting() -> None:
    raw = orjson.dumps({"batch": [SPEC["track"]] * 3})
    assert decode_segment(orjson.loads(raw), raw, max_batch=2).rejects[0].reason == "batch_too_large"
    deep: Any = 1
    for _ in range(30):
        deep = {"x": deep}
    decoded = decode({**SPEC["track"], "context": deep})
    assert [r.reason for r in decoded.rejects] == ["too_deeply_nested"]
    assert decode_message(b"{", format="segment").rejects[0].detail.startswith("segment: ")


@pytest.mark.parametrize(
    ("context", "channel", "platform"),
    [
        ({"library": {"name": "analytics-ios"}}, None, "ios"),
        ({"library": {"name": "analytics-swift"}}, None, "ios"),
        ({"library": {"name": "analytics-android"}}, None, "android"),
        ({"library": {"name": "com.rudderstack.android.sdk.core"}}, "mobile", "android"),
        ({"library": {"name": "analytics-react-native"}, "os": {"name": "iOS"}}, None, "ios"),
        ({"library": {"name": "analytics-react-native"}, "os": {"name": "Android"}}, None, "android"),
        ({}, "mobile", "mobile"),
        ({"library": {"name": "analytics.js"}}, None, "web"),
        (
            {
                "library": {"name": "analytics.js"},
                "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4) Mobile",
            },
            None,
            "mobile",
        ),
        ({"library": {"name": "@jitsu/js"}}, None, "web"),
        ({"library": {"name": "analytics-python"}}, None, "server"),
        ({"library": {"name": "analytics-node"}, "userAgent": MAC_CHROME}, None, "web"),
        ({}, "server", "server"),
        ({}, "browser", "web"),
        ({"app": {"name": "Shop"}, "os": {"name": "iPadOS"}}, None, "ios"),
        ({}, None, None),
    ],
)
def test_platform(context: dict[str, Any], channel: str | None, platform: str | None) -> None:
    assert segment_platform(context, channel) == platform


FUNNELS = compile_config(
    parse_config("""
version: 1
goals: [{name: purchase, match: {event: Order Completed}, value: properties.revenue}]
funnels:
  - name: checkout
    steps:
      - {name: product, match: {event: Product Viewed}}
      - {name: cart, match: {event: Product Added}}
      - {name: purchase, match: {goal: purchase}}
    breakdowns: [context.platform, campaign.source, landing_page]
""")
)


def test_a_segment_journey_gives_the_outputs_our_json_gives() -> None:
    """Anonymous landing from a newsletter, product view, sign-in (identify), add to cart and
    purchase as the user: the same visit as Segment messages and as contract JSON."""
    anon, user, ua = "anon-7", "user_0042", MAC_CHROME
    landing = "https://shop.example/?utm_source=newsletter&utm_medium=email&utm_campaign=spring"

    def at(minute: int) -> str:
        return f"2024-03-13T10:{minute:02d}:00.000Z"

    segment = [
        {"type": "page", "messageId": "m1", "anonymousId": anon, "timestamp": at(0), "name": "Home",
         "properties": {"url": landing, "referrer": "https://mail.example/"}, "context": {"userAgent": ua}},
        {"type": "track", "messageId": "m2", "anonymousId": anon, "timestamp": at(1),
         "event": "Product Viewed", "properties": {"product_id": "p42"},
         "context": {"userAgent": ua, "page": {"url": "https://shop.example/p/42"}}},
        {"type": "identify", "messageId": "m3", "anonymousId": anon, "userId": user, "timestamp": at(2),
         "traits": {"plan": "free"}, "context": {"userAgent": ua}},
        {"type": "group", "messageId": "m3g", "userId": user, "groupId": "g1", "timestamp": at(2)},
        {"type": "track", "messageId": "m4", "userId": user, "timestamp": at(3), "event": "Product Added",
         "properties": {"product_id": "p42"}, "context": {"userAgent": ua}},
        {"type": "track", "messageId": "m5", "userId": user, "timestamp": at(4), "event": "Order Completed",
         "properties": {"revenue": 59.9}, "context": {"userAgent": ua}},
    ]  # fmt: skip
    web = {"platform": "web", "user_agent": ua}
    ours = [
        {"event_id": "m1", "event": "page_view", "anonymous_id": anon, "timestamp": at(0), "context": web,
         "page": {"url": landing, "referrer": "https://mail.example/"}},
        {"event_id": "m2", "event": "Product Viewed", "anonymous_id": anon, "timestamp": at(1),
         "context": web, "page": {"url": "https://shop.example/p/42"}, "properties": {"product_id": "p42"}},
        {"event_id": "m3", "event": "identify", "anonymous_id": anon, "user_id": user, "timestamp": at(2),
         "context": web},
        {"event_id": "m4", "event": "Product Added", "user_id": user, "timestamp": at(3), "context": web,
         "properties": {"product_id": "p42"}},
        {"event_id": "m5", "event": "Order Completed", "user_id": user, "timestamp": at(4), "context": web,
         "properties": {"revenue": 59.9}},
    ]  # fmt: skip

    def outputs(lines: list[bytes]) -> list[dict[str, Any]]:
        run = OfflineRun(FUNNELS, partitions=2)
        out = [o.model_dump(mode="json") for line in lines for o in run.feed(line)]
        return out + [o.model_dump(mode="json") for o in run.flush()]

    from_segment = outputs([orjson.dumps({"batch": segment[:2]}), *(orjson.dumps(m) for m in segment[2:])])
    from_ours = outputs([orjson.dumps(ours[:2]), *(orjson.dumps(e) for e in ours[2:])])
    assert from_segment == from_ours
    (macro,) = [o for o in from_segment if o["type"] == "macro"]
    assert (macro["user_id"], macro["value"], macro["landing_page"], macro["channel"]) == (
        user,
        59.9,
        "/",
        "Email",
    )
    assert [o["step"] for o in from_segment if o["type"] == "micro"] == ["product", "cart", "purchase"]
    assert [o["type"] for o in from_segment].count("identity") == 1


IDS = st.none() | st.text(max_size=8) | st.integers(-5, 5) | st.booleans()
TIMES = (
    st.none()
    | st.sampled_from(["2024-03-13T10:00:00Z", "2024-03-13 10:00:00", "nope", ""])
    | st.integers(0, 2**42)
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=20,
)
CONTEXT = st.fixed_dictionaries(
    {},
    optional={
        "page": JSON
        | st.fixed_dictionaries({}, optional={"url": JSON, "referrer": JSON, "path": JSON, "search": JSON}),
        "campaign": JSON | st.fixed_dictionaries({}, optional={"source": JSON, "medium": JSON, "name": JSON}),
        "library": JSON | st.fixed_dictionaries({}, optional={"name": JSON, "version": JSON}),
        "os": JSON,
        "app": JSON,
        "userAgent": JSON,
        "sessionId": IDS,
    },
)
MESSAGE = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "screen", "identify", "alias", "group", "other"]) | JSON},
    optional={
        "event": JSON,
        "name": JSON,
        "userId": IDS,
        "anonymousId": IDS,
        "previousId": IDS,
        "messageId": IDS | JSON,
        "timestamp": TIMES,
        "originalTimestamp": TIMES,
        "sentAt": TIMES,
        "receivedAt": TIMES,
        "properties": JSON,
        "traits": JSON,
        "context": CONTEXT | JSON,
        "channel": st.sampled_from(["web", "mobile", "server", "browser"]) | JSON,
    },
)


@settings(max_examples=400)
@given(
    st.one_of(
        MESSAGE,
        st.lists(MESSAGE, max_size=4),
        st.fixed_dictionaries(
            {"batch": st.lists(MESSAGE, max_size=4)}, optional={"sentAt": TIMES, "context": CONTEXT | JSON}
        ),
    )
)
def test_any_segment_shaped_json_gives_events_ignored_calls_or_segment_refusals(value: Any) -> None:
    raw = orjson.dumps(value)
    decoded = decode_message(raw, format="segment")
    assert decoded.events or decoded.rejects or decoded.ignored
    for rejection in decoded.rejects:
        assert rejection.format == "segment" and rejection.detail.startswith("segment: ")
        assert rejection.original == raw or rejection.index is not None


@settings(max_examples=400)
@given(st.binary(max_size=300) | JSON.map(orjson.dumps) | MESSAGE.map(orjson.dumps))
def test_any_input_in_auto_mode_never_raises_and_every_refusal_names_its_format(raw: bytes) -> None:
    decoded = decode_message(raw)
    assert decoded.events or decoded.rejects or decoded.ignored
    for rejection in decoded.rejects:
        assert rejection.format in ("json", "contract", "segment", "snowplow")
        assert rejection.detail.startswith(f"{rejection.format}: ")


def test_input_format_setting() -> None:
    assert parse_input_formats("auto") == {None: "auto"}
    assert parse_input_formats("segment") == {None: "segment"}
    formats = parse_input_formats(
        "contract, clickstream=segment,snowplow-enriched=snowplow", ["clickstream", "snowplow-enriched"]
    )
    assert formats == {None: "contract", "clickstream": "segment", "snowplow-enriched": "snowplow"}
    assert format_for(formats, "clickstream") == "segment" and format_for(formats, "other") == "contract"
    assert format_for(parse_input_formats("clickstream=segment"), "other") == "auto"
    for bad, why in [
        ("segmnt", "the format must be one of auto, contract, segment, snowplow"),
        ("clickstream=segment,contract", "a format for every topic must come first"),
        ("=segment", "the topic name is empty"),
        ("clickstream=segment,clickstream=snowplow", "topic 'clickstream' is given twice"),
        ("clikstream=segment", "'clikstream' is not a clickstream topic (clickstream)"),
    ]:
        with pytest.raises(InputFormatError, match=why.replace("(", r"\(").replace(")", r"\)")):
            parse_input_formats(bad, ["clickstream"])
