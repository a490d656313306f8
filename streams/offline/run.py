"""Offline mode (CONTRACT section 4): the same engine over an NDJSON file, no Kafka, in event time.

A line is one Kafka message value. After each line the engine observes the file's event time so
far (the latest valid event's time), which fires the deadlines it makes due, and the alert and
experiment evaluators judge that line's microconversions. `streams.offline.parallel` runs the same
`apply_line` on several processes, each for its share of the people, with the same event times.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from streams.core.config.matching import CompiledConfig
from streams.core.input.audience import EnrichmentSpec
from streams.core.input.deadletter import dead_letter, placed
from streams.core.input.decode import decode_message
from streams.core.input.event import MAX_NESTING, ClickEvent, from_epoch_ms
from streams.core.input.rejection import Rejection
from streams.core.journeys.engine import Engine
from streams.core.measures.alerts import AlertEvaluator
from streams.core.measures.cardinality import BREAKDOWN_CAP
from streams.core.measures.experiments import ExperimentEvaluator
from streams.core.measures.rule_state import MINUTE_MS
from streams.core.records.outputs import OutputEvent
from streams.core.records.trusted import to_line
from streams.offline.summary import FunnelCounts

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


class Judges:
    """The alert and experiment evaluators, fed as offline mode feeds them: after each line, that
    line's microconversions, then the line's event time less the late tolerance."""

    def __init__(self, config: CompiledConfig, breakdown_cap: int = BREAKDOWN_CAP) -> None:
        self.late_tolerance = config.late_tolerance
        self.alerts = AlertEvaluator(config, by_cap=breakdown_cap)
        self.experiments = ExperimentEvaluator(config, max_variants=breakdown_cap)
        self.evaluators: list[AlertEvaluator | ExperimentEvaluator] = [
            e for e in (self.alerts, self.experiments) if e.active
        ]
        self._judged_minute: int | None = None

    def after_line(self, micro: Sequence[Mapping[str, Any]], latest_ms: int) -> list[OutputEvent]:
        if not self.evaluators:
            return []
        watermark = latest_ms - self.late_tolerance
        minute = watermark // MINUTE_MS
        if not micro and minute == self._judged_minute:
            return []  # they judge whole minutes: with nothing new and none complete, nothing to do
        self._judged_minute = minute
        # each output to every evaluator in turn (each still sees them in order, and advances
        # after all of them): 6.9 M instructions less on the bench's 40k lines than evaluator by
        # evaluator (bench/README.md, issue 30, session 7)
        evaluators = self.evaluators
        for output in micro:
            for evaluator in evaluators:
                evaluator.observe(output)
        judged: list[OutputEvent] = []
        for evaluator in evaluators:
            judged.extend(evaluator.advance(watermark))
        return judged

    def finish(self, micro: Sequence[Mapping[str, Any]], latest_ms: int | None) -> list[OutputEvent]:
        """The end of the input (`--flush`): the microconversions the flush released, then every
        minute up to the input's latest event judged (the late tolerance waits for nothing
        more), then each experiment's final state."""
        if not self.evaluators or latest_ms is None:
            return []
        end = (latest_ms // MINUTE_MS + 1) * MINUTE_MS
        self._judged_minute = end // MINUTE_MS
        judged: list[OutputEvent] = []
        for evaluator in self.evaluators:
            for output in micro:
                evaluator.observe(output)
            judged.extend(evaluator.advance(end))
        judged.extend(self.experiments.final(end))
        return judged


@dataclass
class OfflineRun:
    """Feeds lines through decoding and the engine exactly as ingest + journeys do on Kafka."""

    config: CompiledConfig
    partitions: int
    source: str = "offline"
    max_message_bytes: int = 1_000_000
    max_batch_events: int = 10_000
    max_nesting: int = MAX_NESTING
    breakdown_cap: int = BREAKDOWN_CAP
    latest_ms: int | None = None  # events stamped later are refused, as `max_future_skew_s` does on Kafka
    store: dict[str, bytes] = field(default_factory=dict)
    cache_journeys: int = 100_000
    """The engine keeps the journeys it touches decoded until this many, then writes the changed
    ones to `store` (once each) and starts again; and at the end of `run` and `flush`. A journey
    written is decoded again when its person comes back: at 20,000 the bench's 163k events
    (28,316 people) were written mid-run and read back; at 100,000 never before the end, for a
    peak RSS 9 MB higher (2 MB with `--flush`; bench/README.md, issue 30, session 6)."""
    enrichment: EnrichmentSpec | None = None
    """Audience enrichment, the IP mode and the screens, as ingest applies them (None: none)."""
    lines: int = 0
    events: int = 0
    rejected: int = 0
    """Dead letters written: the lines' rejections and the events the engine refused (late)."""
    unknown_fields: dict[str, int] = field(default_factory=dict)
    """Top-level fields the contract does not have, by name, with the events that carried them."""
    counts: FunnelCounts = field(default_factory=FunnelCounts)
    """Per funnel version, the attempts the engine's outputs opened, completed and dropped."""
    screened: dict[str, int] = field(default_factory=dict)
    """Valid events not processed, by reason (bot, consent, erased)."""
    earliest_ms: int | None = None
    """The earliest valid event's time (how far back a history reaches: `deploy --history`)."""
    judge: bool = True
    """False: the alert and experiment evaluators do not run (`deploy --history`, whose generation
    judges again from the microconversions)."""

    def __post_init__(self) -> None:
        self.enricher = self.enrichment.build() if self.enrichment is not None else None
        self.engine = Engine(self.config, self.store, self.partitions, expected_sources=[self.source])
        self.judges = Judges(self.config, self.breakdown_cap)
        self.alerts = self.judges.alerts
        self.experiments = self.judges.experiments
        self._latest_ms: int | None = None
        self._observed: int | None = None

    def feed(self, line: bytes) -> list[OutputEvent]:
        """One NDJSON line, which is one Kafka message value: an event or a batch array."""
        self.lines += 1
        raw = line.rstrip(b"\r\n")
        if not raw or raw.isspace():  # blank (what `line.strip()` would copy the line to tell)
            return []
        decoded = decode_message(
            raw,
            max_bytes=self.max_message_bytes,
            max_batch=self.max_batch_events,
            max_nesting=self.max_nesting,
            latest_ms=self.latest_ms,
            enricher=self.enricher,
        )
        for name, count in decoded.unknown_fields.items():
            self.unknown_fields[name] = self.unknown_fields.get(name, 0) + count
        for reason, count in decoded.screened.items():
            self.screened[reason] = self.screened.get(reason, 0) + count
        latest, first = self._latest_ms, None
        for event in decoded.events:
            at = event.ts_ms
            if latest is None or at > latest:
                latest = at
            if first is None or at < first:
                first = at
        if first is not None and (self.earliest_ms is None or first < self.earliest_ms):
            self.earliest_ms = first
        out = self.apply_line(self.lines, decoded.events, decoded.rejects, self._latest_ms, latest, raw)
        if latest is None or not self.judge:
            return out
        # the fields as they are (what model_dump() would copy): the evaluators only read them.
        # The type read from them too: an attribute of a pydantic model costs ~340 instructions
        micro = [fields for fields in [o.__dict__ for o in out] if fields["type"] == "micro"]
        return out + self.judges.after_line(micro, latest)

    @property
    def latest_event_ms(self) -> int | None:
        """The latest valid event's time so far (the run's event time)."""
        return self._latest_ms

    def apply_line(
        self,
        line: int,
        events: Sequence[ClickEvent],
        rejects: Sequence[Rejection],
        before: int | None,
        after: int | None,
        raw: bytes | None = None,
    ) -> list[OutputEvent]:
        """Line number `line`'s dead letters and events, then event time moved to `after`;
        `raw`, the line itself, is what an event the engine refuses is dead-lettered with.

        `before` and `after` are the file's event time before and after the line (None until a
        valid event has come). A process given only some of the file's people (`streams.offline.parallel`)
        first catches up with `before`, which the lines it skipped had reached."""
        out: list[OutputEvent] = []
        if before is not None and before != self._observed:
            out += self._observe(before)
        if rejects:
            moment = from_epoch_ms(before) if before is not None else EPOCH
            for rejection in rejects:
                self.rejected += 1
                out.append(
                    dead_letter(
                        rejection,
                        source_topic=self.source,
                        source_partition=None,
                        source_offset=line,
                        timestamp=moment,
                    )
                )
        for event in events:
            self.events += 1
            produced = self.engine.process(event, source=(self.source, None, line))
            if produced:
                # the engine refuses some events too (late_event): they are rejected as well
                refused = sum(1 for output in produced if output.type == "deadletter")
                if refused:
                    self.rejected += refused
                    produced = placed(produced, self.source, None, line, raw)
                out.extend(produced)
        self._latest_ms = after
        if after is not None:
            out += self._observe(after)
        if self.engine.cached >= self.cache_journeys:
            self.engine.flush()
        self.counts.add_outputs(out)
        return out

    def catch_up(self, latest: int | None) -> list[OutputEvent]:
        """Event time moved to `latest` on lines this process did not apply (the end of a share)."""
        self._latest_ms = latest
        out = self._observe(latest) if latest is not None and latest != self._observed else []
        self.counts.add_outputs(out)
        return out

    def _observe(self, event_time: int) -> list[OutputEvent]:
        self._observed = event_time
        return self.engine.observe_all(self.source, event_time)

    def run(self, lines: Iterable[bytes]) -> Iterator[OutputEvent]:
        for line in lines:
            yield from self.feed(line)
        self.engine.flush()

    def write(self, lines: Iterable[bytes], out: BinaryIO, flush: bool = False) -> None:
        """`run` (and `flush`), each line's outputs written as NDJSON in one call (gathering the
        lines of many input lines per write was measured and bought nothing).

        The journeys the run changed last stay in the engine's cache, not written to `store`:
        whatever reads the store flushes the engine first (`state.write` does); a run with no
        state file would encode every journey once more at its end for nobody."""
        for line in lines:
            outputs = self.feed(line)
            if outputs:
                out.write(b"".join([to_line(output) for output in outputs]))
        if flush:
            out.write(b"".join([to_line(output) for output in self.flush(save=False)]))

    def flush(self, judge: bool = True, save: bool = True) -> list[OutputEvent]:
        """Let event time run out: close every open session and attempt (end of history), then
        (`judge`) let the evaluators judge the input to its end (`Judges.finish`); `save`: the
        journeys written to `store` (`Engine.flush`), False when nothing reads it."""
        out = self._observe(FAR_FUTURE_MS + self.config.late_tolerance)
        if save:
            self.engine.flush()
        self.counts.add_outputs(out)
        if judge:
            out += self.judges.finish(milestones(out), self._latest_ms)
        return out


def milestones(outputs: Iterable[OutputEvent]) -> list[dict[str, Any]]:
    """What the evaluators read: the milestone microconversions' fields, as they are."""
    return [o.__dict__ for o in outputs if o.type == "micro" and o.__dict__["kind"] == "milestone"]


def open_input(path: str) -> BinaryIO:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


WRITE_BLOCK = 1 << 20
"""Outputs reach a regular file in blocks of this size. Written a line at a time (as
`PYTHONUNBUFFERED=1`, common in container images, makes standard output) or in Python's 8 KiB
blocks, the bench's 111 MB of outputs cost 0.2-0.5 s more CPU, 5-12 % of the compiled run
(bench/README.md, issue 30, session 7)."""


def open_output() -> BinaryIO:
    """Standard output for the outputs' NDJSON. A regular file is written in `WRITE_BLOCK`s, even
    with `PYTHONUNBUFFERED` (the file is whole when the command ends); a pipe or a terminal, and a
    stream that is no file's (a test's), as Python's settings buffer them, so that a reader
    downstream gets outputs as they come. The caller flushes it; it leaves standard output open."""
    sys.stdout.flush()
    buffer = sys.stdout.buffer
    raw = getattr(buffer, "raw", buffer)  # unbuffered: the buffer is the file itself
    if not isinstance(raw, io.FileIO) or not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
        return buffer
    return open(raw.fileno(), "wb", buffering=WRITE_BLOCK, closefd=False)
