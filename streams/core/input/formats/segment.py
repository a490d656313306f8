"""Segment-spec messages (Segment, RudderStack, Jitsu) as clickstream events.

A Kafka message may hold one message (`{"type": "track", ...}`), a batch as the HTTP API takes
it (`{"batch": [...], "sentAt": ..., "context": ...}`, whose top-level context and sentAt apply
to every message), or a JSON array of messages. Each message becomes one event:

- `track` -> the event named by `event`, its `properties`;
- `page`, `screen` -> `page_view` (the default page view event), `properties` plus the page's
  `name` and `category`; the page is taken from the page call's own properties (`url`,
  `referrer`, `title`, `path`+`search`) over `context.page`;
- `identify` -> an event named `identify` with `userId` and `anonymousId`: carrying both ids,
  it is the identity link stitching needs; the `traits` become its properties;
- `alias` -> an event named `alias` with `anonymous_id` = `previousId` and `user_id` = `userId`,
  so the previous id's history joins the user (two user ids are never merged: a `previousId`
  that was itself a user id links nothing);
- `group` -> accepted and ignored, counted in `Decoded.ignored`.

Ids: `messageId` is the event id (a message without one gets a digest of its content, so a
retried copy is still the same event); `userId` and `anonymousId` (numbers as decimal strings).
Time: a message already processed by Segment or RudderStack carries both `timestamp` (corrected)
and `originalTimestamp`, and `timestamp` is used; a raw client message whose `sentAt` and
`receivedAt` are known is corrected for the client's clock as Segment does,
`receivedAt - (sentAt - timestamp)`; otherwise `timestamp`, `originalTimestamp`, `receivedAt`.
Campaign from `context.campaign`, else (by the event model) the page URL's utm_* parameters.
Platform from the library, RudderStack's `channel`, the OS of an app, or the user agent.
Session from RudderStack's `context.sessionId`; without it the engine sessionizes.

Every refusal starts with `segment:` and names the message's field, e.g.
`segment: track without event`, `segment: context.page.url: Input should be a valid string`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from streams.core.input.event import MAX_NESTING, ClickEvent, nesting_depth, parse_timestamp, to_epoch_ms
from streams.core.input.formats.common import (
    PAGE_VIEW_EVENT,
    app_platform,
    encode,
    identifier,
    mapped,
    pick,
    platform_from_user_agent,
    reject,
    text,
)
from streams.core.input.formats.detect import SEGMENT_TYPES
from streams.core.input.rejection import Decoded, Rejection, RejectReason

FORMAT = "segment"
# what a batch adds around a message's properties: the batch object, its array, the message
_AROUND_PROPERTIES = 3
_CAMPAIGN_FIELDS = ("source", "medium", "name", "term", "content")
_EXCLUDED_FROM_DIGEST = ("sentAt", "receivedAt", "_metadata")
# library names, lower-cased, by what they run on
_IOS_LIBRARIES = ("ios", "swift")
_ANDROID_LIBRARIES = ("android", "kotlin")
_APP_LIBRARIES = ("react-native", "react native", "flutter", "xamarin", "unity", "cordova", "capacitor")
_BROWSER_LIBRARIES = ("analytics.js", "analytics-next", "javascript", "jitsu", "browser")
# where each contract field came from, for refusals that name the message's field
_SOURCE_FIELDS = {
    "event_id": "messageId",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "session_id": "context.sessionId",
    "event": "event",
    "context": "context",
}


def decode_segment(
    parsed: Any, raw: bytes, *, max_batch: int = 10_000, max_nesting: int = MAX_NESTING
) -> Decoded:
    """The events of one Kafka message holding Segment-spec JSON (already parsed from `raw`)."""
    out = Decoded(format=FORMAT)
    outer = max_nesting + _AROUND_PROPERTIES
    if nesting_depth(parsed, outer) > outer:
        reject(out, "too_deeply_nested", f"nested deeper than {outer} levels", raw)
        return out
    shared: Mapping[str, Any] = {}
    single = False
    if isinstance(parsed, dict) and "batch" in parsed:
        messages = parsed["batch"]
        if not isinstance(messages, list):
            reject(out, "invalid_event", f"batch is a {type(messages).__name__}, not an array", raw)
            return out
        shared = parsed
        if parsed.get("context") is not None and not isinstance(parsed["context"], dict):
            reject(out, "invalid_event", "the batch's context is not an object", raw)
            return out
    elif isinstance(parsed, list):
        messages = parsed
    else:
        messages, single = [parsed], True
    if not messages:
        reject(out, "empty_batch", "the batch is empty", raw)
        return out
    if len(messages) > max_batch:
        reject(out, "batch_too_large", f"{len(messages)} messages, the limit is {max_batch}", raw)
        return out
    for index, message in enumerate(messages):
        result = segment_event(
            message,
            shared,
            original=raw if single else encode(message),
            index=None if single else index,
            max_nesting=max_nesting,
        )
        if result is None:
            out.ignored += 1
        elif isinstance(result, ClickEvent):
            out.events.append(result)
        else:
            out.rejects.append(result)
    return out


def segment_event(
    message: Any,
    batch: Mapping[str, Any] | None = None,
    *,
    original: bytes | Callable[[], bytes] = b"",
    index: int | None = None,
    max_nesting: int = MAX_NESTING,
) -> ClickEvent | Rejection | None:
    """One Segment message as an event, a rejection, or None for a `group` call (ignored).

    `batch` is the batch object the message came in, whose `context`, `sentAt` and `receivedAt`
    apply to it where it has none of its own.
    """
    where = dict(_SOURCE_FIELDS)

    def refuse(detail: str, reason: RejectReason = "invalid_event") -> Rejection:
        raw = original() if callable(original) else original
        return Rejection(reason, f"{FORMAT}: {detail}", raw, index, [], FORMAT)

    if not isinstance(message, dict):
        return refuse(f"a message is a JSON object, not {type(message).__name__}", "not_an_object")
    kind = message.get("type")
    if kind is None:
        return refuse("message without type")
    if not isinstance(kind, str) or kind not in SEGMENT_TYPES:
        return refuse(f"type {kind!r} is not one of {', '.join(sorted(SEGMENT_TYPES))}")
    if kind == "group":
        return None
    batch = batch or {}

    context = message.get("context")
    if context is None:
        context = {}
    elif not isinstance(context, dict):
        return refuse(f"{kind}: context is not an object")
    shared_context = batch.get("context")
    if isinstance(shared_context, dict) and shared_context:
        context = {**shared_context, **context}

    user_id = identifier(message.get("userId"))
    anonymous_id = identifier(message.get("anonymousId"))
    if kind == "alias":
        previous_id = identifier(message.get("previousId"))
        if previous_id is None:
            return refuse("alias without previousId")
        if user_id is None:
            return refuse("alias without userId")
        anonymous_id = previous_id
        where["anonymous_id"] = "previousId"
    elif user_id is None and anonymous_id is None:
        return refuse(f"{kind} without userId or anonymousId")

    name = message.get("name")
    if kind == "track":
        event = message.get("event")
        if event is None or event == "":
            return refuse("track without event")
        if not isinstance(event, str):
            return refuse(f"track: event is a {type(event).__name__}, not a string")
    elif kind in ("page", "screen"):
        event = PAGE_VIEW_EVENT
    else:
        event = kind

    bag = "traits" if kind == "identify" else "properties"
    properties = message.get(bag)
    if properties is None or kind == "alias":
        properties = {}
    elif not isinstance(properties, dict):
        return refuse(f"{kind}: {bag} is not an object")
    where["properties"] = bag
    if kind in ("page", "screen"):
        extra = {key: message[key] for key in ("name", "category") if message.get(key) is not None}
        if extra:
            properties = {**extra, **properties}

    moment = _event_time(message, batch)
    if isinstance(moment, str):
        return refuse(f"{kind} {moment}")
    timestamp, where["timestamp"] = moment

    event_id = message.get("messageId")
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    elif event_id is None or event_id == "":
        event_id = _digest(message)

    fields: dict[str, Any] = {
        "event_id": event_id,
        "event": event,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "timestamp": timestamp,
        "properties": properties,
        "context": _context(context, message.get("channel")),
    }
    session_id = identifier(context.get("sessionId"))
    if session_id is not None:
        fields["session_id"] = session_id
    page = _page(kind, properties, context.get("page"), name, where)
    if isinstance(page, str):
        return refuse(f"{kind}: {page}")
    if page:
        fields["page"] = page
    campaign = context.get("campaign")
    if isinstance(campaign, dict):
        values = {key: campaign[key] for key in _CAMPAIGN_FIELDS if campaign.get(key) is not None}
        if values:
            fields["campaign"] = values
            where.update({f"campaign.{key}": f"context.campaign.{key}" for key in values})
    elif campaign is not None:
        return refuse(f"{kind}: context.campaign is not an object")
    location = _location(context.get("location"))
    if location:
        fields["audience"] = location
    return mapped(FORMAT, fields, original, index, lambda loc: _source(where, loc), max_nesting)


def _location(location: Any) -> dict[str, str]:
    """Segment's `context.location` where it names the country by its ISO code (as our collector
    writes it, having looked the client address up): the audience's country, region and city."""
    if not isinstance(location, dict):
        return {}
    country = text(location.get("country"))
    if country is None or len(country) != 2 or not country.isalpha():
        return {}
    out = {"country": country.upper()}
    for key, size in (("region", 64), ("city", 128)):
        value = text(location.get(key))
        if value is not None:
            out[key] = value[:size]
    return out


def _source(where: Mapping[str, str], loc: str) -> str:
    head, _, rest = loc.partition(".")
    if loc in where:
        return where[loc]
    if head in where:
        return f"{where[head]}.{rest}" if rest else where[head]
    return loc or "message"


def _event_time(message: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[Any, str] | str:
    """The event's time as the event model takes it, and the field it came from; or why not."""
    timestamp = message.get("timestamp")
    original = message.get("originalTimestamp")
    sent = message.get("sentAt", batch.get("sentAt"))
    received = message.get("receivedAt", batch.get("receivedAt"))
    if timestamp is not None and original is not None:
        return timestamp, "timestamp"  # processed upstream: `timestamp` is already corrected
    client, field = (timestamp, "timestamp") if timestamp is not None else (original, "originalTimestamp")
    if client is None:
        if received is not None:
            return received, "receivedAt"
        return "without timestamp"
    if sent is None or received is None:
        return client, field
    moments: list[datetime] = []
    for value, name in ((client, field), (sent, "sentAt"), (received, "receivedAt")):
        try:
            moments.append(parse_timestamp(value))
        except ValueError as exc:
            return f"{name}: {exc}"
    client_at, sent_at, received_at = moments
    return to_epoch_ms(received_at) - (to_epoch_ms(sent_at) - to_epoch_ms(client_at)), field


def _page(
    kind: str, properties: Mapping[str, Any], context_page: Any, name: Any, where: dict[str, str]
) -> dict[str, Any] | str | None:
    """The page an event was on: a page call's properties describe the page it reports; every
    call's `context.page` the page it was made on."""
    if context_page is not None and not isinstance(context_page, dict):
        return "context.page is not an object"
    sources: list[tuple[str, Mapping[str, Any]]] = []
    if kind == "page":
        sources.append(("properties", properties))
    if context_page:
        sources.append(("context.page", context_page))
    page: dict[str, Any] = {}
    for key in ("url", "referrer", "title"):
        for prefix, source in sources:
            if source.get(key) not in (None, ""):
                page[key] = source[key]
                where[f"page.{key}"] = f"{prefix}.{key}"
                break
    if "url" not in page:
        for prefix, source in sources:
            path = text(source.get("path"))
            if path is not None:
                page["url"] = path + (text(source.get("search")) or "")
                where["page.url"] = f"{prefix}.path"
                break
    if kind == "screen" and "title" not in page and isinstance(name, str) and name:
        page["title"] = name
        where["page.title"] = "name"
    return page or None


def _context(context: Mapping[str, Any], channel: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    platform = segment_platform(context, channel)
    if platform is not None:
        out["platform"] = platform
    for source, target in (("userAgent", "user_agent"), ("locale", "locale"), ("timezone", "timezone")):
        value = text(context.get(source))
        if value is not None:
            out[target] = value
    library = context.get("library")
    if isinstance(library, dict):
        described = {key: library[key] for key in ("name", "version") if text(library.get(key))}
        if described:
            out["library"] = described
    ip = text(context.get("ip"))
    if ip is not None:
        out["ip"] = ip  # enrichment reads it, then CONVERSIONS_IP_MODE drops or truncates it
    hints = context.get("userAgentData")
    if isinstance(hints, dict):
        kept = {key: hints[key] for key in ("mobile", "platform") if key in hints}
        if kept:
            out["user_agent_data"] = kept
    consent = context.get("consent")
    if isinstance(consent, dict):
        out["consent"] = consent
    return out


def segment_platform(context: Mapping[str, Any], channel: Any = None) -> str | None:
    """`ios`/`android` for a native app, `mobile`/`web` for a browser by its user agent, `server`
    for a server library that passes on no user agent; None when nothing says."""
    library = (text(pick(context.get("library"), "name")) or "").lower()
    os_name = text(pick(context.get("os"), "name")) or ""
    user_agent = text(context.get("userAgent"))
    if any(mark in library for mark in _IOS_LIBRARIES):
        return "ios"
    if any(mark in library for mark in _ANDROID_LIBRARIES):
        return "android"
    if channel == "mobile" or any(mark in library for mark in _APP_LIBRARIES):
        return app_platform(os_name)
    if user_agent is not None:
        return platform_from_user_agent(user_agent)
    if isinstance(context.get("app"), dict) and os_name:
        return app_platform(os_name)
    if channel in ("web", "browser") or any(mark in library for mark in _BROWSER_LIBRARIES):
        return "web"
    if channel == "server" or library:
        return "server"
    return None


def _digest(message: Mapping[str, Any]) -> str:
    """An event id for a message without `messageId`: the same content, the same id, whenever
    and however often it was sent."""
    content = {key: value for key, value in message.items() if key not in _EXCLUDED_FROM_DIGEST}
    try:
        encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer orjson cannot write back
        encoded = repr(sorted(content.items(), key=lambda item: item[0])).encode()
    return "segment-" + hashlib.sha256(encoded).hexdigest()[:32]
