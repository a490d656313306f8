"""`deploy --history FILES`: history older than Kafka keeps, read from archived exports by offline
mode, then handed over to a new generation that continues from the Kafka offsets after the archive.

The hand-off point is a set of recorded offsets, one per clickstream partition (`--history-offsets`,
the offset of the first record *not* in the archive), not an event time: an exporter knows exactly
which records it wrote, while event time is no order at all across partitions (ties, late and
out-of-order events), so a cut by time could count an event on both sides or on neither.

The offline run (`OfflineRun`, the engine of `conversions process --state`, over the files in
order as one run) leaves what a worker of the new generation would have had after reading the
archive itself, and the hand-off gives it exactly that:

- the journeys, in the generation's journeys changelog, keyed and encoded as the journeys table
  writes them (a JSON string key, the journey's own bytes), each in its identity's partition, so
  Faust's recovery restores them;
- per journeys partition and clickstream partition, an applied marker (`core.markers`) at the seam
  offset less one with the offline run's event time as the source's watermark: a recovered
  partition is reminded that every source has reached it (deadlines it made due have fired
  offline already, and fire nowhere again), and a clickstream record before the seam, read again,
  is skipped;
- the offline run's outputs on the generation's own output topics (keyed by identity, in the
  identity's partition, with each micro partition's watermark on its last record), so its
  counters and its alert and experiment evaluators read them like any other: the offline run
  judges no alerts or experiments (`OfflineRun.judge`), those evaluators judge them from the
  microconversions;
- the generation's ingest group's committed offsets at the seam, so its workers read the
  clickstream from there on; the seam is checked against what Kafka keeps again just before (the
  offline run may have lasted hours, and retention may have deleted records after the seam
  meanwhile): if it no longer meets it, `HistoryError`, nothing committed.

Until all of it is written the generation is recorded as `pending` and its workers are refused.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import TopicPartition

from streams.core.config.matching import CompiledConfig
from streams.core.journeys.engine import partition_for
from streams.core.journeys.markers import applied_marker, marker_value
from streams.core.records.outputs import OutputEvent
from streams.errors import ConversionsError
from streams.generations.naming import ingest_group
from streams.kafka.clients import new_consumer, new_producer
from streams.kafka.headers import WATERMARK_HEADER
from streams.kafka.retention import retained_range
from streams.kafka.topics import changelog_topic, ensure_topics
from streams.offline.run import OfflineRun
from streams.settings import Settings

NOT_COPIED = frozenset({"alert", "experiment"})
"""Output types the generation's own evaluators make again from the microconversions (the offline
run does not judge: `OfflineRun.judge`)."""
SOURCE = "history"


class HistoryError(ConversionsError, ValueError):
    """Archived history that cannot be handed over as given (the message says why)."""


def read_offsets(path: Path) -> dict[str, int]:
    """The hand-off offsets: a JSON object `{"<topic>/<partition>": <first offset not archived>}`."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise HistoryError(f"{path}: unreadable offsets file ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and "/" in k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise HistoryError(
            f'{path}: not an offsets file: expected a JSON object of "<topic>/<partition>": <offset> '
            "(the first offset not in the archive, per clickstream partition)"
        )
    return dict(data)


def check_offsets(offsets: dict[str, int], retained: dict[str, tuple[int, int]]) -> list[str]:
    """What is wrong with the hand-off offsets against the clickstream partitions' retained
    `(first, end)` offsets: a partition not named, one that does not exist, a gap between the
    archive and what Kafka still holds, an offset past the end."""
    problems = [f"{name}: not in the offsets file" for name in sorted(set(retained) - set(offsets))]
    problems += [f"{name}: no such clickstream partition" for name in sorted(set(offsets) - set(retained))]
    for name, offset in sorted(offsets.items()):
        if name not in retained:
            continue
        first, end = retained[name]
        if offset < first:
            problems.append(
                f"{name}: the archive ends at offset {offset} but Kafka keeps only from {first}: "
                f"records {offset}..{first - 1} are in neither"
            )
        elif offset > end:
            problems.append(f"{name}: offset {offset} is past the partition's end ({end})")
    return problems


@dataclass
class History:
    """The offline run over the archive, its outputs spooled to a file."""

    run: OfflineRun
    spool: Path
    outputs: int = 0

    def watermark(self, partition: int) -> int | None:
        return self.run.engine.watermark(partition)


def run_history(
    settings: Settings, config: CompiledConfig, files: Iterable[Path], spool_dir: Path
) -> History:
    """Offline mode over `files` in order, as one run (what `conversions process --state` gives
    file by file), with the worker's partition count and input settings. The outputs go to a
    spool file, not memory: an archive may be weeks long."""
    run = OfflineRun(
        config,
        settings.partitions,
        source=SOURCE,
        max_message_bytes=settings.max_message_bytes,
        latest_ms=settings.latest_accepted_ms(),
        max_batch_events=settings.max_batch_events,
        enrichment=settings.enrichment(),
        max_nesting=settings.max_nesting,
        breakdown_cap=settings.breakdown_cap,
        judge=False,
    )
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="history-", suffix=".ndjson", dir=spool_dir)
    history = History(run, Path(name))
    with os.fdopen(fd, "wb") as out:
        for path in files:
            with path.open("rb") as lines:
                for line in lines:
                    _spool(history, run.feed(line), out)
        run.engine.flush()
    return history


def _spool(history: History, outputs: list[OutputEvent], out: IO[bytes]) -> None:
    kept = [o for o in outputs if o.type not in NOT_COPIED]
    if kept:
        out.write(b"".join(o.to_json() + b"\n" for o in kept))
        history.outputs += len(kept)


async def hand_over(
    new: Settings, history: History, offsets: dict[str, int], say: Callable[[str], None]
) -> None:
    """Write the history into generation `new` (its settings): outputs, journeys and markers,
    ingest offsets (the module's docstring)."""
    await ensure_topics(new)
    producer = new_producer(new, acks="all")
    await producer.start()
    try:
        await _outputs(new, history, producer)
        journeys = await _journeys(new, history, offsets, producer)
    finally:
        await producer.stop()
    # checked again: retention may have deleted records past the seam while the offline run
    # lasted, and the ingest group (auto_offset_reset "earliest") would skip them silently
    lost = check_offsets(offsets, (await retained_range(new)).offsets)
    if lost:
        raise HistoryError(
            "the hand-off offsets no longer meet what Kafka keeps (retention may have deleted records "
            "after the seam while the history was read): " + "; ".join(lost)
        )
    await _commit_ingest(new, offsets)
    say(
        f"history handed over: {history.outputs} outputs on {new.app_id}'s topics, {journeys} journeys "
        f"in its changelog, its ingest continues at the offsets given"
    )


async def _outputs(new: Settings, history: History, producer: Any) -> None:
    """The spooled outputs, each keyed by identity in its identity's partition; the last micro
    record of each partition carries that partition's watermark (`streams.alerts.service`)."""
    partitions = new.partitions
    topic_of = new.output_topics
    last_micro: dict[int, int] = {}
    with history.spool.open("rb") as spool:
        for index, line in enumerate(spool):
            record = orjson.loads(line)
            if record["type"] == "micro":
                last_micro[_partition(record, partitions)] = index
    last = {index: partition for partition, index in last_micro.items()}
    sent = []
    with history.spool.open("rb") as spool:
        for index, line in enumerate(spool):
            raw = line.rstrip(b"\n")
            record = orjson.loads(raw)
            partition = _partition(record, partitions)
            identity = _identity(record)
            headers = None
            if index in last:
                watermark = history.watermark(partition)
                if watermark is not None:
                    headers = [(WATERMARK_HEADER, str(watermark).encode())]
            sent.append(
                await producer.send(
                    topic_of[record["type"]],
                    value=raw,
                    key=identity.encode() if identity is not None else None,
                    partition=partition,
                    headers=headers,
                )
            )
            if len(sent) >= 10_000:
                for future in sent:
                    await future
                sent.clear()
    for future in sent:
        await future


def _identity(record: dict[str, Any]) -> str | None:
    identity = record.get("user_id") or record.get("anonymous_id")
    return str(identity) if identity is not None else None


def _partition(record: dict[str, Any], partitions: int) -> int:
    identity = _identity(record)
    return partition_for(identity, partitions) if identity is not None else 0


async def _journeys(new: Settings, history: History, offsets: dict[str, int], producer: Any) -> int:
    """The journeys, then the applied markers after them, in the journeys changelog."""
    topic = changelog_topic(new, "journeys")
    partitions = new.partitions
    sent = []
    store = history.run.store
    for identity, journey in store.items():
        sent.append(
            await producer.send(
                topic,
                key=orjson.dumps(identity),
                value=journey,
                partition=partition_for(identity, partitions),
            )
        )
    for future in sent:
        await future
    reached = history.run.latest_event_ms
    markers = []
    for partition in range(partitions):
        for source, offset in sorted(offsets.items()):
            markers.append(
                await producer.send(
                    topic,
                    key=orjson.dumps(applied_marker(partition, source)),
                    value=marker_value(offset - 1, reached),
                    partition=partition,
                )
            )
    for future in markers:
        await future
    return len(store)


async def _commit_ingest(new: Settings, offsets: dict[str, int]) -> None:
    """The generation's ingest group committed at the seam."""
    seam = {TopicPartition(*_split(name)): offset for name, offset in offsets.items()}
    consumer = new_consumer(new, group_id=ingest_group(new))
    await consumer.start()
    try:
        consumer.assign(list(seam))
        await consumer.commit(seam)
    finally:
        await consumer.stop()


def _split(name: str) -> tuple[str, int]:
    topic, _, partition = name.rpartition("/")
    return topic, int(partition)


def discard(history: History) -> None:
    with contextlib.suppress(OSError):
        history.spool.unlink()
