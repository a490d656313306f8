"""A replay of unkeyed input through the real broker and worker (issue 26, item 2): the partitions
are read at the same event time (`pipeline.alignment`), so no event reaches its journey late and
the outputs equal offline mode's over the same events in event-time order.

The history waits on the topic before the worker starts, one event per message and no key, so
each person's events are spread over the four partitions; one partition holds a sparse sample
(every tenth event), so that a run's equal share of each partition reads it three times as far
in event time as the others: without alignment it runs hours ahead of them."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiokafka import TopicPartition

from streams.core.input.event import ClickEvent
from streams.core.input.repartition import source_name
from streams.kafka import ensure_topics
from streams.kafka.clients import new_consumer
from streams.kafka.undecodable import GuardedConsumer
from streams.pipeline.alignment import Alignment
from streams.settings import Settings
from streams.tools.producer import clickstream_producer
from streams.tools.worker_process import WorkerProcess
from tests.helpers import event, read_topics
from tests.pipeline.test_journeys_kafka import _debug_diff, canonical, offline_outputs, traffic

SPARSE = 3  # the partition that runs ahead


def spread(lines: list[bytes]) -> dict[int, list[bytes]]:
    """Unkeyed, in time order: every tenth line to the sparse partition, the rest round robin."""
    partitions: dict[int, list[bytes]] = {p: [] for p in range(4)}
    for i, line in enumerate(lines):
        partitions[SPARSE if i % 10 == 0 else i % 3].append(line)
    return partitions


async def produce(settings: Settings, by_partition: dict[int, list[bytes]]) -> None:
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for partition, lines in by_partition.items():
            for line in lines:
                await producer.send(settings.topic("clickstream"), line, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def test_an_unkeyed_replay_with_a_partition_far_ahead_equals_offline_mode(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    lines, ticks = traffic(users=400, seed=41)
    expected = offline_outputs(settings, lines + ticks)
    assert not [o for o in expected if o.get("reason") == "late_event"]
    by_partition = spread(lines)
    await ensure_topics(settings)
    await produce(settings, by_partition)
    await produce(settings, {p: [tick] for p, tick in enumerate(ticks)})

    # a run of 40 messages takes 10 of each partition: many runs, the sparse one far ahead
    start_worker(env={"CONVERSIONS_SOURCE_IDLE_S": "300", "CONVERSIONS_AGENT_BATCH_MESSAGES": "40"})
    topics = sorted(set(settings.output_topics.values()))
    actual = await read_topics(settings, topics, expect=len(expected))

    late = [o for o in actual if o.get("reason") == "late_event"]
    assert not late, f"{len(late)} events refused as late: {late}"
    assert canonical(actual) == canonical(expected), _debug_diff(actual, expected)


async def test_a_paused_partition_resumes_when_the_slow_one_reaches_its_end(settings: Settings) -> None:
    """Real consumer, real broker, the alignment's two steps driven by hand: a partition read to
    12:02 is paused while another holds 10:00-10:29 still to read, and resumed once that one has
    been read to its end, though it is still more than the bound behind."""
    await ensure_topics(settings)
    ahead = [orjson.dumps(event("page_view", f"12:0{i}", "x")) for i in range(3)]
    slow = [orjson.dumps(event("page_view", f"10:{i:02d}", "x")) for i in range(30)]
    await produce(settings, {0: ahead, 1: slow})
    fast_tp, slow_tp = (TopicPartition(settings.topic("clickstream"), p) for p in (0, 1))
    read_to: dict[str, int] = {}

    def note(records: dict[TopicPartition, list[object]]) -> None:
        for tp, found in records.items():
            for record in found:
                at = _timestamp_ms(record)
                key = source_name(tp.topic, tp.partition)
                read_to[key] = max(at, read_to.get(key, at))

    consumer = new_consumer(settings, cls=GuardedConsumer, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([fast_tp, slow_tp])
        alignment = Alignment(bound_ms=5 * 60_000, idle_s=300, read_committed=False)
        run = await _read(consumer, fast_tp, len(ahead), ask=100)
        run.update(await _read(consumer, slow_tp, 10))
        note(run)
        holding = await alignment.holding(consumer, run)
        assert holding == {slow_tp}, "the fast one is read to its end; the slow one has 20 to go"
        alignment.pace(consumer, holding, read_to.get, read_to.get)
        assert consumer.paused() == {fast_tp}

        run = await _read(consumer, slow_tp, 10)
        note(run)
        alignment.pace(consumer, await alignment.holding(consumer, run), read_to.get, read_to.get)
        assert consumer.paused() == {fast_tp}, "10:19 is still far behind 12:02"

        run = await _read(consumer, slow_tp, 10, ask=100)
        note(run)
        holding = await alignment.holding(consumer, run)
        assert holding == set()
        alignment.pace(consumer, holding, read_to.get, read_to.get)
        assert consumer.paused() == set(), "the slow one is at its end: it holds nothing back"
    finally:
        await consumer.stop()


def _timestamp_ms(record: object) -> int:
    value = getattr(record, "value", None)
    assert isinstance(value, bytes)
    return ClickEvent.model_validate_json(value).ts_ms


async def _read(
    consumer: GuardedConsumer, tp: TopicPartition, count: int, ask: int | None = None
) -> dict[TopicPartition, list[object]]:
    """`count` records of the partition, asking for `ask` at a time (a run's share; by default
    just what is left to read, which leaves the rest fetched and not handed over)."""
    found: list[object] = []
    while len(found) < count:
        batch = await consumer.getmany(tp, timeout_ms=2000, max_records=ask or count - len(found))
        found.extend(batch.get(tp, []))
    return {tp: found}
