"""Which input format a message is in, and which format each clickstream topic declares.

Detection has to be free for our own JSON, which is most traffic: a message whose first byte
opens a JSON value is JSON, and a JSON object with an `event_id` is ours, so our events pay one
byte comparison and one dict lookup. Only what is left is looked at more closely:

- a Segment-spec message or batch is a JSON object without `event_id` that has a Segment `type`,
  a `messageId`, an `anonymousId` or `userId`, or a `batch` (an array of messages is told by
  its first element);
- a Snowplow enriched event is text that does not open a JSON value and has a tab in it;
- everything else is read as our JSON, whose errors then say what is wrong with it.

A topic can also declare its format (`CONVERSIONS_INPUT_FORMAT`), which skips the guessing and
makes a message in another format a rejection that names the declared format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from streams.errors import ConversionsError

InputFormat = Literal["auto", "contract", "segment", "snowplow"]
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)
JSON_OPENERS = (b"{", b"[")
SEGMENT_TYPES = frozenset(("track", "page", "screen", "identify", "alias", "group"))


def looks_like_segment(obj: Any) -> bool:
    """A JSON object that is a Segment-spec message or batch rather than our own event."""
    return (
        isinstance(obj, dict)
        and "event_id" not in obj
        and (
            (isinstance(kind := obj.get("type"), str) and kind in SEGMENT_TYPES)
            or "messageId" in obj
            or "anonymousId" in obj
            or "userId" in obj
            or "batch" in obj
        )
    )


def looks_like_tsv(raw: bytes) -> bool:
    """Text with a tab that does not open a JSON value (leading whitespace allowed, as JSON does)."""
    return b"\t" in raw and raw.lstrip()[:1] not in JSON_OPENERS


def sniff(raw: bytes) -> Literal["json", "snowplow"]:
    """The family of a raw message before parsing: JSON (contract or Segment) or Snowplow TSV."""
    return "json" if raw[:1] in JSON_OPENERS or not looks_like_tsv(raw) else "snowplow"


class InputFormatError(ConversionsError, ValueError):
    """A `CONVERSIONS_INPUT_FORMAT` value that cannot be used; the message says why."""


def parse_input_formats(spec: str, topics: Iterable[str] | None = None) -> dict[str | None, InputFormat]:
    """`CONVERSIONS_INPUT_FORMAT`: one format for every topic (`auto`, the default, `contract`,
    `segment` or `snowplow`), or per topic, `clickstream=segment,snowplow-enriched=snowplow`, which
    may start with a default for the others: `contract,snowplow-enriched=snowplow`.

    Returns {None: default, topic: format, ...}. With `topics`, a named topic that is not one of
    them is refused: a typo would otherwise leave the real topic on auto-detection unnoticed.
    """
    formats: dict[str | None, InputFormat] = {None: "auto"}
    known = set(topics) if topics is not None else None
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    for position, part in enumerate(parts):
        topic, sep, name = part.rpartition("=")
        name = name.strip()
        if name not in INPUT_FORMATS:
            raise InputFormatError(f"{part!r}: the format must be one of {', '.join(INPUT_FORMATS)}")
        if not sep:
            if position != 0:
                raise InputFormatError(f"{part!r}: a format for every topic must come first")
            formats[None] = name
            continue
        topic = topic.strip()
        if not topic:
            raise InputFormatError(f"{part!r}: the topic name is empty")
        if topic in formats:
            raise InputFormatError(f"{part!r}: topic {topic!r} is given twice")
        if known is not None and topic not in known:
            raise InputFormatError(
                f"{part!r}: {topic!r} is not a clickstream topic ({', '.join(sorted(known))})"
            )
        formats[topic] = name
    return formats


def format_for(formats: Mapping[str | None, InputFormat], topic: str) -> InputFormat:
    """The format a topic's messages are read in."""
    return formats.get(topic) or formats.get(None) or "auto"
