"""The ingest group's assignment (`kafka.assignors`, `CONVERSIONS_INGEST_ASSIGNMENT`), with the
consumers ingest builds, through the real broker: `one` puts every clickstream partition on one
member and keeps it there when another joins; when it leaves, another takes them all; a group
whose members disagree (a rolling change) forms, on round robin, and so does one with a member
of an earlier version (round robin alone)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from streams.kafka import ensure_topics
from streams.settings import Settings
from tests.kafka.test_read_committed import ingest_consumer

ALL = {0, 1, 2, 3}


@contextlib.asynccontextmanager
async def member(settings: Settings, assignment: Literal["one", "spread"]) -> AsyncIterator[AIOKafkaConsumer]:
    consumer: AIOKafkaConsumer = ingest_consumer(
        settings.model_copy(update={"ingest_assignment": assignment})
    )
    await consumer.start()
    consumer.subscribe([settings.topic(t) for t in settings.topic_clickstream])
    try:
        yield consumer
    finally:
        await consumer.stop()


async def settle(*consumers: AIOKafkaConsumer, until: Any, timeout_s: float = 60.0) -> list[set[int]]:
    """Poll every member (heartbeats, rebalances) until `until(partitions of each)` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        await asyncio.gather(*(c.getmany(timeout_ms=200) for c in consumers))
        owned = [{tp.partition for tp in c.assignment()} for c in consumers]
        if until(owned) and all(c._coordinator.coordinator_id is not None for c in consumers):
            return owned
        assert loop.time() < deadline, f"assignment did not settle: {owned}"


async def test_one_member_reads_every_partition_keeps_them_when_another_joins_and_hands_them_over(
    settings: Settings,
) -> None:
    await ensure_topics(settings)
    async with member(settings, "one") as first:
        await settle(first, until=lambda owned: owned == [ALL])
        async with member(settings, "one") as second:
            owned = await settle(first, second, until=lambda owned: owned[1] == set() and owned[0] == ALL)
            assert owned == [ALL, set()], "the member that reads keeps the partitions"
        await settle(first, until=lambda owned: owned == [ALL])
        async with member(settings, "one") as third:
            await settle(first, third, until=lambda owned: owned == [ALL, set()])
            await first.stop()
            assert await settle(third, until=lambda owned: owned == [ALL]) == [ALL]


async def test_members_that_disagree_form_a_group_on_round_robin(settings: Settings) -> None:
    await ensure_topics(settings)
    async with member(settings, "one") as one, member(settings, "spread") as spread:
        owned = await settle(one, spread, until=lambda owned: owned[0] | owned[1] == ALL and all(owned))
        assert sorted(map(len, owned)) == [2, 2] and not owned[0] & owned[1]


async def test_a_rolling_upgrade_from_round_robin_alone_forms_a_group_that_spreads(
    settings: Settings,
) -> None:
    """Earlier versions joined with aiokafka's round robin alone: ours, listing it second, join
    their group on it (spread), and nothing fails. Tansu keeps a group's protocol while it has a
    member: the group goes on spreading until every member has left it once (a fresh group
    gives all to one: the test above)."""
    await ensure_topics(settings)
    earlier = ingest_consumer(settings)
    earlier._partition_assignment_strategy = (RoundRobinPartitionAssignor,)
    await earlier.start()
    earlier.subscribe([settings.topic(t) for t in settings.topic_clickstream])
    try:
        await settle(earlier, until=lambda owned: owned == [ALL])
        async with member(settings, "one") as ours:
            owned = await settle(earlier, ours, until=lambda owned: all(owned) and owned[0] | owned[1] == ALL)
            assert sorted(map(len, owned)) == [2, 2]
            await earlier.stop()
            await settle(ours, until=lambda owned: owned == [ALL])
            async with member(settings, "one") as second:
                # Tansu keeps the group's protocol while it has members: still round robin
                owned = await settle(
                    ours, second, until=lambda owned: all(owned) and owned[0] | owned[1] == ALL
                )
                assert sorted(map(len, owned)) == [2, 2]
    finally:
        await earlier.stop()
