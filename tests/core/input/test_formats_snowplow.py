"""Snowplow enriched events: our TSV mapping against the Snowplow Analytics SDK's own transform.

The reference is `snowplow_analytics_sdk.event_transformer.transform` (Snowplow's Python Analytics
SDK, from PyPI): it turns an enriched TSV line into JSON keyed by field name. `reference()` below
applies the documented mapping (streams/core/input/formats/snowplow.py) to that JSON, by name and with
nothing from the engine, so a field read from the wrong position, a timestamp read from the wrong
column or a context parsed wrongly shows up as a difference. The events are in
tests/fixtures/trackers/snowplow-enriched.tsv (built by make_snowplow_enriched.py beside it, in the
SDK's field order): a campaign landing, an ecommerce product view, a structured add-to-cart, a
sign-in, a custom self-describing event, an ecommerce transaction, a page ping on a phone, a
legacy transaction and its item, and an Android app's screen view.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.input.formats.snowplow import FIELDS, decode_snowplow
from streams.offline.run import OfflineRun

with warnings.catch_warnings():  # the SDK's regular expressions use escapes Python now warns about
    warnings.simplefilter("ignore")
    from snowplow_analytics_sdk.event_transformer import (  # type: ignore[import-untyped]
        ENRICHED_EVENT_FIELD_TYPES,
        transform,
    )

FIXTURE = Path(__file__).parents[2] / "fixtures" / "trackers" / "snowplow-enriched.tsv"
LINES = FIXTURE.read_text().splitlines()
SDK_FIELDS = [name for name, _ in ENRICHED_EVENT_FIELD_TYPES]


def sdk_line(**values: str) -> str:
    """An enriched event in the SDK's field order, empty but for `values`."""
    row = dict.fromkeys(SDK_FIELDS, "")
    row.update(values)
    return "\t".join(row[name] for name in SDK_FIELDS)


MINIMAL = {
    "platform": "web",
    "collector_tstamp": "2024-03-13 10:00:00.000",
    "event": "page_view",
    "event_id": "e-1",
    "domain_userid": "d-1",
}


def _contexts(sdk: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The SDK's shredded contexts of one schema name, whatever its vendor and version."""
    found: list[dict[str, Any]] = []
    for key, value in sdk.items():
        if key.startswith("contexts_") and key.rsplit("_", 1)[0].endswith("_" + name):
            found.extend(value)
    return found


def _unstruct(sdk: dict[str, Any]) -> dict[str, Any] | None:
    keys = [key for key in sdk if key.startswith("unstruct_event_")]
    return sdk[keys[0]] if keys else None


def reference(sdk: dict[str, Any]) -> dict[str, Any]:
    """The event the documented mapping makes of the SDK's JSON for one enriched event."""
    kind = sdk["event"]
    data = _unstruct(sdk)
    properties: dict[str, Any] = {}
    page: dict[str, Any] = {}
    if kind == "page_view":
        name = "page_view"
    elif kind == "struct":
        name = sdk["se_action"]
        properties = {
            k: sdk[f"se_{k}"] for k in ("category", "action", "label", "property") if f"se_{k}" in sdk
        }
        if "se_value" in sdk:
            properties["value"] = float(sdk["se_value"])
    elif kind == "unstruct":
        assert data is not None
        properties = dict(data)
        name = sdk["event_name"]
        if name == "snowplow_ecommerce_action":
            name = data["type"]
        elif name == "screen_view":
            name = "page_view"
            page["title"] = data["name"]
    else:
        name = sdk["event_name"]
        if kind == "transaction":
            properties = {
                "order_id": sdk["tr_orderid"],
                "affiliation": sdk["tr_affiliation"],
                "value": sdk["tr_total"],
                "tax": sdk["tr_tax"],
                "shipping": sdk["tr_shipping"],
                "currency": sdk["tr_currency"],
            }
        elif kind == "transaction_item":
            properties = {
                "order_id": sdk["ti_orderid"],
                "product_id": sdk["ti_sku"],
                "product_name": sdk["ti_name"],
                "category": sdk["ti_category"],
                "currency": sdk["ti_currency"],
                "price": sdk["ti_price"],
                "quantity": sdk["ti_quantity"],
            }
    for web_page in _contexts(sdk, "web_page")[:1]:
        properties.setdefault("page_view_id", web_page["id"])
    for product in _contexts(sdk, "product")[:1]:
        if "product_id" not in properties:
            properties["product_id"] = product["id"]
            for key, target in (("name", "product_name"), ("category", "category"), ("price", "price")):
                properties.setdefault(target, product[key])
            properties.setdefault("currency", product["currency"])
            properties.setdefault("quantity", product["quantity"])
    for transaction in _contexts(sdk, "transaction")[:1]:
        properties.setdefault("order_id", transaction["transaction_id"])
        properties.setdefault("value", transaction["revenue"])
        properties.setdefault("currency", transaction["currency"])

    for key in ("url", "referrer", "title"):
        if f"page_{key}" in sdk:
            page[key] = sdk[f"page_{key}"]
    campaign = {
        key: sdk[column]
        for key, column in (
            ("source", "mkt_source"),
            ("medium", "mkt_medium"),
            ("name", "mkt_campaign"),
            ("term", "mkt_term"),
            ("content", "mkt_content"),
        )
        if column in sdk
    }
    if not campaign and "url" in page:  # the event model's own rule: the URL's utm_* parameters
        query = parse_qs(urlsplit(page["url"]).query)
        utm = (("source", "utm_source"), ("medium", "utm_medium"), ("name", "utm_campaign"))
        campaign = {key: query[param][0] for key, param in utm if param in query}

    if sdk["platform"] == "web":
        phone = sdk.get("dvce_ismobile") is True or any(
            c["deviceClass"] == "Phone" for c in _contexts(sdk, "yauaa_context")
        )
        platform = "mobile" if phone else "web"
    else:
        platform = {"android": "android", "ios": "ios"}[_contexts(sdk, "mobile_context")[0]["osType"]]
    context = {"platform": platform, "app_id": sdk["app_id"]}
    for key, column in (
        ("user_agent", "useragent"),
        ("locale", "br_lang"),
        ("timezone", "os_timezone"),
        ("ip", "user_ipaddress"),
    ):
        if column in sdk:
            context[key] = sdk[column]
    context["library"] = {"name": "snowplow", "version": sdk["v_tracker"]}
    # Snowplow's own enrichments, kept as the audience (enrichment at ingest fills the rest)
    audience: dict[str, Any] = {}
    if sdk.get("br_family") not in (None, "Unknown", "Other"):
        audience["browser"] = sdk["br_family"]
        major = str(sdk.get("br_version") or "").split(".")[0]
        audience["browser_version"] = f"{sdk['br_family']} {major}" if major else sdk["br_family"]
    if sdk.get("os_family") not in (None, "Unknown", "Other"):
        audience["os"] = sdk["os_family"]
    device = {"computer": "desktop", "mobile": "mobile", "tablet": "tablet"}.get(
        str(sdk.get("dvce_type")).lower()
    )
    if device:
        audience["device"] = device
    for key, column in (("country", "geo_country"), ("region", "geo_region"), ("city", "geo_city")):
        if sdk.get(column):
            audience[key] = sdk[column]

    expected: dict[str, Any] = {
        "event_id": sdk["event_id"],
        "event": name,
        "anonymous_id": sdk.get("domain_userid", sdk.get("network_userid")),
        "timestamp": sdk.get("derived_tstamp", sdk.get("true_tstamp", sdk["collector_tstamp"])),
        "context": context,
        "properties": properties,
    }
    for key, value in (
        ("user_id", sdk.get("user_id")),
        ("session_id", sdk.get("domain_sessionid")),
        ("page", page),
        ("campaign", campaign),
        ("audience", {**audience, "bot": False} if audience else None),
    ):
        if value:
            expected[key] = value
    return expected


def ours(click: ClickEvent) -> dict[str, Any]:
    body = click.to_json_dict()
    body["timestamp"] = click.timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return body


def test_our_field_order_is_the_sdks() -> None:
    assert len(FIELDS) == 131
    assert list(FIELDS) == SDK_FIELDS


@pytest.mark.parametrize("line", LINES, ids=[f"line{n + 1}" for n in range(len(LINES))])
def test_each_enriched_event_maps_as_the_sdks_transform_reads_it(line: str) -> None:
    sdk = transform(line)
    decoded = decode_message(line.encode())  # auto-detected
    assert decoded.format == "snowplow" and not decoded.rejects
    (click,) = decoded.events
    assert ours(click) == orjson.loads(orjson.dumps(reference(sdk)))


def test_the_fixture_covers_every_kind_of_event_we_map() -> None:
    kinds = {transform(line)["event"] for line in LINES}
    assert kinds == {"page_view", "struct", "unstruct", "page_ping", "transaction", "transaction_item"}
    events = [decode_message(line.encode()).events[0] for line in LINES]
    assert [e.event for e in events] == [
        "page_view",
        "product_view",
        "add_to_cart",
        "page_view",
        "shipping_details",
        "transaction",
        "page_ping",
        "transaction",
        "transaction_item",
        "page_view",
    ]
    assert [e.context["platform"] for e in events].count("mobile") == 1
    assert events[-1].context["platform"] == "android"


def test_derived_tstamp_corrects_the_device_clock() -> None:
    """The fixture's device clock is 2 s slow: collector_tstamp is 2 s after the device sent it."""
    sdk = transform(LINES[0])
    click = decode_message(LINES[0].encode()).events[0]
    assert sdk["collector_tstamp"] == "2024-03-13T10:00:02.000Z"
    assert ours(click)["timestamp"] == sdk["derived_tstamp"] == "2024-03-13T10:00:01.880Z"
    no_derived = sdk_line(**{**MINIMAL, "collector_tstamp": "2024-03-13 10:00:02.000"})
    assert ours(decode_message(no_derived.encode()).events[0])["timestamp"] == "2024-03-13T10:00:02.000Z"


def test_a_file_of_lines_in_one_message_is_a_batch() -> None:
    raw = ("\n".join(LINES[:3]) + "\r\n").encode()
    decoded = decode_message(raw)
    assert [e.event_id for e in decoded.events] == [transform(line)["event_id"] for line in LINES[:3]]
    broken = "\n".join([LINES[0], "x\ty", LINES[1]]).encode()
    decoded = decode_message(broken)
    assert len(decoded.events) == 2
    (rejection,) = decoded.rejects
    assert rejection.index == 1 and rejection.original == b"x\ty"


def test_the_sign_in_links_the_browser_to_the_user_and_the_purchase_keeps_its_first_touch() -> None:
    """The same journey our JSON would give: anonymous landing from the newsletter, sign-in on the
    checkout page (user_id and domain_userid on one event), purchase as the signed-in user."""
    config = compile_config(
        parse_config("""
version: 1
goals: [{name: purchase, match: {event: transaction}, value: properties.value}]
funnels:
  - name: checkout
    steps:
      - {name: product_view, match: {event: product_view}}
      - {name: add_to_cart, match: {event: add_to_cart}}
      - {name: shipping, match: {event: shipping_details}}
      - {name: purchase, match: {goal: purchase}}
""")
    )
    run = OfflineRun(config, partitions=2)
    outputs = [o.model_dump(mode="json") for line in LINES[:6] for o in run.feed(line.encode())]
    outputs += [o.model_dump(mode="json") for o in run.flush()]
    (macro,) = [o for o in outputs if o["type"] == "macro"]
    assert macro["user_id"] == "user_0042" and macro["value"] == 59.9
    assert macro["landing_page"] == "/" and macro["channel"] == "Email"
    steps = [o["step"] for o in outputs if o["type"] == "micro" and o.get("funnel") == "checkout"]
    assert steps == ["product_view", "add_to_cart", "shipping", "purchase"]
    assert any(o["type"] == "identity" for o in outputs)
    assert not [o for o in outputs if o["type"] == "deadletter"]


BAD = [
    (
        "wrong field count",
        "a\tb\tc",
        "invalid_tsv",
        "snowplow: 3 tab-separated fields, an enriched event has 131",
    ),
    ("old 108-field format", "\t".join(["x"] * 108), "invalid_tsv", "snowplow: 108 tab-separated fields"),
    ("no event_id", sdk_line(**{**MINIMAL, "event_id": ""}), "invalid_event", "field 7 (event_id) is empty"),
    (
        "bad collector_tstamp",
        sdk_line(**{**MINIMAL, "collector_tstamp": "yesterday"}),
        "invalid_event",
        "snowplow: field 4 (collector_tstamp) is not a timestamp: 'yesterday'",
    ),
    ("no collector_tstamp", sdk_line(**{**MINIMAL, "collector_tstamp": ""}), "invalid_event", "field 4"),
    (
        "bad derived_tstamp",
        sdk_line(**MINIMAL, derived_tstamp="2024-13-45 99:00:00"),
        "invalid_event",
        "field 125 (derived_tstamp) is not a timestamp",
    ),
    (
        "no identity",
        sdk_line(**{**MINIMAL, "domain_userid": ""}),
        "invalid_event",
        "no field 13 (user_id), field 16 (domain_userid) or field 18 (network_userid)",
    ),
    (
        "contexts not JSON",
        sdk_line(**MINIMAL, contexts="{not json"),
        "invalid_event",
        "snowplow: field 53 (contexts) is not valid JSON",
    ),
    (
        "contexts not an array",
        sdk_line(**MINIMAL, contexts='{"schema": "iglu:a/b/jsonschema/1-0-0", "data": {}}'),
        "invalid_event",
        "field 53 (contexts) is not a self-describing array of contexts",
    ),
    (
        "context schema not Iglu",
        sdk_line(**MINIMAL, contexts='{"schema": "x", "data": [{"schema": "http://x", "data": {}}]}'),
        "invalid_event",
        "field 53 (contexts): schema 'http://x' is not an Iglu URI",
    ),
    (
        "derived_contexts not JSON",
        sdk_line(**MINIMAL, derived_contexts="["),
        "invalid_event",
        "field 123 (derived_contexts) is not valid JSON",
    ),
    (
        "struct without action",
        sdk_line(**{**MINIMAL, "event": "struct"}, se_category="shop"),
        "invalid_event",
        "field 55 (se_action) is empty in a structured event",
    ),
    (
        "struct value not a number",
        sdk_line(**{**MINIMAL, "event": "struct"}, se_action="buy", se_value="lots"),
        "invalid_event",
        "field 58 (se_value) is not a number: 'lots'",
    ),
    (
        "unstruct without its event",
        sdk_line(**{**MINIMAL, "event": "unstruct"}),
        "invalid_event",
        "field 59 (unstruct_event) is empty in an unstructured event",
    ),
    (
        "unstruct not self-describing",
        sdk_line(**{**MINIMAL, "event": "unstruct"}, unstruct_event='{"data": 1}'),
        "invalid_event",
        "field 59 (unstruct_event) is not a self-describing event",
    ),
    (
        "transaction total not a number",
        sdk_line(**{**MINIMAL, "event": "transaction"}, tr_total="NaN"),
        "invalid_event",
        "field 62 (tr_total) is not a finite number",
    ),
    (
        "page_url too long",
        sdk_line(**MINIMAL, page_url="https://x/" + "a" * 9000),
        "invalid_event",
        "snowplow: field 30 (page_url): String should have at most 8192 characters",
    ),
    (
        "user_id with a control character",
        sdk_line(**MINIMAL, user_id="u\x01"),
        "invalid_event",
        "snowplow: field 13 (user_id): String should match pattern",
    ),
    ("not UTF-8", "\t".join(["\udcff"] * 131), "invalid_utf8", "snowplow: not UTF-8"),
]


@pytest.mark.parametrize(("line", "reason", "detail"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_broken_enriched_event_is_refused_naming_the_format_and_the_field(
    line: str, reason: str, detail: str
) -> None:
    raw = line.encode("utf-8", "surrogateescape")
    for fmt in ("auto", "snowplow"):
        decoded = decode_message(raw, format=fmt)
        assert not decoded.events
        (rejection,) = decoded.rejects
        assert (rejection.reason, rejection.format, rejection.original) == (reason, "snowplow", raw)
        assert detail in rejection.detail and rejection.detail.startswith("snowplow: ")


def test_declared_snowplow_refuses_json_and_declared_json_refuses_tsv() -> None:
    contract = orjson.dumps(
        {"event_id": "e", "event": "x", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}
    )
    refused = decode_message(contract, format="snowplow")
    assert [r.reason for r in refused.rejects] == ["invalid_tsv"]
    assert refused.rejects[0].detail == "snowplow: 1 tab-separated fields, an enriched event has 131"
    as_json = decode_message(LINES[0].encode(), format="contract")
    assert [(r.reason, r.format) for r in as_json.rejects] == [("invalid_json", "contract")]
    assert decode_message(b"", format="snowplow").rejects[0].reason == "invalid_tsv"


def test_too_large_and_too_many_lines() -> None:
    raw = LINES[0].encode()
    assert decode_message(raw, max_bytes=1024).rejects[0].detail.startswith("snowplow: message is")
    many = ("\n".join(LINES[:3])).encode()
    assert decode_snowplow(many, max_batch=2).rejects[0].reason == "batch_too_large"


def test_platforms() -> None:
    def platform(**values: str) -> str | None:
        click = decode_message(sdk_line(**{**MINIMAL, **values}).encode()).events[0]
        return click.context.get("platform")

    phone_ua = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Mobile Safari/537.36"
    assert platform() == "web"
    assert platform(useragent=phone_ua) == "mobile"
    assert platform(useragent=phone_ua, dvce_ismobile="0") == "web"
    assert platform(dvce_type="Tablet") == "mobile"
    assert platform(platform="mob", os_family="iOS") == "ios"
    assert platform(platform="app", os_name="Android") == "android"
    assert platform(platform="mob") == "mobile"
    assert platform(platform="srv") == "server"
    assert platform(platform="") is None


TSV_VALUE = st.text(
    st.characters(blacklist_characters="\t\n\r", blacklist_categories=["Cs"]), max_size=12
) | st.sampled_from(
    ["", "2024-03-13 10:00:00.000", "page_view", "struct", "unstruct", "{", '{"data": []}', "1", "x"]
)


@settings(max_examples=300)
@given(st.lists(TSV_VALUE, min_size=131, max_size=131))
def test_any_131_fields_give_an_event_or_a_snowplow_refusal(values: list[str]) -> None:
    raw = "\t".join(values).encode()
    decoded = decode_message(raw, format="snowplow")
    assert len(decoded.events) + len(decoded.rejects) == 1
    for rejection in decoded.rejects:
        assert rejection.format == "snowplow" and rejection.detail.startswith("snowplow: ")
        assert rejection.original == raw


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes_declared_snowplow_never_raise(raw: bytes) -> None:
    decoded = decode_message(raw, format="snowplow")
    assert decoded.events or decoded.rejects
    assert all(r.detail.startswith("snowplow: ") and r.format == "snowplow" for r in decoded.rejects)
