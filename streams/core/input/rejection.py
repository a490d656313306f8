"""What decoding gives back: the events, and the input that could not become one with a
machine-readable reason (the dead letters' source). Every format's decoder returns these.

Both are made for every line read, and compiled (`streams.compiled.MODULES`): each writes its
own `__init__`, which mypyc compiles, where the one `dataclass` generates would run as
interpreted Python (mypyc leaves the generated methods to the `dataclasses` module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from streams.core.input.event import ClickEvent

RejectReason = Literal[
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "empty_batch",
    "batch_too_large",
    "too_deeply_nested",
    "invalid_event",
    "late_event",
    "future_timestamp",
    "invalid_tsv",
    # a Kafka record batch the client could not decode (`kafka.undecodable`)
    "unsupported_codec",
    "crc_mismatch",
    "corrupt_batch",
    "truncated_batch",
]


@dataclass(slots=True, init=False)
class Rejection:
    """Input that could not become an event, with a machine-readable reason."""

    reason: RejectReason
    detail: str
    original: bytes
    index: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    format: str = "contract"
    """The format the input was read as, which `detail` starts with: contract, segment, snowplow,
    or json (in auto mode, input that is not even valid JSON, so neither contract nor segment)."""

    def __init__(
        self,
        reason: RejectReason,
        detail: str,
        original: bytes,
        index: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        format: str = "contract",
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.original = original
        self.index = index
        self.errors = [] if errors is None else errors
        self.format = format


@dataclass(slots=True, init=False)
class Decoded:
    events: list[ClickEvent] = field(default_factory=list)
    rejects: list[Rejection] = field(default_factory=list)
    ignored: int = 0
    """Valid input that carries nothing for the engine (a Segment `group` call), counted."""
    unknown_fields: dict[str, int] = field(default_factory=dict)
    """Top-level fields of valid contract events that the contract does not have, by name: the
    events are processed without them (a typo such as `propertys` is counted and named)."""
    format: str = "contract"
    screened: dict[str, int] = field(default_factory=dict)
    """Valid events not processed, by reason (`input.audience`: bot, consent, erased), counted."""

    def __init__(
        self,
        events: list[ClickEvent] | None = None,
        rejects: list[Rejection] | None = None,
        ignored: int = 0,
        unknown_fields: dict[str, int] | None = None,
        format: str = "contract",
        screened: dict[str, int] | None = None,
    ) -> None:
        self.events = [] if events is None else events
        self.rejects = [] if rejects is None else rejects
        self.ignored = ignored
        self.unknown_fields = {} if unknown_fields is None else unknown_fields
        self.format = format
        self.screened = {} if screened is None else screened
