"""Ingest keeps a person's events in time order across the sources of a run.

A run read from several partitions of unkeyed input holds one person's events in more than one
source, and a replay holds hours of event time in one run. Sent as one batch per source and
target partition, a journey would get one source's 11:00 before another's 10:10, more than the
late tolerance apart, and refuse the earlier as late. Ingest takes the messages in time order,
sends a person's pending batch before another source's next event of theirs joins its own, and
carries to a later run what runs ahead of another source (of the run, or one the consumer says
still holds records to read).
Keyed input (each identity in one source) is sent as one batch per source and partition.

Ingest's decode step is run directly on plain messages; what it sends is collected as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.types import TP

from streams.core.input.event import ClickEvent
from streams.core.input.repartition import RepartitionBatch
from streams.metrics import Metrics
from streams.pipeline.ingest import Ingest
from streams.pipeline.ingest_consumer import SourceMessage
from streams.settings import Settings
from tests.helpers import event

TOLERANCE_MS = 10 * 60_000


def message(partition: int, offset: int, *events: dict[str, Any]) -> SourceMessage:
    value = orjson.dumps(list(events) if len(events) > 1 else events[0])
    return SourceMessage("p.clickstream", partition, offset, value, None)


def ingest() -> tuple[Ingest, list[tuple[int, RepartitionBatch]]]:
    sent: list[tuple[int, RepartitionBatch]] = []

    async def send(partition: int, batch: RepartitionBatch) -> None:
        sent.append((partition, batch))

    async def dead_letter(rejects: Any, _: Any) -> None:
        raise AssertionError(f"nothing here is invalid: {rejects}")

    settings = Settings(topic_prefix="p.", max_future_skew_s=10**9)
    agent = Ingest(
        settings,
        Metrics(),
        send,
        dead_letter,
        assignment=set,
        home_partition=lambda click: 0,  # one journey partition: the order it receives is the point
        late_tolerance_ms=TOLERANCE_MS,
    )
    return agent, sent


def received(sent: list[tuple[int, RepartitionBatch]], user: str) -> list[str]:
    """The times of a user's events in the order the journey partition gets them."""
    return [
        item["timestamp"][11:16] for _, batch in sent for item in batch.events if item.get("user_id") == user
    ]


async def test_a_persons_events_spread_over_sources_arrive_in_time_order() -> None:
    agent, sent = ingest()
    source_a = [
        message(0, 1, event("page_view", "10:00", "x")),
        message(0, 2, event("page_view", "10:20", "y"), event("page_view", "10:21", "y")),
        message(0, 3, event("add_to_cart", "10:40", "x")),
    ]
    source_b = [
        message(1, 7, event("product_view", "10:10", "x")),
        message(1, 8, event("page_view", "10:44", "z")),
    ]
    await agent.repartition(source_a + source_b)  # as a run holds them: source by source
    assert received(sent, "x") == ["10:00", "10:10", "10:40"]
    assert not agent.carrying()
    assert agent.resume_offset("p.clickstream/0") == 4 and agent.resume_offset("p.clickstream/1") == 9
    watermarks = {batch.source: batch.watermark for _, batch in sent}
    assert watermarks["p.clickstream/0"] == ClickEvent.model_validate(event("x", "10:40", "x")).ts_ms


async def test_a_source_far_ahead_of_another_waits_for_the_next_run() -> None:
    agent, sent = ingest()
    ahead = [message(0, offset, event("page_view", f"{10 + offset}:00", "x")) for offset in range(1, 4)]
    behind = [message(1, 1, event("page_view", "10:30", "x"))]
    await agent.repartition(ahead + behind)
    # the other source stops at 10:30: past 10:35 (half the tolerance on), the rest waits
    assert received(sent, "x") == ["10:30"]
    assert agent.carrying()
    assert agent.resume_offset("p.clickstream/0") == 1, "a successor must read the carried ones again"
    assert agent.resume_offset("p.clickstream/1") == 2

    await agent.repartition([message(1, 2, event("page_view", "12:30", "x"))])
    await agent.repartition([])  # no new input: what was carried goes
    assert received(sent, "x") == ["10:30", "11:00", "12:00", "12:30", "13:00"]
    assert not agent.carrying() and agent.resume_offset("p.clickstream/0") == 4


async def test_keyed_input_is_sent_once_per_source_and_partition_however_long_the_run() -> None:
    agent, sent = ingest()
    run = [message(0, i, event("page_view", f"{10 + i}:00", "x")) for i in range(1, 6)]
    run += [message(1, i, event("page_view", f"{10 + i}:30", "y")) for i in range(1, 6)]
    await agent.repartition(run)
    assert len(sent) == 2 and not agent.carrying()
    assert received(sent, "x") == [f"{10 + i}:00" for i in range(1, 6)]


async def test_nothing_is_sent_past_where_a_source_still_holding_records_was_read_to() -> None:
    """Across runs: the consumer names the sources with records still to read (`holding`); a
    source missing from a run still holds the others back at where it was read to, and one
    read to its end holds nothing back."""
    agent, sent = ingest()
    both = {"p.clickstream/0", "p.clickstream/1"}
    await agent.repartition(
        [message(0, 1, event("page_view", "10:00", "x")), message(1, 1, event("page_view", "10:01", "x"))],
        holding=both,
    )
    assert received(sent, "x") == ["10:00"], "source 0 may still deliver something before 10:01"
    await agent.repartition([message(0, 2, event("page_view", "10:03", "x"))], holding=both)
    assert received(sent, "x") == ["10:00", "10:01"]
    await agent.repartition([], holding={"p.clickstream/0"})  # source 1 at its end, 10:01
    assert received(sent, "x") == ["10:00", "10:01", "10:03"] and not agent.carrying()


async def test_a_persons_events_alternating_between_sources_keep_their_order_in_one_run() -> None:
    agent, sent = ingest()
    run = [message(0, 1, event("page_view", "10:00", "x")), message(0, 2, event("login", "10:02", "x"))]
    run += [
        message(1, 1, event("product_view", "10:01", "x")),
        message(1, 2, event("add_to_cart", "10:03", "x")),
    ]
    await agent.repartition(run, holding=set())
    assert received(sent, "x") == ["10:00", "10:01", "10:02", "10:03"]
    assert len(sent) == 4, "one batch per switch of source"


async def test_a_source_whose_messages_wait_in_the_carry_is_not_announced_idle() -> None:
    """Its watermark must still be waited for: announced idle, the journeys would stop waiting
    for it, and the far-ahead messages sent later would move no watermark."""
    sent: list[tuple[int, RepartitionBatch]] = []

    async def send(partition: int, batch: RepartitionBatch) -> None:
        sent.append((partition, batch))

    async def dead_letter(rejects: Any, _: Any) -> None:
        raise AssertionError(f"nothing here is invalid: {rejects}")

    settings = Settings(topic_prefix="p.", partitions=1, max_future_skew_s=10**9, source_idle_s=0.05)
    agent = Ingest(
        settings,
        Metrics(),
        send,
        dead_letter,
        assignment=lambda: {TP("p.clickstream", 0), TP("p.clickstream", 1)},
        home_partition=lambda click: 0,
    )
    both = {"p.clickstream/0", "p.clickstream/1"}
    await agent.repartition(
        [message(0, 1, event("page_view", "10:00", "x")), message(1, 1, event("page_view", "12:00", "x"))],
        holding=both,
    )
    assert agent.carrying()
    await asyncio.sleep(0.1)  # past source_idle_s: nothing new from either
    await agent.announce_watermarks()
    idle = {batch.source for _, batch in sent if batch.idle}
    assert idle == {"p.clickstream/0"}, "source 1's 12:00 waits in the carry: it is not idle"

    await agent.repartition([], holding=set())  # both at their end: the carried message goes
    [(_, last)] = sent[-1:]
    assert (
        last.source == "p.clickstream/1"
        and last.watermark == ClickEvent.model_validate(event("x", "12:00", "x")).ts_ms
    )


async def test_a_source_whose_messages_hold_no_event_does_not_stop_the_others() -> None:
    """A partition of messages with nothing for the engine (Segment group calls here; invalid
    ones alike) has no event time: still reading, it holds nothing back. One nothing was read
    from yet holds everything."""
    agent, sent = ingest()
    group = {
        "type": "group",
        "userId": "u",
        "groupId": "g",
        "timestamp": "2024-03-13T10:00:00Z",
        "messageId": "m",
    }
    both = {"p.clickstream/0", "p.clickstream/1"}
    await agent.repartition([message(0, 1, event("page_view", "10:00", "x"))], holding=both)
    assert received(sent, "x") == [], "source 1 has not been read yet"
    await agent.repartition([message(1, 1, group)], holding=both)
    assert received(sent, "x") == ["10:00"]
