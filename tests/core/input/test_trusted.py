"""`ClickEvent.trusted` reads the repartitioned events back (`clickstream.events`, our own
`to_json_dict` of events validated at ingest) without validating them again: it must make
exactly what `model_validate` makes of them, or the journeys would see other events live than
offline mode does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.core.input.audience import EnrichmentSpec
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.tools.simulate import Simulator


def _same(trusted: Any, validated: Any) -> None:
    assert trusted == validated
    assert list(trusted.__dict__.items()) == list(validated.__dict__.items())
    assert trusted.__pydantic_extra__ == validated.__pydantic_extra__


def _items() -> list[dict[str, Any]]:
    """The simulated shop's events as ingest forwards them (enriched), and a few of every shape."""
    enricher = EnrichmentSpec(bots="include").build()
    items = []
    for line in Simulator(seed=3, users=300, days=1, bad_rate=0.05).lines():
        decoded = decode_message(line.encode() if isinstance(line, str) else line, enricher=enricher)
        items += [event.to_json_dict() for event in decoded.events]
    extras = {
        "event_id": "e-x",
        "event": "page_view",
        "user_id": "u-1",
        "session_id": "s-1",
        "timestamp": "2024-03-11T10:00:00Z",
        "page": {"url": "https://shop.example/?utm_source=news", "title": "Home", "section": "top"},
        "campaign": {"source": "news", "placement": "header"},
        "context": {"locale": "fr-FR", "nested": {"a": [1, {"b": None}]}},
        "properties": {"price": 12.5, "tags": ["a", "b"]},
        "audience": {"browser": "Firefox", "country": "FR", "bot": True},
    }
    derived = {"event_id": "e-d", "event": "signup", "anonymous_id": "a-1", "timestamp": 1710151200123}
    derived["page"] = {"url": "https://shop.example/p?utm_medium=cpc&utm_campaign=spring"}
    for raw in (extras, derived):
        items.append(ClickEvent.model_validate(raw).to_json_dict())
    return items


def test_trusted_makes_what_validation_makes_of_every_forwarded_event() -> None:
    items = _items()
    assert len(items) > 2_000
    assert any("audience" in i for i in items) and any("campaign" in i for i in items)
    for item in items:
        trusted = ClickEvent.trusted(item)
        validated = ClickEvent.model_validate(item)
        _same(trusted, validated)
        assert trusted.ts_ms == validated.ts_ms
        for name in ("page", "campaign", "audience"):
            nested, expected = getattr(trusted, name), getattr(validated, name)
            assert (nested is None) == (expected is None)
            if nested is not None:
                _same(nested, expected)
        assert trusted.to_json_dict() == item
        assert orjson.dumps(trusted.to_json_dict()) == orjson.dumps(validated.to_json_dict())


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"event": "x", "user_id": "u", "timestamp": "2024-03-11T10:00:00Z"}, ValueError),
        (["not", "an", "event"], TypeError),
        ({"event_id": 1, "event": "x", "user_id": "u", "timestamp": "2024-03-11T10:00:00Z"}, TypeError),
        ({"event_id": "i", "event": "x", "timestamp": "2024-03-11T10:00:00Z"}, ValueError),
        ({"event_id": "i", "event": "x", "user_id": "u", "timestamp": "yesterday"}, ValueError),
        (
            {"event_id": "i", "event": "x", "user_id": "u", "timestamp": "2024-03-11T10:00:00Z", "page": []},
            TypeError,
        ),
        (
            {
                "event_id": "i",
                "event": "x",
                "user_id": "u",
                "timestamp": "2024-03-11T10:00:00Z",
                "audience": {"x": 1},
            },
            ValueError,
        ),
        *(
            (
                {"event_id": "i", "event": "x", "user_id": "u", "timestamp": "2024-03-11T10:00:00Z", **wrong},
                TypeError,
            )
            for wrong in (
                {"user_id": 5},
                {"anonymous_id": ["a"]},
                {"session_id": 1.5},
                {"context": ["c"]},
                {"properties": "p"},
                {"page": {"url": 5}},
                {"campaign": {"source": {"s": 1}}},
                {"audience": {"browser": 3}},
            )
        ),
    ],
)
def test_a_record_that_is_not_ours_raises_what_the_journeys_agent_dead_letters(
    item: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        ClickEvent.trusted(item)


def test_a_naive_or_offset_timestamp_is_read_as_validation_reads_it() -> None:
    for moment in ("2024-03-11 10:00:00", "2024-03-11T12:00:00+02:00", 1710151200000):
        item = {"event_id": "i", "event": "x", "user_id": "u", "timestamp": moment}
        _same(ClickEvent.trusted(item), ClickEvent.model_validate(item))
