"""Offline mode (CONTRACT section 4): the same engine over an NDJSON file, no Kafka, in event time."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from streams.core.alerts import MINUTE_MS, AlertEvaluator
from streams.core.deadletter import dead_letter
from streams.core.engine import Engine
from streams.core.events import decode_message, from_epoch_ms
from streams.core.experiments import ExperimentEvaluator
from streams.core.matching import CompiledConfig
from streams.core.outputs import OutputEvent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class OfflineRun:
    """Feeds lines through decoding and the engine exactly as ingest + journeys do on Kafka."""

    config: CompiledConfig
    partitions: int
    source: str = "offline"
    max_message_bytes: int = 1_000_000
    max_batch_events: int = 10_000
    latest_ms: int | None = None  # events stamped later are refused, as `max_future_skew_s` does on Kafka
    store: dict[str, bytes] = field(default_factory=dict)
    cache_journeys: int = 20_000
    """The engine keeps the journeys it touches decoded until this many, then writes the changed
    ones to `store` (once each) and starts again; and at the end of `run` and `flush`."""
    lines: int = 0
    events: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        self.engine = Engine(self.config, self.store, self.partitions, expected_sources=[self.source])
        self.alerts = AlertEvaluator(self.config)
        self.experiments = ExperimentEvaluator(self.config)
        self._latest_ms: int | None = None
        self._judged_minute: int | None = None

    def feed(self, line: bytes) -> list[OutputEvent]:
        """One NDJSON line, which is one Kafka message value: an event or a batch array."""
        self.lines += 1
        if not line.strip():
            return []
        decoded = decode_message(
            line.rstrip(b"\r\n"),
            max_bytes=self.max_message_bytes,
            max_batch=self.max_batch_events,
            latest_ms=self.latest_ms,
        )
        out: list[OutputEvent] = []
        if decoded.rejects:
            moment = from_epoch_ms(self._latest_ms) if self._latest_ms is not None else EPOCH
        for rejection in decoded.rejects:
            self.rejected += 1
            out.append(
                dead_letter(
                    rejection,
                    source_topic=self.source,
                    source_partition=None,
                    source_offset=self.lines,
                    timestamp=moment,
                )
            )
        for event in decoded.events:
            self.events += 1
            self._latest_ms = max(self._latest_ms or event.ts_ms, event.ts_ms)
            out.extend(self.engine.process(event))
        if self._latest_ms is not None:
            for partition in range(self.partitions):
                out.extend(self.engine.observe(partition, self.source, self._latest_ms))
        if self.engine.cached >= self.cache_journeys:
            self.engine.flush()
        return self._with_alerts(out)

    def _with_alerts(self, out: list[OutputEvent]) -> list[OutputEvent]:
        """Alerts and experiments judge the microconversions, minute by minute of event time."""
        evaluators = [e for e in (self.alerts, self.experiments) if e.active]
        if not evaluators or self._latest_ms is None:
            return out
        # the fields as they are (what model_dump() would copy): the evaluators only read them
        micro = [output.__dict__ for output in out if output.type == "micro"]
        watermark = self._latest_ms - self.config.late_tolerance
        minute = watermark // MINUTE_MS
        if not micro and minute == self._judged_minute:
            return out  # they judge whole minutes: with nothing new and none complete, nothing to do
        self._judged_minute = minute
        judged: list[OutputEvent] = []
        for evaluator in evaluators:
            for output in micro:
                evaluator.observe(output)
            judged.extend(evaluator.advance(watermark))
        return out + judged

    def run(self, lines: Iterable[bytes]) -> Iterator[OutputEvent]:
        for line in lines:
            yield from self.feed(line)
        self.engine.flush()

    def flush(self) -> list[OutputEvent]:
        """Let event time run out: close every open session and attempt (end of history)."""
        out: list[OutputEvent] = []
        far_future = 4_102_444_800_000  # 2100-01-01
        for partition in range(self.partitions):
            out.extend(self.engine.observe(partition, self.source, far_future + self.config.late_tolerance))
        self.engine.flush()
        return out


def open_input(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else open(path, "rb")
