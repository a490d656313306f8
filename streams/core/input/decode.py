"""Raw Kafka message values to events: detect the format, then decode with its mapping.

The dispatch sits above the event model and every format (`input.formats`), so the formats
import the model and never this module: our own JSON is read here, Segment messages and
Snowplow enriched TSV by their own decoders.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from streams.core.input.audience import Enricher
from streams.core.input.event import MAX_NESTING, SHALLOW_VALIDATOR, ClickEvent, nesting_depth, nesting_limit
from streams.core.input.fields import two_deep, within_nesting
from streams.core.input.formats.detect import JSON_OPENERS, InputFormat, looks_like_segment, looks_like_tsv
from streams.core.input.formats.segment import decode_segment
from streams.core.input.formats.snowplow import decode_snowplow
from streams.core.input.rejection import Decoded, Rejection, RejectReason


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in err["loc"]), "type": err["type"], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


_CONTEXTS: dict[int, dict[str, int]] = {}
"""`nesting_limit(n)` per limit, made once: the validation context of every event."""


def _validate_one(obj: Any, max_nesting: int = MAX_NESTING, ordinary: bool = False) -> ClickEvent | Rejection:
    """Validate one decoded JSON value; a Rejection comes back without its original bytes.
    `ordinary`: `obj`'s `context` and `properties` are known to nest within `max_nesting` (the
    message has few brackets, or the object nests as `fields.two_deep` allows)."""
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"contract: expected a JSON object, got {type(obj).__name__}", b"")
    if ordinary or two_deep(obj):
        try:
            # model_validate's own work, without its Python frame (pydantic's module is not compiled)
            return SHALLOW_VALIDATOR.validate_python(obj)  # type: ignore[no-any-return]
        except ValidationError:
            pass  # the contract's validator: its errors, and what only it takes (a mapping)
    try:
        context = _CONTEXTS.get(max_nesting) or _CONTEXTS.setdefault(max_nesting, nesting_limit(max_nesting))
        return ClickEvent.__pydantic_validator__.validate_python(obj, context=context)  # type: ignore[no-any-return]
    except ValidationError as exc:
        errors = _validation_errors(exc)
        detail = "contract: " + "; ".join(f"{e['loc'] or 'event'}: {e['msg']}" for e in errors)
        reason: RejectReason = "too_deeply_nested" if "nested deeper" in detail else "invalid_event"
        return Rejection(reason, detail, b"", None, errors)


def decode_message(
    raw: bytes | None,
    *,
    max_bytes: int = 1_000_000,
    max_batch: int = 10_000,
    latest_ms: int | None = None,
    format: InputFormat = "auto",
    max_nesting: int = MAX_NESTING,
    enricher: Enricher | None = None,
) -> Decoded:
    """Turn one Kafka message value (an event object or a batch array) into events and rejections.

    Never raises: every way the input can be wrong becomes a Rejection carrying the original bytes
    (for one bad element of a batch, that element re-encoded, with its index). An event stamped
    after `latest_ms` is refused: one bad client clock would otherwise move event time ahead and
    close everyone's sessions and funnels early.

    `format` is the topic's declared input format; "auto" reads our own JSON as before (an object
    with `event_id` costs one dict lookup more) and hands Segment messages and Snowplow enriched
    TSV to `input.formats`. `max_nesting` is how deep `context` and `properties` may nest
    (`CONVERSIONS_MAX_NESTING`).

    With an `enricher` (`input.audience`), every valid event gets its audience and the IP mode
    applied, and bots (by default), events whose consent denies analytics and erased people's
    are counted in `screened` and not returned.
    """
    out = _decode(raw, max_bytes, max_batch, format, max_nesting)
    if enricher is not None and out.events:
        enricher.apply(out)
    if latest_ms is None or all(event.ts_ms <= latest_ms for event in out.events):
        return out
    kept = Decoded(
        rejects=out.rejects,
        ignored=out.ignored,
        unknown_fields=out.unknown_fields,
        format=out.format,
        screened=out.screened,
    )
    for event in out.events:
        if event.ts_ms <= latest_ms:
            kept.events.append(event)
        else:
            moment = event.timestamp.isoformat()
            detail = f"{out.format}: timestamp {moment} is more than the allowed skew ahead of now"
            original = orjson.dumps(event.to_json_dict())
            kept.rejects.append(Rejection("future_timestamp", detail, original, format=out.format))
    return kept


EVENT_FIELDS = frozenset(ClickEvent.model_fields)
"""The contract's top-level fields; any other is ignored, and counted (a typo like `propertys`
would otherwise vanish without a trace)."""


def _count_unknown(out: Decoded, event: dict[str, Any]) -> None:
    for name in event.keys() - EVENT_FIELDS:
        out.unknown_fields[name] = out.unknown_fields.get(name, 0) + 1


def _not_utf8(raw: bytes) -> str | None:
    """Where a message stops being UTF-8, in the words a producer's developer can act on."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start} (0x{raw[exc.start]:02x})"
    return None


def _decode(
    raw: bytes | None,
    max_bytes: int,
    max_batch: int,
    fmt: InputFormat = "auto",
    max_nesting: int = MAX_NESTING,
) -> Decoded:
    raw = raw or b""
    if fmt == "snowplow" or (fmt == "auto" and raw[:1] not in JSON_OPENERS and looks_like_tsv(raw)):
        return decode_snowplow(raw, max_bytes=max_bytes, max_batch=max_batch, max_nesting=max_nesting)
    out = Decoded()
    if fmt != "contract":
        out.format = "json" if fmt == "auto" else fmt
    if len(raw) > max_bytes:
        detail = f"{out.format}: message is {len(raw)} bytes, the limit is {max_bytes}"
        out.rejects.append(Rejection("too_large", detail, raw, format=out.format))
        return out
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        reason: RejectReason = "invalid_json"
        if "UTF-8" in message:
            reason, message = "invalid_utf8", _not_utf8(raw) or message
        elif "depth limit" in message or "recursion" in message:
            reason = "too_deeply_nested"
        out.rejects.append(Rejection(reason, f"{out.format}: {message}", raw, format=out.format))
        return out
    # an object with `event_id` is ours (`looks_like_segment` says no to it), told here without
    # a call of that interpreted function per line
    if fmt != "contract" and (
        fmt == "segment"
        or (
            not (type(parsed) is dict and "event_id" in parsed)
            and looks_like_segment(parsed[0] if isinstance(parsed, list) and parsed else parsed)
        )
    ):
        return decode_segment(parsed, raw, max_batch=max_batch, max_nesting=max_nesting)
    out.format = "contract"
    # the event object, the batch array and properties nesting max_nesting deep; orjson refuses
    # past 1024 levels. An ordinary event (an object whose objects hold no container: two
    # levels, within any limit, as `outer` is at least 2) needs no walk level by level, told by
    # a look at its values (compiled, two fifths of the cost of counting the message's brackets);
    # nor does a message with at most max_nesting + 1 brackets, which cannot nest deeper than
    # either limit (`properties` sits inside the event's own)
    outer = max_nesting + 2
    ordinary = (isinstance(parsed, dict) and two_deep(parsed)) or within_nesting(raw, max_nesting + 1)
    if not ordinary and nesting_depth(parsed, outer) > outer:
        detail = f"contract: nested deeper than {outer} levels"
        out.rejects.append(Rejection("too_deeply_nested", detail, raw))
        return out
    if not isinstance(parsed, list):
        result = _validate_one(parsed, max_nesting, ordinary)
        if isinstance(result, ClickEvent):
            out.events.append(result)
            # the fields set are the contract's fields the object names: any other key is unknown
            if len(parsed) != len(result.__pydantic_fields_set__):
                _count_unknown(out, parsed)
        else:
            out.rejects.append(Rejection(result.reason, result.detail, raw, None, result.errors))
        return out
    if not parsed:
        out.rejects.append(Rejection("empty_batch", "contract: the batch array is empty", raw))
    elif len(parsed) > max_batch:
        detail = f"contract: {len(parsed)} events, the limit is {max_batch}"
        out.rejects.append(Rejection("batch_too_large", detail, raw))
    else:
        for index, obj in enumerate(parsed):
            result = _validate_one(obj, max_nesting, ordinary)
            if isinstance(result, ClickEvent):
                out.events.append(result)
                if len(obj) != len(result.__pydantic_fields_set__):
                    _count_unknown(out, obj)
            else:
                original = orjson.dumps(obj)
                out.rejects.append(Rejection(result.reason, result.detail, original, index, result.errors))
    return out
