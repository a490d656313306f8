"""The AsyncAPI document: valid against the official AsyncAPI 3.0.0 JSON Schema (from the npm
package @asyncapi/specs, kept in tests/fixtures/asyncapi with its license), in step with the
models (the drift check covers it with the JSON Schemas), naming every topic the worker writes
with its key and headers, and describing the outputs the engine really produces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from streams import schemas
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.records.outputs import OUTPUT_MODELS
from streams.kafka.headers import WATERMARK_HEADER
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.tools.simulate import ShopTiming, Simulator

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "schemas" / "asyncapi.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def official() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(orjson.loads(OFFICIAL.read_bytes()))


def test_the_committed_document_is_the_generated_one(document: dict[str, Any]) -> None:
    assert document == schemas.asyncapi(), "run `conversions schemas` and commit the result"
    assert "asyncapi.yaml" not in schemas.drift()


def test_it_is_valid_asyncapi_3(document: dict[str, Any], official: jsonschema.Draft7Validator) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in official.iter_errors(document)]
    assert errors == []
    # and the validator does refuse what 3.0 does not allow (2.x's publish, a channel without address type)
    broken = copy.deepcopy(document)
    broken["operations"]["send_conversions_micro"]["action"] = "publish"
    broken["channels"]["funnel_alerts"]["address"] = 42
    assert len(list(official.iter_errors(broken))) >= 2


def test_every_topic_with_its_key_and_headers(document: dict[str, Any]) -> None:
    settings = Settings()
    addresses = {c["address"] for c in document["channels"].values()}
    assert (
        set(settings.output_topics.values()) | {settings.topic_events, *settings.topic_clickstream}
        == addresses
    )
    messages = document["components"]["messages"]
    payloads = {m["payload"].get("$ref", "").rsplit("/", 1)[-1] for m in messages.values()}
    assert {model.__name__ for model in OUTPUT_MODELS.values()} <= payloads
    assert schemas.WATERMARK_HEADER == WATERMARK_HEADER
    micro = messages["MicroConversion"]
    assert WATERMARK_HEADER in micro["headers"]["properties"]
    assert micro["bindings"]["kafka"]["key"]["type"] == "string"
    assert "key" not in messages["Alert"]["bindings"]["kafka"], "alerts are not keyed"
    actions = {name: op["action"] for name, op in document["operations"].items()}
    assert actions["receive_clickstream"] == "receive" and actions["send_conversions_macro"] == "send"


def test_the_engine_outputs_match_their_messages(document: dict[str, Any]) -> None:
    """Real outputs of the engine, each validated against the payload of its topic's message."""
    config = compile_config(load_config(DEFAULT_FUNNELS))
    run = OfflineRun(config, partitions=2)
    sim = Simulator(seed=2, users=300, days=2, timing=ShopTiming(), bad_rate=0.02)
    outputs = [o.model_dump(mode="json") for o in run.run(sim.lines())]
    outputs += [o.model_dump(mode="json") for o in run.flush()]
    message_of = {"stalled": "Stalled", "deadletter": "DeadLetter"}
    seen = set()
    for output in outputs:
        name = message_of.get(output["type"]) or OUTPUT_MODELS[output["type"]].__name__
        schema = {
            "$ref": f"#/components/schemas/{name}",
            "components": document["components"],
        }
        jsonschema.validate(output, schema)
        seen.add(output["type"])
    assert {"micro", "macro", "dropoff", "session", "identity", "deadletter"} <= seen
    event = orjson.loads(next(iter(sim.lines())))
    clickstream = {**document["components"]["messages"]["ClickstreamEvent"]["payload"]}
    jsonschema.validate([event, event], {**clickstream, "components": document["components"]})
