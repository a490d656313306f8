"""The journeys table with changelog writes the agent awaits.

A Faust table sends its changelog through a buffer, and before committing consumer offsets Faust
flushes that buffer, but the flush gives up when one send takes longer than 0.1 s, so under
load offsets can be committed ahead of changelog writes, and a restart then resumes after input
whose effect on the table was never written (found by the restart test). Here the writes of a
run of messages are kept, the last value of each key, in the order of each key's last write, and
sent with `await` before the agent moves on (as whole batches per partition, `record_batches`,
unless transactions need Faust's own send); Faust's commit then flushes the Kafka producer
itself, which does wait. A key written again moves to the end, so a key written after others
(an applied marker after the journeys it covers) stays after them.

Writing past the table also bypasses Faust's key-to-partition bookkeeping; the app trims the
store down to the partitions this worker owns after every rebalance
(`Journeys.rebuild_deadlines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from functools import partial
from typing import Any

from faust.serializers import codecs
from faust.types import TP

from streams.pipeline.record_batches import RecordBatches


class DurableTable(MutableMapping[str, bytes]):
    def __init__(
        self,
        table: Any,
        partition_of: Callable[[str], int],
        record_batches: Callable[[], RecordBatches | None] = lambda: None,
    ) -> None:
        self.table = table
        self.partition_of = partition_of
        self._record_batches = record_batches  # None: one `Topic.send` a key (transactions)
        self._pending: dict[str, bytes | None] = {}

    def __getitem__(self, key: str) -> bytes:
        value: bytes = self.table.data[key]
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table.data[key] = value
        self._pending.pop(key, None)
        self._pending[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
        self._pending.pop(key, None)
        self._pending[key] = None

    def evict(self, key: str) -> None:
        """Forget a key locally, writing nothing: its partition belongs to another worker."""
        self.table.data.pop(key, None)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Let the store read these changelog partitions in full if they come back."""
        forget = getattr(self.table.data, "forget_partition", None)
        if forget is not None:
            for partition in partitions:
                forget(partition)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.table.data.keys()))

    def __len__(self) -> int:
        return len(self.table.data)

    async def write_changelog(self) -> None:
        """Send the writes kept since the last call, each to its key's changelog partition."""
        topic = self.table.changelog_topic
        pending, self._pending = self._pending, {}
        note_written = getattr(self.table.data, "note_written", None)
        batches = self._record_batches()
        if batches is not None:
            name = topic.get_topic_name()
            for key, value in pending.items():
                batches.append(name, self.partition_of(key), codecs.dumps("json", key), value)
            await batches.send_all(
                None if note_written is None else partial(self._batch_acknowledged, note_written)
            )
            return
        for key, value in pending.items():
            await topic.send(
                key=key,
                value=value,
                partition=self.partition_of(key),
                key_serializer="json",
                value_serializer="raw",
                callback=None if note_written is None else partial(self._acknowledged, note_written),
            )

    @staticmethod
    def _batch_acknowledged(
        note_written: Callable[[Any, int], None], topic: str, partition: int, last: int
    ) -> None:
        note_written(TP(topic, partition), last)

    @staticmethod
    def _acknowledged(note_written: Callable[[Any, int], None], future: Any) -> None:
        metadata = future.result()
        note_written(metadata.topic_partition, metadata.offset)
