"""The documented input formats hold: every example in schemas/examples decodes, in its declared
format and by detection, and schemas/input-segment.json (written by hand) accepts exactly what
the Segment mapping accepts, over the spec-shaped fixtures and mutations of them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from streams.core.input.decode import decode_message
from streams.core.input.formats.detect import InputFormat

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


SEGMENT_SCHEMA = validator("input-segment.json")
CONTRACT_SCHEMA = validator("clickstream-event.json")
SPEC = json.loads((ROOT / "tests" / "fixtures" / "trackers" / "segment-spec.json").read_text())
MESSAGES = {name: value for name, value in SPEC.items() if isinstance(value, dict) and "type" in value}


def raw_example(name: str) -> bytes:
    data = (EXAMPLES / name).read_bytes()
    return orjson.dumps(orjson.loads(data)) if name.endswith(".json") else data.rstrip(b"\n")


@pytest.mark.parametrize(
    ("name", "declared", "events", "ignored"),
    [
        ("input-contract.json", "contract", 1, 0),
        ("input-segment.json", "segment", 5, 1),  # page, track, identify, alias, track; group ignored
        ("input-snowplow.tsv", "snowplow", 1, 0),
    ],
)
def test_every_example_decodes_declared_and_detected(
    name: str, declared: InputFormat, events: int, ignored: int
) -> None:
    for fmt in (declared, "auto"):
        decoded = decode_message(raw_example(name), format=fmt)
        assert not decoded.rejects, decoded.rejects
        assert (decoded.format, len(decoded.events), decoded.ignored) == (declared, events, ignored)


def test_the_examples_follow_their_schemas() -> None:
    CONTRACT_SCHEMA.validate(orjson.loads(raw_example("input-contract.json")))
    SEGMENT_SCHEMA.validate(orjson.loads(raw_example("input-segment.json")))
    for message in MESSAGES.values():
        SEGMENT_SCHEMA.validate(message)
    SEGMENT_SCHEMA.validate(SPEC["batch"])
    SEGMENT_SCHEMA.validate(list(MESSAGES.values()))


def _without(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(message: dict[str, Any]) -> None:
        for key in keys:
            message.pop(key, None)

    return change


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda message: message.__setitem__(key, value)


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unchanged": lambda _: None,
    "no type": _without("type"),
    "unknown type": _set("type", "pageview"),
    "no ids": _without("userId", "anonymousId"),
    "only userId": _without("anonymousId"),
    "no previousId": _without("previousId"),
    "no times": _without("timestamp", "originalTimestamp", "receivedAt"),
    "only receivedAt": _without("timestamp", "originalTimestamp"),
    "empty event": _set("event", ""),
    "event a number": _set("event", 42),
    "properties a list": _set("properties", [1]),
    "properties null": _set("properties", None),
    "traits a string": _set("traits", "x"),
    "context a list": _set("context", []),
    "integer ids": _set("userId", 42),
    "empty userId": _set("userId", ""),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("call", sorted(MESSAGES))
def test_the_segment_schema_accepts_what_the_mapping_accepts(call: str, mutation: str) -> None:
    message = copy.deepcopy(MESSAGES[call])
    MUTATIONS[mutation](message)
    decoded = decode_message(orjson.dumps(message), format="segment")
    accepted = not decoded.rejects
    valid = SEGMENT_SCHEMA.is_valid(message)
    assert valid == accepted, (call, mutation, [r.detail for r in decoded.rejects])
