"""JSON Schemas generated from the pydantic models: the authoritative form of the contract, and
beside them a copy of the example configuration shipped in the package (`streams.examples`) and
an AsyncAPI 3.0 document of every topic (`asyncapi.yaml`: address, key, headers and message
schema, the payloads from the same models), for the services that consume the topics, and an
OpenAPI 3.1 document of the HTTP API (`openapi.yaml`: the worker's read-only endpoints and the
collector's; tests/docs/test_http_api.py holds its paths to the routes the servers register).

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
    Carried,
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
    out[OPENAPI] = yaml.safe_dump(openapi(), sort_keys=False, allow_unicode=True, width=100).encode()
    return out


ASYNCAPI = "asyncapi.yaml"
OPENAPI = "openapi.yaml"
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
        ["Dropoff", "Stalled", "Carried"],
        IDENTITY_KEY,
        WATERMARK,
        "An attempt that ended without its goal, and the non-final stalled and carried (over to a new "
        "funnel version) signals (by `type`).",
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
    "Carried": Carried,
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


# The HTTP API. A parameter: (name, where, description, required); `window`, `start` and `end` are
# shared by every counters view.
Param = tuple[str, str, str, bool]
_WINDOW: list[Param] = [
    ("window", "query", "How far back from the end: a duration (5m, 1h, 7d).", False),
    ("start", "query", "Start of the window, RFC 3339 or epoch ms (instead of window).", False),
    (
        "end",
        "query",
        "End of the window, RFC 3339 or epoch ms (default: the latest event time counted).",
        False,
    ),
]
_FUNNEL: Param = ("name", "path", "A funnel of the configuration (404 otherwise).", True)
_COUNTERS = {
    "200": "the view, as JSON",
    "400": "an unknown or invalid parameter, with what to change",
    "404": "an unknown funnel",
    "503": "Redis is unavailable (the counters wait for it)",
}
# (server, method, path, summary, parameters, responses)
HTTP_ROUTES: list[tuple[str, str, str, str, list[Param], dict[str, str]]] = [
    (
        "worker",
        "get",
        "/funnels",
        "Every funnel and the goals over the window.",
        _WINDOW,
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/funnels/{name}",
        "A funnel's steps: entered, unique users, rate from the previous step, overall rate, dropped (by "
        "reason), stalled; per breakdown value with `by`.",
        [_FUNNEL, *_WINDOW, ("by", "query", "One of the funnel's breakdowns, e.g. context.platform.", False)],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/funnels/{name}/series",
        "A step's rate from the step before per bucket, and what its alert rule judges at each bucket's "
        "end (rate over its window, baseline, frozen or not, thresholds) with its fired and resolved marks.",
        [
            _FUNNEL,
            *_WINDOW,
            (
                "step",
                "query",
                "The step (default: the first step an alert rule judges, else the second).",
                False,
            ),
            ("by", "query", "A breakdown of the funnel; needs `value`.", False),
            ("value", "query", "The breakdown value to follow.", False),
            (
                "bucket",
                "query",
                "Bucket size, a multiple of the counters' bucket (default: ~100 buckets).",
                False,
            ),
        ],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/funnels/{name}/progress",
        "The attempts that opened in the window, per step: entered, went on, dropped (by reason), in "
        "progress, the rate so far, the rate of the closed ones and the projected rate.",
        [_FUNNEL, *_WINDOW],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/funnels/{name}/time-to-convert",
        "Per step after the first: count, mean, median, p90 and the histogram of the time from the "
        "attempt's first step.",
        [_FUNNEL, *_WINDOW],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/channels",
        "Per channel or landing page (and visitor type): sessions, converting sessions, conversion rate, "
        "conversions, value, decision time, microconversions, micro/macro ratio, and the totals.",
        [
            *_WINDOW,
            ("dimension", "query", "channel (default) or landing_page.", False),
            ("goal", "query", "The goal counted (default: the first).", False),
            ("split", "query", "visitor_type: split each row into new and returning visitors.", False),
            ("sort", "query", "The column to sort by (default: sessions).", False),
            ("order", "query", "desc (default) or asc.", False),
            ("limit", "query", "Rows, 1 to 500 (default 50).", False),
        ],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/goals",
        "Goal counts, unique users, value, average decision time and histogram, by channel and landing "
        "page, the micro/macro ratio, sessions.",
        _WINDOW,
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/live",
        "What the dashboard shows, in one request: every funnel (the chosen one broken down), goals, the "
        "20 latest macroconversions, alerts.",
        [
            *_WINDOW,
            ("funnel", "query", "The funnel to break down.", False),
            ("by", "query", "The breakdown.", False),
        ],
        _COUNTERS,
    ),
    (
        "worker",
        "get",
        "/alerts",
        "The alerts firing now and the latest alert changes, as the current generation judged them.",
        [],
        {"200": "the alerts, as JSON", "503": "Redis is unavailable (the generations registry is read)"},
    ),
    (
        "worker",
        "get",
        "/experiments",
        "Every experiment (or one), live: per variant entered, each step, rate with interval, lift, "
        "always-valid p-value and confidence sequence, decision; the latest decision changes; as the "
        "current generation judged them.",
        [
            ("name", "query", "One experiment (404 if the configuration has none of that name).", False),
            ("funnel", "query", "The experiments of one funnel (404 for an unknown funnel).", False),
        ],
        {
            "200": "the experiments, as JSON",
            "400": "an unknown parameter",
            "404": "an unknown name",
            "503": "Redis is unavailable (the generations registry is read)",
        },
    ),
    (
        "worker",
        "get",
        "/generations",
        "The generations deployed (`conversions deploy`): which is current, each one's state "
        "(reprocessing, live, retired) and a reprocessing one's progress (event time reached, lag per "
        "clickstream partition, time left).",
        [],
        {"200": "the generations, as JSON"},
    ),
    ("worker", "get", "/", "The live dashboard (HTML).", [], {"200": "the page"}),
    (
        "worker",
        "get",
        "/dashboard/{name}",
        "The dashboard's static files (script, style sheet).",
        [("name", "path", "A file of streams/web/dashboard/.", True)],
        {"200": "the file", "404": "no such file"},
    ),
    (
        "worker",
        "get",
        "/metrics",
        "Prometheus metrics of the worker (CONVERSIONS_METRICS_TOKEN, else the web token, or public with "
        "CONVERSIONS_METRICS_PUBLIC=true).",
        [],
        {"200": "the metrics, in Prometheus' text format"},
    ),
    (
        "worker",
        "get",
        "/login",
        "The sign-in form, served by the access middleware when CONVERSIONS_WEB_TOKEN is set (303 to / "
        "without a token).",
        [],
        {"200": "the form", "303": "no token is needed"},
    ),
    (
        "worker",
        "post",
        "/login",
        "Sign in with the form's `token`: sets the session cookie (a random session id and its expiry, "
        "signed; HttpOnly, SameSite=Strict, Max-Age CONVERSIONS_WEB_SESSION_TTL_S, Secure over TLS or with "
        "CONVERSIONS_WEB_BEHIND_TLS). Five wrong tokens from one address, then one a minute.",
        [],
        {
            "303": "signed in, to /",
            "401": "not the token",
            "429": "too many wrong tokens from this address (Retry-After)",
        },
    ),
    (
        "worker",
        "get",
        "/logout",
        "Sign out: revokes this session's cookie (until it would have expired) and clears it.",
        [],
        {"303": "signed out, to /login"},
    ),
    (
        "worker",
        "post",
        "/logout",
        "Sign out, as GET.",
        [],
        {"303": "signed out, to /login"},
    ),
    (
        "worker",
        "post",
        "/privacy/forget",
        "Erase a person, as `conversions forget` does: a JSON body with `user_id` and/or `anonymous_id`. "
        "Only when CONVERSIONS_WEB_TOKEN is set, and only as application/json (a cross-site form cannot "
        "send it). The erased ids go to the compacted erased-ids topic, an `erasure` record to the "
        "erasures topic (docs/howto/erase-a-person.md).",
        [],
        {
            "202": "recorded: the `erasure` record",
            "400": "no id, or an id that is not a non-empty string of at most 256 characters",
            "401": "no token",
            "403": "no CONVERSIONS_WEB_TOKEN is set: erasure over HTTP is off",
            "415": "not application/json",
        },
    ),
    (
        "collector",
        "post",
        "/v1/{call}",
        "A Segment HTTP API call (track, page, screen, identify, alias, group, or their one-letter "
        "forms; batch, b, import): answered 200 once the broker acknowledged every record.",
        [("call", "path", "The call, as Segment's HTTP API and analytics.js name it.", True)],
        {
            "200": '{"success": true}',
            "400": "a body that is not a Segment message, nested deeper than CONVERSIONS_MAX_NESTING, or a "
            "batch of more than CONVERSIONS_COLLECTOR_MAX_BATCH_MESSAGES, with the reason",
            "401": "a missing or unknown write key (when write keys are set)",
            "403": "a browser origin not allowed (CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS)",
            "413": "a body over the limit",
            "429": "over CONVERSIONS_COLLECTOR_RATE_LIMIT for this address or write key (Retry-After)",
            "503": "the broker is not reachable or did not acknowledge (Retry-After)",
        },
    ),
    (
        "collector",
        "options",
        "/v1/{call}",
        "CORS preflight for the allowed origins (CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS).",
        [("call", "path", "As for POST.", True)],
        {"204": "allowed", "403": "origin not allowed"},
    ),
]
_SECURITY = {"bearer": {"type": "http", "scheme": "bearer"}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's web server and the collector (`HTTP_ROUTES`)."""
    paths: dict[str, Any] = {}
    for server, method, path, summary, params, responses in HTTP_ROUTES:
        operation: dict[str, Any] = {
            "tags": [server],
            "summary": summary,
            "responses": {code: {"description": text} for code, text in responses.items()},
        }
        if params:
            operation["parameters"] = [
                {
                    "name": name,
                    "in": where,
                    "required": required,
                    "description": text,
                    "schema": {"type": "string"},
                }
                for name, where, text, required in params
            ]
        if server == "collector":
            operation["servers"] = [
                {"url": "http://127.0.0.1:6067", "description": "CONVERSIONS_COLLECTOR_*"}
            ]
        elif path not in ("/login", "/logout"):
            operation["security"] = [{}, {"bearer": []}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conversion Streams HTTP API",
            "version": version("conversion-streams"),
            "description": "The worker's read-only web server (CONVERSIONS_WEB_HOST/PORT; every route needs "
            "CONVERSIONS_WEB_TOKEN when it is set) and the Segment-compatible collector "
            "(CONVERSIONS_COLLECTOR_ENABLED). Generated by `conversions schemas`.",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:6066", "description": "the worker (CONVERSIONS_WEB_*)"}],
        "tags": [
            {"name": "worker", "description": "the worker's web server"},
            {"name": "collector", "description": "the Segment-compatible collector, on its own port"},
        ],
        "paths": paths,
        "components": {"securitySchemes": _SECURITY},
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
