"""Record batches the client cannot decode, skipped and reported instead of stopping a consumer.

aiokafka decodes a fetched record batch lazily, while `getmany` hands its records over: a batch
of a codec whose library is missing (`UnsupportedCodecError`), a CRC mismatch
(`CorruptRecordException`) or garbage inside the batch raises out of `getmany`, the position
stays before the batch, and the next call fetches and raises again: a poison pill that stops the
consumer, and the worker with it, on every restart. Records of the same fetch handed over in the
failing call are lost on top (aiokafka moves the position past them).

`GuardedConsumer` decodes each batch whole before aiokafka's own loop sees it (`_GuardedRecords`)
and puts one placeholder record in place of a batch that fails: its offset is the batch's first,
its value the batch's raw bytes, and its `checksum` (None for every real record of a v2 batch)
the `UndecodableBatch` that says why and which offsets it covers. aiokafka then moves the
position past the batch as after any other (the batch header, read without decompressing,
gives its last offset), so the consumer reads on and commits past it; `undecodable(record)`
tells the placeholder apart. What reads it dead-letters it (`dead_letter_of`).

This relies on aiokafka internals, which is why pyproject pins aiokafka's exact version and
tests/kafka/test_undecodable.py fails when an upgrade changes them: the fetcher builds its
records with the module name `aiokafka.consumer.fetcher.MemoryRecords` (replaced here, for
every client in the process, by `RawRecords`, which only keeps the raw bytes beside aiokafka's
own reader), stores each fetch in `Fetcher._records` as a `FetchResult` whose
`_partition_records` reads `_records` once iterated, and copies a record's `checksum` into the
`ConsumerRecord`. Faust's consumers are not guarded: a batch on our internal topics was written
by our own producer.
"""

from __future__ import annotations

import collections
import inspect
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import RecordTooLargeError, UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

from streams.core.input.deadletter import dead_letter
from streams.core.input.rejection import Rejection, RejectReason
from streams.core.records.outputs import DeadLetter, OutputEvent
from streams.kafka.clients import new_producer
from streams.kafka.one_join import send_one_join
from streams.metrics import Metrics
from streams.ports import Publisher
from streams.settings import Settings

log = logging.getLogger(__name__)

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_HEAD = struct.Struct(">qi")  # a batch's base offset and the length of what follows
_LOG_OVERHEAD = _HEAD.size
_V2_HEADER = 61  # the v2 batch header up to its record count
_V2 = struct.Struct(">qiibIhiqqqhii")  # base offset ... record count: read without decompressing
_LEGACY_MIN = 26  # the smallest v0 message with its offset and size


@dataclass(frozen=True, slots=True)
class UndecodableBatch:
    """A record batch skipped because it cannot be decoded, and why."""

    reason: RejectReason  # unsupported_codec | crc_mismatch | corrupt_batch | truncated_batch
    detail: str
    first_offset: int
    last_offset: int
    raw: bytes
    codec: str
    max_timestamp_ms: int | None = None

    def advice(self) -> str:
        """What an operator should do about it."""
        if self.reason == "unsupported_codec":
            return (
                f"install the {self.codec} codec library this client lacks (aiokafka reads snappy, lz4 and "
                "zstd through cramjam: pip install cramjam), then re-produce the batch from the dead "
                "letter's original_b64 (a whole record batch) or from the source producer"
            )
        return (
            "the producer or the broker wrote a damaged batch: check the producer's client and "
            "version; the dead letter holds what could be read of it (original_b64)"
        )


@dataclass(frozen=True, slots=True)
class _Placeholder:
    """What aiokafka's loop reads of an undecodable batch: one record standing for it."""

    offset: int
    timestamp: int | None
    checksum: UndecodableBatch
    timestamp_type: int = 0
    key: None = None
    value: bytes = b""
    headers: tuple[()] = ()


def undecodable(record: Any) -> UndecodableBatch | None:
    """The undecodable batch a record of `GuardedConsumer.getmany` stands for, else None."""
    checksum = record.checksum
    return checksum if type(checksum) is UndecodableBatch else None


class RawRecords:
    """aiokafka's `MemoryRecords`, with the fetched bytes kept for `_GuardedRecords`."""

    __slots__ = ("_records", "raw")

    def __init__(self, data: bytes) -> None:
        self.raw = data
        self._records = MemoryRecords(data)

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        return self._records.next_batch()

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())


aiokafka_fetcher.MemoryRecords = RawRecords


class _DecodedBatch:
    """A batch decoded whole (its CRC checked): aiokafka's loop reads its records from a list."""

    __slots__ = ("_batch", "_next", "_records")

    def __init__(self, batch: Any, records: list[Any]) -> None:
        self._batch = batch
        self._records = records
        self._next = iter(records)

    def validate_crc(self) -> bool:
        return True  # checked before

    def __iter__(self) -> Any:
        return self._next

    def __next__(self) -> Any:
        return next(self._next)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


class _UndecodedBatch:
    """An undecodable batch as aiokafka's loop sees it: its header, one placeholder record."""

    __slots__ = ("_placeholder", "_read", "base_offset", "is_transactional", "next_offset", "producer_id")

    is_control_batch = False  # a control batch is never compressed: its CRC failed, report it

    def __init__(self, info: UndecodableBatch, producer_id: int | None, transactional: bool) -> None:
        self._placeholder = _Placeholder(info.first_offset, info.max_timestamp_ms, info)
        self.base_offset = info.first_offset
        self.next_offset = info.last_offset + 1
        self.producer_id = producer_id
        self.is_transactional = transactional
        self._read = False

    def validate_crc(self) -> bool:
        return True

    def __iter__(self) -> _UndecodedBatch:
        return self

    def __next__(self) -> _Placeholder:
        if self._read:
            raise StopIteration
        self._read = True
        return self._placeholder


class _GuardedRecords:
    """aiokafka's record reader over one fetched partition's bytes, each batch decoded before it
    is handed on, a batch that fails replaced by an `_UndecodedBatch`."""

    def __init__(self, raw: bytes, fetch_offset: int, tp: TopicPartition | None = None) -> None:
        self.tp = tp
        self._raw = memoryview(raw)
        self._pos = 0
        self._fetch_offset = fetch_offset
        self._next: Any = None
        self._cache_next()

    def size_in_bytes(self) -> int:
        return len(self._raw)

    def has_next(self) -> bool:
        return self._next is not None

    def next_batch(self) -> Any:
        batch, self._next = self._next, None
        if batch is not None:
            self._cache_next()
        return batch

    def _cache_next(self) -> None:
        raw, pos = self._raw, self._pos
        if len(raw) - pos < _LOG_OVERHEAD:
            return  # a partial batch at the end of the fetch: aiokafka fetches it again
        base_offset, length = _HEAD.unpack_from(raw, pos)
        end = pos + _LOG_OVERHEAD + length
        if length < _LEGACY_MIN - _LOG_OVERHEAD:
            # a length no batch can have: what follows cannot be framed, skip to the fetch's end
            self._pos = len(raw)
            self._next = self._undecoded(
                "corrupt_batch", f"batch length {length} is impossible", raw[pos:], base_offset
            )
            return
        if end > len(raw):
            return  # partial: aiokafka's own rule (a batch larger than the fetch is its error)
        self._pos = end
        self._next = self._decode(raw[pos:end], base_offset)

    def _decode(self, data: memoryview, base_offset: int) -> Any:
        magic = data[16]
        if magic >= 2 and len(data) < _V2_HEADER:
            return self._undecoded("corrupt_batch", f"a v2 batch of {len(data)} bytes", data, base_offset)
        try:
            batch = DefaultRecordBatch(data) if magic >= 2 else LegacyRecordBatch(data, magic)
            if not batch.validate_crc():
                return self._undecoded(
                    "crc_mismatch", "the batch's CRC does not match its bytes", data, base_offset
                )
            if magic >= 2 and batch.is_control_batch:
                return batch  # aiokafka reads its marker itself
            return _DecodedBatch(batch, list(batch))
        except UnsupportedCodecError as exc:
            return self._undecoded("unsupported_codec", str(exc), data, base_offset)
        except Exception as exc:  # whatever a damaged batch makes the decoder raise
            return self._undecoded("corrupt_batch", f"{exc.__class__.__name__}: {exc}", data, base_offset)

    def _undecoded(
        self, reason: RejectReason, detail: str, data: memoryview, base_offset: int
    ) -> _UndecodedBatch:
        last_offset, codec, producer_id, transactional, max_ts = base_offset, "unknown", None, False, None
        if len(data) >= _V2_HEADER and data[16] >= 2:
            (_, _, _, _, _, attributes, delta, _, max_ts, producer_id, _, _, _) = _V2.unpack_from(data)
            last_offset = base_offset + max(0, delta)
            codec = CODECS.get(attributes & 0x07, f"codec {attributes & 0x07}")
            transactional = bool(attributes & 0x10)
            if producer_id < 0:
                producer_id = None
        info = UndecodableBatch(
            reason,
            detail,
            max(base_offset, min(self._fetch_offset, last_offset)),
            last_offset,
            bytes(data),
            codec,
            max_ts if max_ts is not None and max_ts >= 0 else None,
        )
        return _UndecodedBatch(info, producer_id, transactional)


class _GuardingResults(collections.OrderedDict[Any, Any]):
    """`Fetcher._records`: each fetched partition's reader guarded as it is stored."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if records is not None:
            _guard(records)
        super().__setitem__(tp, result)


def _guard(partition_records: Any) -> None:
    raw = partition_records._records
    iterator = partition_records._records_iterator
    if isinstance(raw, RawRecords) and inspect.getgeneratorstate(iterator) == inspect.GEN_CREATED:
        partition_records._records = _GuardedRecords(
            raw.raw, partition_records.next_fetch_offset, partition_records._tp
        )


class GuardedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """An aiokafka consumer that never stops on a batch it cannot decode: `getmany` hands over a
    placeholder record for it (`undecodable`), and a partition whose next batch is larger than
    the fetch allows or cut short (`RecordTooLargeError`) a placeholder for the offset aiokafka
    steps over."""

    async def start(self) -> None:
        await super().start()
        send_one_join(self)  # ingest lists two protocols (`kafka.one_join`)
        fetcher = self._fetcher
        guarded = _GuardingResults()
        for tp, result in fetcher._records.items():  # fetched during start: not read yet
            guarded[tp] = result
        fetcher._records = guarded

    def holds_fetched(self, tp: TopicPartition) -> bool:
        """Whether records of the partition were fetched and not handed over yet: its position
        is then short of what the broker returned (Tansu reports the end of a partition as the
        start of its last batch plus one, so a position past it may still have records behind)."""
        result = self._fetcher._records.get(tp)
        return result is not None and (not hasattr(result, "has_more") or bool(result.has_more()))

    async def getmany(self, *partitions: TopicPartition, **options: Any) -> dict[TopicPartition, list[Any]]:
        try:
            return dict(await super().getmany(*partitions, **options))
        except RecordTooLargeError as exc:
            # aiokafka raises it once for the partition and has moved one offset on
            _, tp, offset, limit = exc.args
            info = UndecodableBatch(
                "truncated_batch",
                f"the batch at offset {offset} does not fit the fetch size {limit} or is cut short",
                offset,
                offset,
                b"",
                "unknown",
            )
            return {tp: [ConsumerRecord(tp.topic, tp.partition, offset, None, 0, None, b"", info, -1, 0, ())]}


def dead_letter_of(topic: str, partition: int, batch: UndecodableBatch) -> DeadLetter:
    """The dead letter of an undecodable batch: its raw bytes, reason and offset range."""
    moment = (
        datetime.fromtimestamp(batch.max_timestamp_ms / 1000, UTC)
        if batch.max_timestamp_ms is not None
        else datetime.now(UTC)
    )
    detail = f"{batch.codec} batch, offsets {batch.first_offset}-{batch.last_offset}: {batch.detail}"
    return dead_letter(
        Rejection(batch.reason, detail, batch.raw),
        source_topic=topic,
        source_partition=partition,
        source_offset=batch.first_offset,
        source_offset_last=batch.last_offset,
        timestamp=moment,
    )


def describe(topic: str, partition: int, batch: UndecodableBatch) -> str:
    """The log line's what happened and what to do."""
    return (
        f"skipped {topic}[{partition}] offsets {batch.first_offset}-{batch.last_offset}: a {batch.codec} "
        f"record batch this client cannot decode ({batch.reason}: {batch.detail}); dead-lettered with "
        f"its raw bytes. To do: {batch.advice()}"
    )


class SkippedBatches:
    """How a consumer reports an undecodable batch: a dead letter, `/metrics` counting it by
    reason (`conversions_dead_letters`), and a warning that says what to do."""

    def __init__(self, who: str, metrics: Metrics, publisher: Publisher | None) -> None:
        self.who = who
        self.metrics = metrics
        self.publisher = publisher

    async def report(self, topic: str, partition: int, batch: UndecodableBatch) -> None:
        log.warning("%s: %s", self.who, describe(topic, partition, batch))
        self.metrics.dead_letters.labels(batch.reason).inc()
        if self.publisher is not None:
            await self.publisher.publish([dead_letter_of(topic, partition, batch)])


class DeadLetterProducer:
    """A `ports.Publisher` of dead letters for a consumer outside the pipeline (the counters'
    own process): a producer started on first use, an undecodable batch being rare."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        if self._producer is None:
            self._producer = new_producer(self.settings)
            await self._producer.start()
        for output in outputs:
            identity = output.identity
            await self._producer.send_and_wait(
                self.settings.output_topics[output.type],
                output.to_json(),
                key=identity.encode() if identity is not None else None,
                partition=partition,
            )

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
