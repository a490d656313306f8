"""The internal `clickstream.events` message: one source's events for one partition, the source
offset each came from, and how far that source has got in event time (its watermark), or that
it has gone idle.

    {"source": "clickstream/3", "offset": 812, "offsets": [809, 812], "watermark": 1710325274000,
     "events": [{...}, {...}]}
    {"source": "clickstream/3", "watermark": 1710325274000, "events": []}      (a heartbeat)
    {"source": "clickstream/3", "idle": true, "events": []}

The source offsets are what make a redelivery harmless: the journeys agent remembers, per
partition and source, the highest offset it has applied, and skips every event at or below
it. `offset` is the highest of them. A batch gathers several source messages, and a
redelivery after a crash may gather them differently, so each event carries its own offset
(an event without one has the batch's `offset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class RepartitionBatch:
    source: str
    watermark: int | None
    events: list[dict[str, Any]]
    idle: bool = False
    offset: int | None = None
    offsets: list[int] | None = None

    def event_offsets(self) -> list[int | None]:
        """The source offset of each event."""
        if self.offsets is not None:
            return list(self.offsets)
        return [self.offset] * len(self.events)

    def encode(self) -> bytes:
        body: dict[str, Any] = {"source": self.source, "events": self.events}
        if self.offset is not None:
            body["offset"] = self.offset
        if self.offsets is not None:
            body["offsets"] = self.offsets
        if self.idle:
            body["idle"] = True
        else:
            body["watermark"] = self.watermark
        return orjson.dumps(body)

    @classmethod
    def decode(cls, raw: bytes) -> RepartitionBatch:
        body = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("source"), str):
            raise ValueError("not a repartition batch")
        events = body.get("events") or []
        if not isinstance(events, list):
            raise ValueError("events must be a list")
        watermark = body.get("watermark")
        if watermark is not None and not isinstance(watermark, int):
            raise ValueError("watermark must be epoch milliseconds")
        offset = body.get("offset")
        if offset is not None and not isinstance(offset, int):
            raise ValueError("offset must be an integer")
        offsets = body.get("offsets")
        if offsets is not None and (
            not isinstance(offsets, list)
            or len(offsets) != len(events)
            or not all(isinstance(o, int) for o in offsets)
        ):
            raise ValueError("offsets must be one integer per event")
        return cls(body["source"], watermark, events, bool(body.get("idle", False)), offset, offsets)


@dataclass(slots=True)
class PendingBatch:
    """The events of one source for one partition, gathered from a run of source messages."""

    events: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    size: int = 0
    """Bytes of the source messages gathered: a bound on what the batch will weigh."""

    def add(self, events: list[dict[str, Any]], offset: int, size: int) -> None:
        self.events.extend(events)
        self.offsets.extend([offset] * len(events))
        self.size += size

    def build(self, source: str, watermark: int | None) -> RepartitionBatch:
        one_message = self.offsets[0] == self.offsets[-1]
        return RepartitionBatch(
            source,
            watermark,
            self.events,
            offset=self.offsets[-1],
            offsets=None if one_message else self.offsets,
        )


def source_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def source_of(source: str) -> tuple[str, int] | None:
    """The topic and partition of a `source_name` (None for another kind of source)."""
    topic, _, partition = source.rpartition("/")
    return (topic, int(partition)) if topic and partition.isdigit() else None
