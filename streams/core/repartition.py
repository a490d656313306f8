"""The internal `clickstream.events` message: one source's events for one partition, the offset of
the source message they came from, and how far that source has got in event time (its
watermark), or that it has gone idle.

    {"source": "clickstream/3", "offset": 812, "watermark": 1710325274000, "events": [{...}, ...]}
    {"source": "clickstream/3", "watermark": 1710325274000, "events": []}      (a heartbeat)
    {"source": "clickstream/3", "idle": true, "events": []}

The source offset is what makes a redelivery harmless: the journeys agent remembers, per
partition and source, the highest offset it has applied, and skips anything at or below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class RepartitionBatch:
    source: str
    watermark: int | None
    events: list[dict[str, Any]]
    idle: bool = False
    offset: int | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"source": self.source, "events": self.events}
        if self.offset is not None:
            body["offset"] = self.offset
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
        return cls(body["source"], watermark, events, bool(body.get("idle", False)), offset)


def source_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"
