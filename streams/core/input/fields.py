"""What the event model does with its fields, as plain functions: timestamps to and from epoch
milliseconds, the nesting limit, a URL's path and utm_* parameters, a dotted field path.

`input.event` holds the pydantic models, which mypyc cannot compile (pydantic's metaclass); their
validators and methods run for every event, so their work lives here, where it is compiled
(`streams.compiled.MODULES`), and the models delegate to it. `input.event` re-exports every name
it had, so callers import them from either module.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from streams.core.records.trusted import assemble

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT_FLOAT_MS: Final = 2**32 * 1000
EARLIEST_TIMESTAMP: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP: Final = datetime(2100, 1, 1, tzinfo=UTC)
_fromtimestamp: Final = datetime.fromtimestamp
_fromisoformat: Final = datetime.fromisoformat
_CONTAINERS: Final = (dict, list)
"""What nests, as a tuple: compiled, `isinstance(x, dict | list)` builds the union on every call
(a quarter of the cost of `shallow`)."""


def parse_timestamp(value: Any) -> datetime:
    """RFC 3339 with offset, a naive "YYYY-MM-DD HH:MM:SS" read as UTC, or epoch milliseconds."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be a string or integer epoch milliseconds")
    if isinstance(value, int):
        try:
            parsed = EPOCH + timedelta(milliseconds=value)
        except OverflowError:
            raise ValueError(f"timestamp {value} ms is out of range") from None
    elif isinstance(value, str):
        if len(value) > 40:
            raise ValueError("timestamp string is too long")
        try:
            parsed = _fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"unparseable timestamp {value!r}: use RFC 3339 with an offset, "
                "'YYYY-MM-DD HH:MM:SS' (UTC) or epoch milliseconds"
            ) from None
        zone = parsed.tzinfo
        if zone is None:
            parsed = parsed.replace(tzinfo=UTC)
        elif zone is not UTC:  # `Z` and `+00:00` give UTC itself, which astimezone returns as is
            parsed = parsed.astimezone(UTC)
    else:
        raise ValueError("timestamp must be a string or integer epoch milliseconds")
    if not EARLIEST_TIMESTAMP <= parsed < LATEST_TIMESTAMP:
        raise ValueError(f"timestamp {parsed.isoformat()} is outside 2000-01-01..2100-01-01")
    return parsed


def to_epoch_ms(moment: datetime) -> int:
    # not `(moment - EPOCH) // timedelta(milliseconds=1)`: the same integer, but CPython makes it
    # from Python ints of microseconds, 1,300 instructions an event more than this, compiled
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000 + delta.microseconds // 1_000


def from_epoch_ms(ms: int) -> datetime:
    if 0 <= ms < _EXACT_FLOAT_MS:
        # a double holds ms / 1000 within 0.25 us below 2^32 s, and fromtimestamp rounds to the
        # microsecond: exact, and half the cost of the timedelta sum
        return _fromtimestamp(ms / 1000, UTC)
    return EPOCH + timedelta(milliseconds=ms)


def nesting_depth(value: Any, limit: int = 1_000_000) -> int:
    """How deep dicts and lists nest (a scalar is 0), counted without recursion, so that no
    input can exhaust the stack; stops counting once past `limit`.

    Level by level: only the containers of each level are kept for the next, so the scalars
    that make up most of an event cost one isinstance each."""
    if not isinstance(value, _CONTAINERS):
        return 0
    depth = 1
    level: list[Any] = [value]
    while depth <= limit:
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, _CONTAINERS)
        ]
        if not level:
            return depth
        depth += 1
    return depth


def within_nesting(raw: bytes, limit: int) -> bool:
    """Whether `raw`, whatever JSON it holds, cannot nest deeper than `limit`: each level needs an
    opening bracket, so a message with at most `limit` of them (counting those inside strings,
    which only makes the bound safer) needs no walk. Two C-speed scans of the bytes."""
    return raw.count(b"{") + raw.count(b"[") <= limit


def two_deep(value: dict[str, Any]) -> bool:
    """Whether a JSON object nests at most two levels below itself (a container in it holds no
    container): an ordinary event, told without counting its depth level by level. Two
    `isinstance` of one type each: compiled, a type flag's test, where one of the `_CONTAINERS`
    tuple is a generic call (the walk at less than half the cost)."""
    for child in value.values():
        if isinstance(child, dict):
            for grandchild in child.values():
                if isinstance(grandchild, dict) or isinstance(grandchild, list):  # noqa: SIM101
                    return False
        elif isinstance(child, list):
            for grandchild in child:
                if isinstance(grandchild, dict) or isinstance(grandchild, list):  # noqa: SIM101
                    return False
    return True


def shallow(value: dict[str, Any]) -> bool:
    """A dict whose values hold no container nests one level: the common case, checked first."""
    for child in value.values():  # noqa: SIM110 (a loop: all() over a generator costs twice as much)
        if isinstance(child, _CONTAINERS):
            return False
    return True


def shallow_enough(value: dict[str, Any], context: Any) -> dict[str, Any]:
    """`context` or `properties` as validated: refused nested deeper than the validation
    context's `max_nesting` (input being decoded); without one (an event the engine re-reads
    from its own topics, checked when it came in), as it is."""
    limit = context.get("max_nesting") if context else None
    if limit is not None and not shallow(value) and nesting_depth(value, limit) > limit:
        raise ValueError(f"nested deeper than {limit} levels")
    return value


def checked_nesting(value: dict[str, Any], info: Any) -> dict[str, Any]:
    """`shallow_enough` as pydantic calls a field's validator (`info`: its ValidationInfo)."""
    return shallow_enough(value, info.context)


_UTM_FIELDS: Final = ("source", "medium", "name", "term", "content")
_UTM_PARAMS: Final = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def utm_values(url: str | None) -> dict[str, str]:
    """The campaign fields a page URL's utm_* parameters give (each cut to 256 characters)."""
    if not url or "utm_" not in url:
        return {}
    found = first_values(urlsplit(url).query, _UTM_PARAMS)
    return {f: found[p][:256] for f, p in zip(_UTM_FIELDS, _UTM_PARAMS, strict=True) if p in found}


def first_values(query: str, names: tuple[str, ...]) -> dict[str, str]:
    """`{name: parse_qs(query)[name][0]}` for the `names` the query has: the same splitting on
    `&`, `+` as a space, percent-decoding (UTF-8, errors replaced), blank values left out."""
    found: dict[str, str] = {}
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if not equals or not value:
            continue
        name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name)
        if name in names and name not in found:
            value = value.replace("+", " ")
            found[name] = unquote(value) if "%" in value else value
    return found


def url_path(url: str | None) -> str | None:
    """The path of a URL, which is what landing pages and `url` globs are about."""
    if not url:
        return None
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return None


def settled(event: Any) -> Any:
    """A validated event completed, as pydantic calls a model's validator (after the fields): one
    of the ids is required, the campaign derived from the page's utm_* parameters when absent
    (made by the event class's `campaign_model`, looked up only then), and the event time in epoch
    milliseconds kept as `ts_ms` in its `__dict__` (a plain attribute, read often). A plain
    function of the event, so that pydantic calls compiled code directly (a `functools.partial`
    binding the model cost 700 instructions an event more)."""
    data = event.__dict__
    if data["user_id"] is None and data["anonymous_id"] is None:
        raise ValueError("one of user_id or anonymous_id is required")
    page = data["page"]
    if data["campaign"] is None and page is not None:
        url = page.url
        if url and "utm_" in url:
            values = utm_values(url)
            if values:
                data["campaign"] = campaign_of(type(event).campaign_model, values)
    data["ts_ms"] = to_epoch_ms(data["timestamp"])
    return event


def campaign_of(model: Any, values: dict[str, str]) -> Any:
    """`model(**values)` (the `Campaign` model) for the fields `utm_values` gives, built as its
    validation leaves it (pydantic's own slots) without validating: each value is a string of at
    most 256 characters, which the model takes as it is. A twelfth of the cost."""
    get = values.get
    fields = {
        "source": get("source"),
        "medium": get("medium"),
        "name": get("name"),
        "term": get("term"),
        "content": get("content"),
    }
    return assemble(model, fields, set(values), {})


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    """The value at a dotted field path such as ("properties", "category") of a model, or None."""
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, BaseModel):
            value = getattr(value, part, None)
        else:
            return None
        if value is None:
            return None
    return value


def text_values(fields: dict[str, Any]) -> dict[str, str]:
    """An audience's set fields as breakdown values (`bot` only when true)."""
    out = {k: v for k, v in fields.items() if isinstance(v, str)}
    if fields["bot"]:
        out["bot"] = "true"
    return out
