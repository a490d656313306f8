from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from types import MappingProxyType
from urllib.parse import parse_qs

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.core.input.decode import _validate_one, decode_message
from streams.core.input.event import (
    MAX_NESTING,
    SHALLOW_VALIDATOR,
    ClickEvent,
    campaign_from_url,
    parse_timestamp,
    to_epoch_ms,
    url_path,
)
from streams.core.input.fields import first_values, nesting_depth, two_deep
from streams.core.input.rejection import Rejection
from tests.helpers import event


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-13T10:21:14Z", datetime(2024, 3, 13, 10, 21, 14, tzinfo=UTC)),
        ("2024-03-13T12:21:14+02:00", datetime(2024, 3, 13, 10, 21, 14, tzinfo=UTC)),
        ("2024-03-13 10:21:14", datetime(2024, 3, 13, 10, 21, 14, tzinfo=UTC)),
        (1710325274000, datetime(2024, 3, 13, 10, 21, 14, tzinfo=UTC)),
        (1710325274123, datetime(2024, 3, 13, 10, 21, 14, 123000, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(raw: object, expected: datetime) -> None:
    assert parse_timestamp(raw) == expected


@pytest.mark.parametrize("raw", ["yesterday", "", True, 1.5, None, "1999-12-31T23:59:59Z", 10**16, "x" * 50])
def test_bad_timestamps_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def test_identity_prefers_user_id() -> None:
    both = ClickEvent.model_validate(event("x", "10:00", anonymous_id="a1"))
    assert both.identity == "u1"
    anonymous = ClickEvent.model_validate({**event("x", "10:00"), "user_id": None, "anonymous_id": "a1"})
    assert anonymous.identity == "a1"


def test_campaign_is_derived_from_utm_parameters_only_when_absent() -> None:
    url = "https://shop.example/p/42?utm_source=google&utm_medium=cpc&utm_campaign=spring"
    derived = ClickEvent.model_validate(event("x", "10:00", page={"url": url}))
    assert derived.campaign is not None
    assert derived.campaign.key() == ("google", "cpc", "spring")
    given_campaign = ClickEvent.model_validate(
        event("x", "10:00", page={"url": url}, campaign={"source": "bing"})
    )
    assert given_campaign.campaign is not None and given_campaign.campaign.source == "bing"
    assert campaign_from_url("https://shop.example/?q=1") is None


def test_url_path() -> None:
    assert url_path("https://shop.example/p/42?x=1#top") == "/p/42"
    assert url_path("https://shop.example") == "/"
    assert url_path(None) is None


def test_lookup_dotted_paths() -> None:
    click = ClickEvent.model_validate(
        event("x", "10:00", context={"platform": "ios", "app": {"v": 3}}, properties={"category": "tutorial"})
    )
    assert click.lookup(("context", "platform")) == "ios"
    assert click.lookup(("context", "app", "v")) == 3
    assert click.lookup(("properties", "category")) == "tutorial"
    assert click.lookup(("properties", "missing", "deeper")) is None
    assert click.lookup(("event",)) == "x"


def test_decode_single_and_batch() -> None:
    one = decode_message(orjson.dumps(event("page_view", "10:00")))
    assert [e.event for e in one.events] == ["page_view"] and not one.rejects
    batch = decode_message(orjson.dumps([event("a", "10:00"), event("b", "10:01")]))
    assert [e.event for e in batch.events] == ["a", "b"]


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event": ', "invalid_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"", "invalid_json"),
        (b"42", "not_an_object"),
        (b"[]", "empty_batch"),
        (b"[" * 2000 + b"]" * 2000, "too_deeply_nested"),
        (orjson.dumps({**event("x", "10:00"), "properties": _nested(20)}), "too_deeply_nested"),
        (orjson.dumps({"event": "x", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}), "invalid_event"),
        (orjson.dumps({**event("x", "10:00"), "user_id": None}), "invalid_event"),
        (orjson.dumps({**event("x", "10:00"), "event": 42}), "invalid_event"),
        (orjson.dumps({**event("x", "10:00"), "properties": []}), "invalid_event"),
    ],
)
def test_every_bad_message_is_rejected_with_a_reason_and_its_bytes(raw: bytes, reason: str) -> None:
    decoded = decode_message(raw)
    assert not decoded.events
    assert [r.reason for r in decoded.rejects] == [reason]
    assert decoded.rejects[0].original == raw
    assert decoded.rejects[0].detail


def test_too_large_and_too_many() -> None:
    big = orjson.dumps({**event("x", "10:00"), "properties": {"blob": "x" * 2000}})
    assert decode_message(big, max_bytes=1024).rejects[0].reason == "too_large"
    many = orjson.dumps([event("x", "10:00")] * 3)
    assert decode_message(many, max_batch=2).rejects[0].reason == "batch_too_large"


def test_a_bad_element_of_a_batch_is_rejected_alone_with_its_index() -> None:
    good, bad = event("ok", "10:00"), {"event": "no id"}
    decoded = decode_message(orjson.dumps([good, bad, good]))
    assert [e.event for e in decoded.events] == ["ok", "ok"]
    (rejection,) = decoded.rejects
    assert rejection.index == 1 and orjson.loads(rejection.original) == bad
    assert {e["loc"] for e in rejection.errors} >= {"event_id", "timestamp"}


@given(st.binary(max_size=300))
def test_decoding_never_raises_and_loses_nothing(raw: bytes) -> None:
    decoded = decode_message(raw)
    assert decoded.events or decoded.rejects
    for rejection in decoded.rejects:
        assert rejection.original == raw or rejection.index is not None


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)
EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "event_id": JSON,
        "event": JSON,
        "user_id": JSON,
        "anonymous_id": JSON,
        "timestamp": JSON | st.datetimes().map(lambda d: d.isoformat()),
        "page": JSON,
        "properties": JSON,
        "context": JSON,
    },
)


@given(st.one_of(JSON, EVENTISH, st.lists(EVENTISH, max_size=5)))
def test_any_json_is_either_events_or_reasoned_rejections_and_never_raises(value: object) -> None:
    raw = orjson.dumps(value)
    decoded = decode_message(raw, latest_ms=to_epoch_ms(datetime(2030, 1, 1, tzinfo=UTC)))
    assert decoded.events or decoded.rejects
    assert all(r.reason and r.detail and r.original for r in decoded.rejects)


def _validated(validate: object, value: object, **context: object) -> object:
    try:
        made = validate(value, **context)  # type: ignore[operator]
    except ValidationError as exc:
        return exc.errors(include_url=False, include_context=False)
    return (type(made), made.__dict__, made.__pydantic_fields_set__)


@given(EVENTISH)
def test_the_shallow_validator_gives_what_the_full_one_gives_for_an_ordinary_event(value: object) -> None:
    """Decoding skips the nesting check where it cannot fail (`two_deep`) and takes `context` and
    `properties` as the dicts they are: the event it accepts is the one `ClickEvent`'s own
    validator with the nesting limit makes, and what it refuses is decided by that validator,
    whose errors the rejection carries."""
    assert SHALLOW_VALIDATOR is not ClickEvent.__pydantic_validator__  # the schema was as expected
    if isinstance(value, dict) and two_deep(value):
        full = ClickEvent.__pydantic_validator__.validate_python
        expected = _validated(full, value, context={"max_nesting": MAX_NESTING})
        shallow = _validated(SHALLOW_VALIDATOR.validate_python, value)
        # JSON's objects are dicts: the shallow validator refuses nothing the full one takes
        assert isinstance(shallow, tuple) == isinstance(expected, tuple)
        if isinstance(shallow, tuple):
            assert shallow == expected
        decoded = _validate_one(value, MAX_NESTING, ordinary=True)
        if isinstance(expected, tuple):
            assert isinstance(decoded, ClickEvent)
            assert (type(decoded), decoded.__dict__, decoded.__pydantic_fields_set__) == expected
            if isinstance(value.get("context"), dict):
                assert decoded.context is value["context"]  # taken as it is, not copied
        else:
            assert isinstance(decoded, Rejection)
            assert decoded.errors == [
                {"loc": ".".join(str(p) for p in e["loc"]), "type": e["type"], "msg": e["msg"]}
                for e in expected  # type: ignore[attr-defined]
            ]


def test_context_and_properties_given_as_other_mappings_are_taken_as_before() -> None:
    """The shallow validator takes only dicts as they are; a mapping of another type (no decoder
    hands one over today: a defensive case) still becomes the dict the contract's validator makes
    of it, and a value that is no mapping is refused with the contract's error."""
    given_context = MappingProxyType({"locale": "en-US"})
    value = {"event_id": "e", "event": "x", "user_id": "u", "timestamp": 1_700_000_000_000}
    value["context"] = given_context
    decoded = _validate_one(value, MAX_NESTING, ordinary=True)
    assert isinstance(decoded, ClickEvent)
    assert type(decoded.context) is dict and decoded.context == {"locale": "en-US"}
    refused = _validate_one({**value, "context": "en-US"}, MAX_NESTING, ordinary=True)
    assert isinstance(refused, Rejection) and refused.reason == "invalid_event"
    wanted = {"loc": "context", "type": "dict_type", "msg": "Input should be a valid dictionary"}
    assert refused.errors == [wanted]


@given(st.dictionaries(st.text(max_size=10), JSON, max_size=6))
def test_two_deep_is_a_nesting_of_at_most_two_levels(value: dict[str, object]) -> None:
    """`two_deep` (decoding's look at an event's values) agrees with the level-by-level count."""
    assert two_deep(value) == (nesting_depth(value) <= 2)


def _timestamp_as_read_before(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


ZONES: st.SearchStrategy[tzinfo] = st.one_of(st.just(UTC), st.timezones())


@given(
    st.one_of(
        st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)),
        st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=ZONES),
    )
    .map(lambda d: d.isoformat(sep=" "))
    .flatmap(lambda text: st.sampled_from([text, text.replace("+00:00", "Z")]))
)
def test_a_timestamp_string_is_read_as_astimezone_reads_it(text: str) -> None:
    """`parse_timestamp` skips `astimezone` for a moment already in UTC: the same datetime, its
    zone `datetime.UTC` itself (what pydantic keeps, and `to_epoch_ms` subtracts from)."""
    try:
        expected = _timestamp_as_read_before(text)
    except ValueError:  # outside 2000..2100 once in UTC, say
        return
    if not datetime(2000, 1, 1, tzinfo=UTC) <= expected < datetime(2100, 1, 1, tzinfo=UTC):
        return
    parsed = parse_timestamp(text)
    assert (parsed, parsed.utcoffset(), parsed.tzinfo) == (expected, expected.utcoffset(), UTC)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("depth", [MAX_NESTING + 3, 400, 900, 1_020])
def test_deep_nesting_anywhere_is_refused_without_exhausting_the_stack(depth: int) -> None:
    arrays = b"[" * depth + b"]" * depth
    in_properties = b'{"event_id":"e","event":"x","user_id":"u","timestamp":0,"properties":' + arrays + b"}"
    for raw in (arrays, in_properties, b"[" + in_properties + b"]"):
        decoded = decode_message(raw)
        assert not decoded.events
        assert [r.reason for r in decoded.rejects] == ["too_deeply_nested"], raw[:80]


def test_events_too_far_ahead_of_the_clock_are_refused() -> None:
    now = to_epoch_ms(datetime(2026, 11, 24, 12, tzinfo=UTC))
    soon = orjson.dumps({"event_id": "a", "event": "x", "user_id": "u", "timestamp": now + 60_000})
    later = orjson.dumps({"event_id": "b", "event": "x", "user_id": "u", "timestamp": now + 7_200_000})
    decoded = decode_message(b"[" + soon + b"," + later + b"]", latest_ms=now + 3_600_000)
    assert [e.event_id for e in decoded.events] == ["a"]
    assert [r.reason for r in decoded.rejects] == ["future_timestamp"]
    assert orjson.loads(decoded.rejects[0].original)["event_id"] == "b"


def test_event_round_trips_through_its_json_form() -> None:
    url = "https://shop.example/p?utm_source=g"
    click = ClickEvent.model_validate(event("x", "2024-03-13T10:00:00.123456Z", page={"url": url}))
    again = ClickEvent.model_validate(orjson.loads(orjson.dumps(click.to_json_dict())))
    assert again == click and again.ts_ms == click.ts_ms


def test_a_message_that_is_not_utf8_says_so_and_where() -> None:
    raw = b'{"event_id": "e1", "event": "caf\xe9", "user_id": "u1"}'
    [rejection] = decode_message(raw).rejects
    assert rejection.reason == "invalid_utf8"
    assert rejection.detail == "json: not UTF-8: invalid continuation byte at byte 32 (0xe9)"
    assert "surrogates" not in rejection.detail


def test_unknown_top_level_fields_are_counted_and_named_not_rejected() -> None:
    typo = event("add_to_cart", "10:00", propertys={"value": 3})
    decoded = decode_message(orjson.dumps([typo, typo, event("page_view", "10:01")]))
    assert len(decoded.events) == 3 and not decoded.rejects
    assert decoded.unknown_fields == {"propertys": 2}
    assert decode_message(orjson.dumps(event("page_view", "10:02"))).unknown_fields == {}
    single = decode_message(orjson.dumps(event("page_view", "10:03", referer="x", propertys={})))
    assert single.unknown_fields == {"referer": 1, "propertys": 1}


def test_unknown_fields_get_a_bounded_number_of_series() -> None:
    from streams.metrics import UNKNOWN_FIELD_LABELS, Metrics

    metrics = Metrics()
    first = metrics.count_unknown_fields({f"f{i}": 1 for i in range(UNKNOWN_FIELD_LABELS + 30)})
    assert len(first) == UNKNOWN_FIELD_LABELS
    assert metrics.count_unknown_fields({"f0": 2, "new": 1}) == []
    samples = {
        s.labels["field"]: s.value
        for s in next(iter(metrics.unknown_fields.collect())).samples
        if s.name.endswith("_total")
    }
    assert len(samples) == UNKNOWN_FIELD_LABELS + 1
    assert samples["(other)"] == 31 and samples["f0"] == 3


NAMES = st.sampled_from(["utm_source", "utm_medium", "utm%5Fcampaign", "utm+term", "utm_term", "x", ""])
VALUES = st.sampled_from(["", "a", "a+b", "%41", "%zz", "%C3%A9", "%ff", "b=c", "%"]) | st.text(max_size=4)
PAIRS = st.tuples(NAMES, st.sampled_from(["=", ""]), VALUES).map("".join)


@given(st.lists(PAIRS, max_size=8).map("&".join) | st.text(max_size=30))
def test_the_utm_parameters_are_read_as_parse_qs_reads_them(query: str) -> None:
    names = ("utm_source", "utm_medium", "utm_campaign", "utm term", "utm_term", "utm_content")
    parsed = parse_qs(query)
    assert first_values(query, names) == {name: parsed[name][0] for name in names if name in parsed}
