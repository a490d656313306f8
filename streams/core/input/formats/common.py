"""What the Segment and Snowplow mappings share: the platform a user agent or tracker implies,
turning a mapped event into a `ClickEvent` or a rejection that names the format and the source
field, and the page view event's name.

The platform values are the ones our own events and the simulator use: `web` (a desktop
browser), `mobile` (a browser on a phone or tablet), `ios` and `android` (native apps), and
`server` for a server-side library that says nothing about the user's device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from streams.core.input.event import MAX_NESTING, ClickEvent, nesting_limit
from streams.core.input.rejection import Decoded, Rejection, RejectReason

PAGE_VIEW_EVENT = "page_view"
"""Page and screen calls become this event: the default of the funnel config's `page_view_events`."""

_MOBILE_UA = ("Mobi", "Android", "iPhone", "iPad", "iPod")


def platform_from_user_agent(user_agent: str) -> str:
    """`mobile` for a phone's or tablet's browser, else `web`."""
    return "mobile" if any(mark in user_agent for mark in _MOBILE_UA) else "web"


def app_platform(os_name: str) -> str:
    """`ios` or `android` for a native app on that OS, else `mobile`."""
    lowered = os_name.lower()
    if lowered in ("ios", "ipados") or lowered.startswith("iphone"):
        return "ios"
    if lowered.startswith("android"):
        return "android"
    return "mobile"


def text(value: Any) -> str | None:
    """A non-empty string, or None (tracker payloads use null, "" and missing alike)."""
    return value if isinstance(value, str) and value else None


def identifier(value: Any) -> str | None:
    """An id: a non-empty string, or an integer some libraries send, as its decimal string."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def mapped(
    fmt: str,
    fields: dict[str, Any],
    original: bytes | Callable[[], bytes],
    index: int | None,
    source_field: Callable[[str], str],
    max_nesting: int = MAX_NESTING,
) -> ClickEvent | Rejection:
    """Validate a mapped event; a rejection names the format and the source field of each error.

    `source_field` turns a contract location ("user_id", "page.url") into the tracker's name for
    it ("userId", "field 30 (page_url)"). `original` may be a thunk: batch elements are re-encoded
    only when they are rejected.
    """
    try:
        return ClickEvent.model_validate(fields, context=nesting_limit(max_nesting))
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"])
            errors.append({"loc": source_field(loc), "type": err["type"], "msg": err["msg"]})
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        reason: RejectReason = "too_deeply_nested" if "nested deeper" in detail else "invalid_event"
        raw = original() if callable(original) else original
        return Rejection(reason, f"{fmt}: {detail}", raw, index, errors, fmt)


def reject(
    out: Decoded, reason: RejectReason, detail: str, original: bytes, index: int | None = None
) -> None:
    """Add a rejection whose detail starts with the format, as every rejection's does."""
    out.rejects.append(Rejection(reason, f"{out.format}: {detail}", original, index, [], out.format))


def encode(value: Any) -> Callable[[], bytes]:
    """The JSON bytes of one element of a batch, made only if it is rejected."""
    return lambda: orjson.dumps(value)


def pick(mapping: Mapping[str, Any] | None, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, Mapping) else None
