"""Snowplow enriched events (TSV) as clickstream events.

Snowplow's enrich writes one event per Kafka message as 131 tab-separated fields in a fixed
order, `FIELDS` below (the order of Snowplow's Analytics SDKs, e.g. `ENRICHED_EVENT_FIELD_TYPES`
in snowplow-python-analytics-sdk's event_transformer.py, which the tests use as the reference).
Several lines in one message (an archived file's rows) are read as a batch. The mapping:

- `event_id`: 7 `event_id`;
- `user_id`: 13 `user_id`; `anonymous_id`: 16 `domain_userid`, else 18 `network_userid`;
- `session_id`: 124 `domain_sessionid`;
- `timestamp`: 125 `derived_tstamp`, else 131 `true_tstamp`, else 4 `collector_tstamp`;
- `event`, by 6 `event`: `page_view` is `page_view`; `struct` is named by 55 `se_action`;
  `unstruct` by the name of 59 `unstruct_event`'s schema (for `snowplow_ecommerce_action`, by its
  `type`: `add_to_cart`, `transaction`, ...; a mobile `screen_view` is a `page_view` titled by
  the screen's name); anything else by 127 `event_name`, else `event`;
- `page`: 30 `page_url`, 32 `page_referrer`, 31 `page_title`;
- `campaign`: 49 `mkt_source`, 48 `mkt_medium`, 52 `mkt_campaign`, 50 `mkt_term`,
  51 `mkt_content` (without them, the event model derives it from the page URL's utm_*);
- `context.platform` from 2 `platform`: `web` is `mobile` or `web` by 103 `dvce_ismobile`,
  102 `dvce_type`, the YAUAA context's `deviceClass` or 78 `useragent`; `mob` and `app` are
  `ios` or `android` by the mobile context's `osType` or 99 `os_family`; `srv` is `server`;
- `context.user_agent`, `locale`, `timezone`, `app_id`, `library`: 78 `useragent`, 84 `br_lang`,
  101 `os_timezone`, 1 `app_id`, 10 `v_tracker`;
- `properties`: a structured event's 54-58 `se_*` (`category`, `action`, `label`, `property`,
  `value`); an unstructured event's data; a transaction's `tr_*` (`order_id`, `value`, `tax`,
  `shipping`, `currency`) and a transaction item's `ti_*`; and from 53 `contexts` and
  123 `derived_contexts`, where the event has not said it: the `web_page` context's `id`
  (`page_view_id`), the first `product` context (`product_id`, `product_name`, `category`,
  `price`, `currency`, `quantity`) and the ecommerce `transaction` context (`order_id`,
  `value` from `revenue`, `currency`).

Only the fields used are checked. Every refusal starts with `snowplow:` and names the field by
its 1-based position and name, e.g. `snowplow: field 4 (collector_tstamp) is not a timestamp`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from streams.core.input.event import MAX_NESTING, ClickEvent, parse_timestamp, to_epoch_ms
from streams.core.input.formats.common import (
    PAGE_VIEW_EVENT,
    app_platform,
    mapped,
    platform_from_user_agent,
    reject,
)
from streams.core.input.rejection import Decoded, Rejection, RejectReason
from streams.errors import ConversionsError

FORMAT = "snowplow"
FIELDS = (
    "app_id",
    "platform",
    "etl_tstamp",
    "collector_tstamp",
    "dvce_created_tstamp",
    "event",
    "event_id",
    "txn_id",
    "name_tracker",
    "v_tracker",
    "v_collector",
    "v_etl",
    "user_id",
    "user_ipaddress",
    "user_fingerprint",
    "domain_userid",
    "domain_sessionidx",
    "network_userid",
    "geo_country",
    "geo_region",
    "geo_city",
    "geo_zipcode",
    "geo_latitude",
    "geo_longitude",
    "geo_region_name",
    "ip_isp",
    "ip_organization",
    "ip_domain",
    "ip_netspeed",
    "page_url",
    "page_title",
    "page_referrer",
    "page_urlscheme",
    "page_urlhost",
    "page_urlport",
    "page_urlpath",
    "page_urlquery",
    "page_urlfragment",
    "refr_urlscheme",
    "refr_urlhost",
    "refr_urlport",
    "refr_urlpath",
    "refr_urlquery",
    "refr_urlfragment",
    "refr_medium",
    "refr_source",
    "refr_term",
    "mkt_medium",
    "mkt_source",
    "mkt_term",
    "mkt_content",
    "mkt_campaign",
    "contexts",
    "se_category",
    "se_action",
    "se_label",
    "se_property",
    "se_value",
    "unstruct_event",
    "tr_orderid",
    "tr_affiliation",
    "tr_total",
    "tr_tax",
    "tr_shipping",
    "tr_city",
    "tr_state",
    "tr_country",
    "ti_orderid",
    "ti_sku",
    "ti_name",
    "ti_category",
    "ti_price",
    "ti_quantity",
    "pp_xoffset_min",
    "pp_xoffset_max",
    "pp_yoffset_min",
    "pp_yoffset_max",
    "useragent",
    "br_name",
    "br_family",
    "br_version",
    "br_type",
    "br_renderengine",
    "br_lang",
    "br_features_pdf",
    "br_features_flash",
    "br_features_java",
    "br_features_director",
    "br_features_quicktime",
    "br_features_realplayer",
    "br_features_windowsmedia",
    "br_features_gears",
    "br_features_silverlight",
    "br_cookies",
    "br_colordepth",
    "br_viewwidth",
    "br_viewheight",
    "os_name",
    "os_family",
    "os_manufacturer",
    "os_timezone",
    "dvce_type",
    "dvce_ismobile",
    "dvce_screenwidth",
    "dvce_screenheight",
    "doc_charset",
    "doc_width",
    "doc_height",
    "tr_currency",
    "tr_total_base",
    "tr_tax_base",
    "tr_shipping_base",
    "ti_currency",
    "ti_price_base",
    "base_currency",
    "geo_timezone",
    "mkt_clickid",
    "mkt_network",
    "etl_tags",
    "dvce_sent_tstamp",
    "refr_domain_userid",
    "refr_device_tstamp",
    "derived_contexts",
    "domain_sessionid",
    "derived_tstamp",
    "event_vendor",
    "event_name",
    "event_format",
    "event_version",
    "event_fingerprint",
    "true_tstamp",
)

"""The enriched event's fields in order."""
_AT = {name: position for position, name in enumerate(FIELDS)}
# the event model's fields and the enriched fields they come from, for refusals
_SOURCES = {
    "event_id": "event_id",
    "user_id": "user_id",
    "session_id": "domain_sessionid",
    "page.url": "page_url",
    "page.referrer": "page_referrer",
    "page.title": "page_title",
    "campaign.source": "mkt_source",
    "campaign.medium": "mkt_medium",
    "campaign.name": "mkt_campaign",
    "campaign.term": "mkt_term",
    "campaign.content": "mkt_content",
    "context.user_agent": "useragent",
    "context.locale": "br_lang",
    "context.timezone": "os_timezone",
    "context.app_id": "app_id",
}
_CAMPAIGN = (
    ("source", "mkt_source"),
    ("medium", "mkt_medium"),
    ("name", "mkt_campaign"),
    ("term", "mkt_term"),
    ("content", "mkt_content"),
)
_MOBILE_DEVICE_CLASSES = frozenset(("Phone", "Mobile", "Tablet", "Watch", "Handheld Game Console", "eReader"))
_OTHER_PLATFORMS = {"srv": "server", "pc": "desktop", "tv": "tv", "cnsl": "console", "iot": "iot"}
Context = tuple[str, str, Any]  # vendor, name, data


def label(name: str) -> str:
    """How a refusal names an enriched field: its 1-based position and name."""
    return f"field {_AT[name] + 1} ({name})"


class _Refused(ConversionsError):
    def __init__(self, detail: str, reason: RejectReason = "invalid_event") -> None:
        super().__init__(detail)
        self.detail, self.reason = detail, reason


def decode_snowplow(
    raw: bytes, *, max_bytes: int = 1_000_000, max_batch: int = 10_000, max_nesting: int = MAX_NESTING
) -> Decoded:
    """The events of one Kafka message holding Snowplow enriched TSV, one event per line."""
    out = Decoded(format=FORMAT)
    if len(raw) > max_bytes:
        reject(out, "too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}", raw)
        return out
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reject(out, "invalid_utf8", f"not UTF-8: {exc.reason} at byte {exc.start}", raw)
        return out
    lines = [(index, line.rstrip("\r")) for index, line in enumerate(text.split("\n"))]
    lines = [(index, line) for index, line in lines if line]
    if not lines:
        reject(out, "invalid_tsv", f"an empty message is not an enriched event ({len(FIELDS)} fields)", raw)
        return out
    if len(lines) > max_batch:
        reject(out, "batch_too_large", f"{len(lines)} events, the limit is {max_batch}", raw)
        return out
    single = len(lines) == 1
    for index, line in lines:
        result = snowplow_event(
            line,
            original=raw if single else line.encode(),
            index=None if single else index,
            max_nesting=max_nesting,
        )
        if isinstance(result, ClickEvent):
            out.events.append(result)
        else:
            out.rejects.append(result)
    return out


def snowplow_event(
    line: str, *, original: bytes = b"", index: int | None = None, max_nesting: int = MAX_NESTING
) -> ClickEvent | Rejection:
    """One enriched event (a TSV line without its newline) as an event, or why not."""
    values = line.split("\t")
    if len(values) != len(FIELDS):
        detail = f"{FORMAT}: {len(values)} tab-separated fields, an enriched event has {len(FIELDS)}"
        return Rejection("invalid_tsv", detail, original, index, [], FORMAT)
    try:
        fields, where = _fields(values)
    except _Refused as refused:
        return Rejection(refused.reason, f"{FORMAT}: {refused.detail}", original, index, [], FORMAT)
    return mapped(FORMAT, fields, original, index, lambda loc: _source(where, loc), max_nesting)


def _source(where: Mapping[str, str], loc: str) -> str:
    for key in (loc, loc.partition(".")[0]):
        if key in where:
            return label(where[key]) + loc[len(key) :]
    return loc or "event"


def _fields(values: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The event model's fields from an enriched event's values, and where each came from."""

    def get(name: str) -> str:
        return values[_AT[name]]

    where = dict(_SOURCES)
    event_id = get("event_id")
    if not event_id:
        raise _Refused(f"{label('event_id')} is empty")
    if not get("collector_tstamp"):
        raise _Refused(f"{label('collector_tstamp')} is empty")
    moment: int | None = None
    for name in ("derived_tstamp", "true_tstamp", "collector_tstamp"):
        value = get(name)
        if not value:
            continue
        try:
            parsed = to_epoch_ms(parse_timestamp(value))
        except ValueError:
            raise _Refused(f"{label(name)} is not a timestamp: {value[:40]!r}") from None
        if moment is None:
            moment, where["timestamp"] = parsed, name
    anonymous_id = get("domain_userid") or get("network_userid") or None
    where["anonymous_id"] = "domain_userid" if get("domain_userid") else "network_userid"
    user_id = get("user_id") or None
    if user_id is None and anonymous_id is None:
        ids = f"{label('user_id')}, {label('domain_userid')} or {label('network_userid')}"
        raise _Refused(f"no {ids}: an event needs one")
    contexts = _contexts(get, "contexts") + _contexts(get, "derived_contexts")
    unstruct = _unstruct(get)
    event, properties = _event_and_properties(get, unstruct, where)
    for vendor, name, data in contexts:
        if isinstance(data, dict):
            _context_properties(vendor, name, data, properties)

    fields: dict[str, Any] = {
        "event_id": event_id,
        "event": event,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "timestamp": moment,
        "properties": properties,
        "context": _context(get, contexts),
    }
    if get("domain_sessionid"):
        fields["session_id"] = get("domain_sessionid")
    audience = _audience(get)
    if audience:
        fields["audience"] = audience
    page = {key: get(f"page_{key}") for key in ("url", "referrer", "title") if get(f"page_{key}")}
    screen_name = properties.get("name") if unstruct is not None and unstruct[1] == "screen_view" else None
    if isinstance(screen_name, str) and screen_name and "title" not in page:
        page["title"] = screen_name  # an app's screen, named as a page is titled
        where["page.title"] = "unstruct_event"
    if page:
        fields["page"] = page
    campaign = {key: get(name) for key, name in _CAMPAIGN if get(name)}
    if campaign:
        fields["campaign"] = campaign
    return fields, where


def _event_and_properties(
    get: Callable[[str], str], unstruct: Context | None, where: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    kind = get("event")
    properties: dict[str, Any] = {}
    if kind == "page_view":
        where["event"] = "event"
        return PAGE_VIEW_EVENT, properties
    if kind == "struct":
        where["event"] = "se_action"
        if not get("se_action"):
            raise _Refused(f"{label('se_action')} is empty in a structured event")
        for key in ("category", "action", "label", "property"):
            if get(f"se_{key}"):
                properties[key] = get(f"se_{key}")
        if get("se_value"):
            properties["value"] = _number(get, "se_value")
        return get("se_action"), properties
    if kind == "unstruct":
        if unstruct is None:
            raise _Refused(f"{label('unstruct_event')} is empty in an unstructured event")
        _, name, data = unstruct
        where["event"] = where["properties"] = "unstruct_event"
        if not isinstance(data, dict):
            raise _Refused(f"{label('unstruct_event')}: its data is not an object")
        properties.update(data)
        if name == "snowplow_ecommerce_action" and isinstance(data.get("type"), str) and data["type"]:
            return data["type"], properties
        if name == "screen_view":
            return PAGE_VIEW_EVENT, properties
        return name, properties
    if kind == "transaction":
        for key, name in (("order_id", "tr_orderid"), ("affiliation", "tr_affiliation")):
            if get(name):
                properties[key] = get(name)
        for key, name in (("value", "tr_total"), ("tax", "tr_tax"), ("shipping", "tr_shipping")):
            if get(name):
                properties[key] = _number(get, name)
        if get("tr_currency"):
            properties["currency"] = get("tr_currency")
    elif kind == "transaction_item":
        for key, name in (
            ("order_id", "ti_orderid"),
            ("product_id", "ti_sku"),
            ("product_name", "ti_name"),
            ("category", "ti_category"),
            ("currency", "ti_currency"),
        ):
            if get(name):
                properties[key] = get(name)
        if get("ti_price"):
            properties["price"] = _number(get, "ti_price")
        if get("ti_quantity"):
            properties["quantity"] = _number(get, "ti_quantity")
    name = get("event_name") or kind
    where["event"] = "event_name" if get("event_name") else "event"
    if not name:
        raise _Refused(f"{label('event')} and {label('event_name')} are empty")
    return name, properties


def _number(get: Callable[[str], str], name: str) -> float | int:
    value = get(name)
    try:
        number = float(value)
    except ValueError:
        raise _Refused(f"{label(name)} is not a number: {value[:40]!r}") from None
    if not math.isfinite(number):
        raise _Refused(f"{label(name)} is not a finite number: {value[:40]!r}")
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number


def _iglu(schema: Any, name: str) -> tuple[str, str]:
    """The vendor and name of an Iglu schema URI, `iglu:vendor/name/format/version`."""
    parts = schema.removeprefix("iglu:").split("/") if isinstance(schema, str) else []
    if not (isinstance(schema, str) and schema.startswith("iglu:") and len(parts) == 4 and all(parts)):
        raise _Refused(f"{label(name)}: schema {str(schema)[:80]!r} is not an Iglu URI")
    return parts[0], parts[1]


def _json(get: Callable[[str], str], name: str) -> Any:
    try:
        return orjson.loads(get(name))
    except orjson.JSONDecodeError as exc:
        raise _Refused(f"{label(name)} is not valid JSON: {exc}") from None


def _contexts(get: Callable[[str], str], name: str) -> list[Context]:
    """A contexts field: a self-describing JSON whose `data` is an array of self-describing JSONs."""
    if not get(name):
        return []
    document = _json(get, name)
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _Refused(f"{label(name)} is not a self-describing array of contexts")
    out: list[Context] = []
    for entry in entries:
        if not isinstance(entry, dict) or "data" not in entry:
            raise _Refused(f"{label(name)}: a context is not a self-describing JSON")
        out.append((*_iglu(entry.get("schema"), name), entry["data"]))
    return out


def _unstruct(get: Callable[[str], str]) -> Context | None:
    """The unstruct_event field: a self-describing JSON wrapping the event's own."""
    if not get("unstruct_event"):
        return None
    document = _json(get, "unstruct_event")
    inner = document.get("data") if isinstance(document, dict) else None
    if not isinstance(inner, dict) or "data" not in inner:
        raise _Refused(f"{label('unstruct_event')} is not a self-describing event")
    return (*_iglu(inner.get("schema"), "unstruct_event"), inner["data"])


def _context_properties(vendor: str, name: str, data: dict[str, Any], properties: dict[str, Any]) -> None:
    """What a context carries that funnels use, where the event itself has not said it."""
    if name == "web_page" and data.get("id") is not None:
        properties.setdefault("page_view_id", data["id"])
    elif name == "product" and "product_id" not in properties:
        product_id = data.get("id", data.get("sku"))
        if product_id is not None:
            properties["product_id"] = product_id
        for key, target in (
            ("name", "product_name"),
            ("category", "category"),
            ("price", "price"),
            ("currency", "currency"),
            ("quantity", "quantity"),
        ):
            if data.get(key) is not None:
                properties.setdefault(target, data[key])
    elif name == "transaction" and vendor.endswith(".ecommerce"):
        for key, target in (("transaction_id", "order_id"), ("revenue", "value"), ("currency", "currency")):
            if data.get(key) is not None:
                properties.setdefault(target, data[key])


def _context(get: Callable[[str], str], contexts: list[Context]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    platform = snowplow_platform(get, contexts)
    if platform is not None:
        out["platform"] = platform
    for target, name in (
        ("user_agent", "useragent"),
        ("locale", "br_lang"),
        ("timezone", "os_timezone"),
        ("app_id", "app_id"),
        ("ip", "user_ipaddress"),
    ):
        if get(name):
            out[target] = get(name)
    if get("v_tracker"):
        out["library"] = {"name": "snowplow", "version": get("v_tracker")}
    return out


_DEVICE_TYPES = {"computer": "desktop", "mobile": "mobile", "tablet": "tablet"}


def _audience(get: Callable[[str], str]) -> dict[str, Any]:
    """What Snowplow's own enrichments (ua-parser, IP lookups) found: kept, enrichment fills the rest."""
    out: dict[str, Any] = {}
    family = get("br_family")
    if family and family.lower() not in ("unknown", "other"):
        out["browser"] = family[:64]
        version = get("br_version")
        major = version.split(".", 1)[0] if version else ""
        out["browser_version"] = f"{family} {major}"[:80] if major else family[:80]
    os_family = get("os_family")
    if os_family and os_family.lower() not in ("unknown", "other"):
        out["os"] = os_family[:64]
    device = _DEVICE_TYPES.get((get("dvce_type") or "").lower())
    if device is not None:
        out["device"] = device
    if get("br_type").lower() in ("robot", "spider"):
        out["device"], out["bot"] = "bot", True
    for target, name, size in (
        ("country", "geo_country", 8),
        ("region", "geo_region", 64),
        ("city", "geo_city", 128),
    ):
        if get(name):
            out[target] = get(name)[:size].upper() if target == "country" else get(name)[:size]
    return out


def snowplow_platform(get: Callable[[str], str], contexts: list[Context]) -> str | None:
    """`web`/`mobile` for a browser, `ios`/`android` for an app, `server`, ... (see the table)."""
    platform = get("platform")
    found = {name: data for _, name, data in contexts if isinstance(data, dict)}
    if platform == "web":
        device_class = found.get("yauaa_context", {}).get("deviceClass")
        if get("dvce_ismobile") == "1" or get("dvce_type") in ("Mobile", "Tablet"):
            return "mobile"
        if isinstance(device_class, str):
            return "mobile" if device_class in _MOBILE_DEVICE_CLASSES else "web"
        if get("dvce_ismobile") == "0":
            return "web"
        return platform_from_user_agent(get("useragent")) if get("useragent") else "web"
    if platform in ("mob", "app"):
        os_type = found.get("mobile_context", {}).get("osType")
        return app_platform(os_type if isinstance(os_type, str) else get("os_family") or get("os_name"))
    return _OTHER_PLATFORMS.get(platform, platform or None)
