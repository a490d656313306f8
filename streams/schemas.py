"""JSON Schemas generated from the pydantic models: the authoritative form of the contract, and
beside them a copy of the example configuration shipped in the package (`streams.examples`) and
an AsyncAPI 3.0 document of every topic (`asyncapi.yaml`: address, key, headers and message
schema, the payloads from the same models), for the services that consume the topics.

A development command: the schemas live in the repository's `schemas/`, not in the package."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from streams.core.config.model import FunnelConfig
from streams.core.input.event import ClickEvent
from streams.core.records.outputs import (
    OUTPUT_MODELS,
    Alert,
    AnyOutput,
    DeadLetter,
    Dropoff,
    ExperimentUpdate,
    IdentityLink,
    MacroConversion,
    MicroConversion,
    SessionSummary,
    Stalled,
)
from streams.examples import FUNNELS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLE = "examples/funnels.yaml"


def generated() -> dict[str, bytes]:
    """File name -> schema bytes, deterministic."""
    models: dict[str, type[BaseModel]] = {
        "clickstream-event.json": ClickEvent,
        "funnel-config.json": FunnelConfig,
    }
    models.update({f"output-{kind}.json": model for kind, model in OUTPUT_MODELS.items()})
    files = {
        name: model.model_json_schema(
            mode="validation" if name.startswith(("click", "funnel")) else "serialization"
        )
        for name, model in models.items()
    }
    files["output-any.json"] = TypeAdapter(AnyOutput).json_schema(mode="serialization")
    out = {
        name: orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        for name, schema in files.items()
    }
    out[EXAMPLE] = FUNNELS.read_bytes()  # a copy: the package's is the one to edit
    out[ASYNCAPI] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100).encode()
    return out


ASYNCAPI = "asyncapi.yaml"
WATERMARK_HEADER = "conversions-watermark"
"""`kafka.headers.WATERMARK_HEADER`, spelt out: this leaf does not import the Kafka room (the
tests hold the two equal, and the topic names below to the settings' defaults)."""
KAFKA_BINDING = "0.5.0"
IDENTITY_KEY = {
    "type": "string",
    "description": "the person's identity (user_id, else anonymous_id): a person's records stay in order",
}
WATERMARK = {
    "type": "object",
    "properties": {
        WATERMARK_HEADER: {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "on the last record a journey partition writes to this topic in a run: that "
            "partition's event-time watermark (epoch ms, as ASCII digits); everything the partition will "
            "emit earlier than it is already before this record. What the alerts wait for.",
        }
    },
}

# (topic's default name, setting, message names, key schema or None, headers or None, description)
_TOPICS: list[tuple[str, str, list[str], dict[str, Any] | None, dict[str, Any] | None, str]] = [
    (
        "clickstream",
        "topic_clickstream",
        ["ClickstreamEvent"],
        {"type": "string", "description": "optional; the identity is recommended (keeps a person in order)"},
        None,
        "Input: one event, or a JSON array of events (a collector's batch); Segment-spec messages and "
        "Snowplow enriched TSV are read too (CONVERSIONS_INPUT_FORMAT). Comma-separated topics with "
        "CONVERSIONS_TOPIC_CLICKSTREAM.",
    ),
    (
        "clickstream.events",
        "topic_events",
        ["RepartitionBatch"],
        {"type": "string", "description": "the target journey partition, as digits"},
        None,
        "Internal: ingest's repartitioned batches, by identity, with source watermarks. Not a contract.",
    ),
    (
        "conversions.micro",
        "topic_micro",
        ["MicroConversion"],
        IDENTITY_KEY,
        WATERMARK,
        "A funnel step reached (kind milestone) or a secondary microconversion. Output partition p is "
        "written only by journey partition p.",
    ),
    ("conversions.macro", "topic_macro", ["MacroConversion"], IDENTITY_KEY, WATERMARK, "A goal reached."),
    (
        "funnel.dropoffs",
        "topic_dropoffs",
        ["Dropoff", "Stalled"],
        IDENTITY_KEY,
        WATERMARK,
        "An attempt that ended without its goal, and the non-final stalled signal (by `type`).",
    ),
    (
        "funnel.alerts",
        "topic_alerts",
        ["Alert"],
        None,
        None,
        "A step's rate fell below its rule (fired) or recovered (resolved); published by the leader.",
    ),
    (
        "journeys.sessions",
        "topic_sessions",
        ["SessionSummary"],
        IDENTITY_KEY,
        WATERMARK,
        "A closed session: landing page, channel, visitor type, duration, page views, conversions.",
    ),
    (
        "journeys.identities",
        "topic_identities",
        ["IdentityLink"],
        IDENTITY_KEY,
        WATERMARK,
        "An anonymous id linked to a user id, or a link refused.",
    ),
    (
        "conversions.experiments",
        "topic_experiments",
        ["ExperimentUpdate"],
        {"type": "string", "description": "the experiment's name: its updates stay in order"},
        None,
        "An experiment's live state, whenever a variant's decision changes.",
    ),
    (
        "clickstream.deadletter",
        "topic_deadletter",
        ["DeadLetter"],
        None,
        None,
        "Every input that could not be used: original bytes, a machine-readable reason, where it came from.",
    ),
]
_MODELS: dict[str, type[BaseModel]] = {
    "MicroConversion": MicroConversion,
    "MacroConversion": MacroConversion,
    "Dropoff": Dropoff,
    "Stalled": Stalled,
    "Alert": Alert,
    "SessionSummary": SessionSummary,
    "IdentityLink": IdentityLink,
    "ExperimentUpdate": ExperimentUpdate,
    "DeadLetter": DeadLetter,
}


def _components() -> dict[str, Any]:
    """Every payload schema, with its references pointing inside `components.schemas`."""
    pairs = [(ClickEvent, "validation"), *((model, "serialization") for model in _MODELS.values())]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))
    schemas["RepartitionBatch"] = {
        "type": "object",
        "description": "internal: events of one source partition for one journey partition",
        "required": ["source", "events"],
        "properties": {
            "source": {"type": "string", "description": "source topic and partition"},
            "events": {"type": "array", "items": {"type": "object"}},
            "watermark": {"type": ["integer", "null"], "description": "the source's watermark, epoch ms"},
            "offset": {"type": "integer"},
            "offsets": {"type": "array", "items": {"type": "integer"}},
            "idle": {"type": "boolean"},
        },
    }
    return schemas


def _message(name: str, key: dict[str, Any] | None, headers: dict[str, Any] | None) -> dict[str, Any]:
    if name == "ClickstreamEvent":
        payload: dict[str, Any] = {
            "oneOf": [
                {"$ref": "#/components/schemas/ClickEvent"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ClickEvent"}},
            ]
        }
        title, summary = "Clickstream event", "One event, or an array of events"
    elif name == "RepartitionBatch":
        payload = {"$ref": "#/components/schemas/RepartitionBatch"}
        title, summary = "Repartitioned batch", "Internal"
    else:
        model = _MODELS[name]
        payload = {"$ref": f"#/components/schemas/{name}"}
        title = name
        summary = (model.__doc__ or name).strip().splitlines()[0]
    message: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": payload,
    }
    if headers is not None:
        message["headers"] = headers
    binding: dict[str, Any] = {"bindingVersion": KAFKA_BINDING}
    if key is not None:
        binding["key"] = key
    message["bindings"] = {"kafka": binding}
    return message


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document: a channel per topic (default names; CONVERSIONS_TOPIC_PREFIX
    prefixes them all), the worker's operations on them, and the messages with the models'
    schemas."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel, setting, names, key, headers, description in _TOPICS:
        address = channel
        channel_id = channel.replace(".", "_")
        channels[channel_id] = {
            "address": address,
            "title": channel,
            "description": f"{description} Setting: CONVERSIONS_{setting.upper()}.",
            "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        }
        for n in names:
            messages[n] = _message(n, key, headers)
        inbound = channel in ("clickstream", "clickstream.events")
        operations[("receive_" if inbound else "send_") + channel_id] = {
            "action": "receive" if inbound else "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": "the worker reads it" if inbound else "the worker writes it",
        }
        if channel == "clickstream.events":
            operations["send_" + channel_id] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": "ingest writes it",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Conversion Streams",
            "version": version("conversion-streams"),
            "description": "Clickstream events in; micro- and macroconversions, drop-offs, sessions, "
            "identity links, alerts, experiments and dead letters out. Every output carries a "
            "deterministic `id` (deduplicate on it after an at-least-once redelivery), a `type` and its "
            "event time. Generated from the models by `conversions schemas`; the contract is "
            "../shared/CONTRACT.md.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "localhost:9092",
                "protocol": "kafka",
                "description": "KAFKA_BOOTSTRAP_SERVERS (TLS and SASL per KAFKA_SECURITY_PROTOCOL)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _components()},
    }


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    written = []
    for name, content in generated().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            written.append(path)
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that differ from (or are missing next to) the models."""
    return [
        name
        for name, content in generated().items()
        if not (directory / name).exists() or (directory / name).read_bytes() != content
    ]
