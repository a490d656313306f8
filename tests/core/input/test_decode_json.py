"""The common message is validated by pydantic straight from its bytes (`decode._from_json`),
the rest the whole way (orjson, then the validator): both must give the same events, unknown
fields, rejections and dead letters, whatever the message."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.input import decode
from streams.core.input.decode import decode_message
from streams.core.input.event import Campaign, Page
from streams.core.input.rejection import Decoded
from streams.tools.simulate import Simulator

BASE = b'{"event_id":"e1","event":"x","user_id":"u","timestamp":"2024-03-11T00:01:07.607296Z"'


def _model(value: Any) -> Any:
    if isinstance(value, Page | Campaign):
        return (type(value), _model(value.__dict__), value.__pydantic_fields_set__, value.__pydantic_extra__)
    if isinstance(value, dict):
        return [(k, type(v), _model(v)) for k, v in value.items()]
    return value


def _view(decoded: Decoded) -> Any:
    events = [
        (
            _model(e.__dict__),
            e.__pydantic_fields_set__,
            e.__pydantic_extra__,
            e.__pydantic_private__,
            e.timestamp.tzinfo,
        )
        for e in decoded.events
    ]
    rejects = [(r.reason, r.detail, r.original, r.index, r.errors, r.format) for r in decoded.rejects]
    return events, rejects, decoded.unknown_fields, decoded.format, decoded.ignored


def _same_both_ways(raw: bytes, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Decoded:
    fast = decode_message(raw, **options)
    with monkeypatch.context() as patched:
        patched.setattr(decode, "JSON_VALIDATOR", None)
        whole = decode_message(raw, **options)
    assert _view(fast) == _view(whole), raw
    return fast


def test_the_simulated_shop_decodes_alike_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        line.encode() if isinstance(line, str) else line
        for line in Simulator(seed=7, users=150, days=1, bad_rate=0.1).lines()
    ]
    for line in lines:
        _same_both_ways(line, monkeypatch)
    events = sum(decode._from_json(line, Decoded()) is not None for line in lines)
    assert events > len(lines) * 0.7  # the common message takes the bytes' way


@pytest.mark.parametrize(
    "tail",
    [
        b',"properties":{"n":NaN}}',
        b',"properties":{"n":Infinity}}',
        b',"properties":{"n":-Infinity}}',
        b',"properties":{"n":1e400}}',
        b',"properties":{"n":1E+400,"n":1}}',
        b',"properties":{"n":123456789012345678901234567890}}',
        b',"properties":{"n":-9223372036854775809}}',
        b',"propertys":NaN}',
        b',"properties":{"s":"a\x01b"}}',
        b',"properties":{"s":"\xed\xa0\x80"}}',
        b',"properties":{"s":"\\ud800"}}',
        b',"properties":{"n":4.9e-324,"m":-0,"f":0.1}}',
        b',"propertys":{"a":1},"x":[1],"event":"y"}',
        b',"page":{"url":"https://s.example/?utm_source=n","section":"top"},"campaign":{"placement":"h"}}',
        b',"audience":{"bot":1,"browser":"Firefox"}}',
        b',"audience":{"nope":1}}',
        b',"timestamp":1710115267607}',
        b',"timestamp":true}',
        b',"user_id":null}',
        b',"context":null}',
        b"} trailing",
        b"}  ",
        b',"properties":{"a":{"b":{"c":{}}}}}',
    ],
)
def test_edge_messages_decode_alike_both_ways(tail: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    _same_both_ways(BASE + tail, monkeypatch)
    _same_both_ways(BASE + tail, monkeypatch, max_nesting=2, format="contract")


def test_numbers_the_parsers_read_differently_are_read_as_before() -> None:
    for number in (b"NaN", b"Infinity", b"1e400"):
        decoded = decode_message(BASE + b',"properties":{"n":' + number + b"}}")
        assert not decoded.events and [r.reason for r in decoded.rejects] == ["invalid_json"], number
    # orjson rounds an integer past 64 bits to a float, where pydantic's parser keeps it exact
    decoded = decode_message(BASE + b',"properties":{"n":123456789012345678901234567890}}')
    assert decoded.events[0].properties == {"n": 1.2345678901234568e29}


def test_unknown_fields_are_counted_and_the_event_is_the_validators() -> None:
    decoded = decode_message(BASE + b',"propertys":{},"x":1}')
    [event] = decoded.events
    assert decoded.unknown_fields == {"propertys": 1, "x": 1}
    assert event.__pydantic_fields_set__ == {"event_id", "event", "user_id", "timestamp"}
    assert event.__pydantic_extra__ is None


_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["", "x" * 257, "tab\t", "2024-03-11 00:01:07", "https://s.example/?utm_medium=cpc"]),
)
_VALUE = st.one_of(
    _SCALAR, st.dictionaries(st.text(max_size=3), _SCALAR, max_size=3), st.lists(_SCALAR, max_size=2)
)
_EVENT = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.just("e1"), _SCALAR),
        "event": st.one_of(st.just("page_view"), _SCALAR),
        "user_id": st.one_of(st.just("u"), _SCALAR),
        "anonymous_id": _SCALAR,
        "session_id": _SCALAR,
        "timestamp": st.one_of(st.just("2024-03-11T00:01:07Z"), st.integers(0, 2**45), _SCALAR),
        "page": st.one_of(
            st.none(),
            st.dictionaries(st.sampled_from(["url", "referrer", "title", "x"]), _SCALAR, max_size=3),
        ),
        "campaign": st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["source", "name", "y"]), _SCALAR, max_size=2)
        ),
        "context": _VALUE,
        "properties": _VALUE,
        "audience": st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["browser", "bot", "z"]), _SCALAR, max_size=2)
        ),
        "extra": _VALUE,
    },
)


@settings(max_examples=1500, deadline=None)
@given(_EVENT)
def test_any_object_decodes_alike_both_ways(obj: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same_both_ways(orjson.dumps(obj), monkeypatch)
