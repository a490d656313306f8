"""A run's watermark reaches every journey partition right after the run, not at the timer's tick.

A stitched event held on its person's partition waits until every partition's progress has
passed it; a partition that got no events of a source in a run only learns how far that source
has got from a watermark-only batch. `Ingest.announce_when_moved` sends those right after each
run that moved a watermark (the heartbeat timer, `watermark_interval_s`, only repeats them and
says when a source is idle): here the timer never runs, and the watermarks still arrive, after
the events they cover, and only when they moved.
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

SOURCE = "p.clickstream/0"


def message(offset: int, *events: dict[str, Any]) -> SourceMessage:
    return SourceMessage("p.clickstream", 0, offset, orjson.dumps(list(events)), None)


async def until(condition: Any, seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.005)


async def test_every_partition_learns_a_runs_watermark_right_after_the_run() -> None:
    sent: list[tuple[int, RepartitionBatch]] = []

    async def send(partition: int, batch: RepartitionBatch) -> None:
        sent.append((partition, batch))

    async def dead_letter(rejects: Any, _: Any) -> None:
        raise AssertionError(f"nothing here is invalid: {rejects}")

    settings = Settings(topic_prefix="p.", partitions=4, max_future_skew_s=10**9, watermark_interval_s=3600)
    agent = Ingest(
        settings,
        Metrics(),
        send,
        dead_letter,
        assignment=lambda: {TP("p.clickstream", 0)},
        home_partition=lambda click: 0,  # every event to partition 0: 1 to 3 get none
    )
    stop = False
    announcing = asyncio.create_task(agent.announce_when_moved(lambda: stop, poll_s=0.05))
    try:
        first = [event("page_view", "10:00", "x"), event("add_to_cart", "10:02", "x")]
        await agent.repartition([message(1, *first)])
        at = ClickEvent.model_validate(first[1]).ts_ms

        def learnt(watermark: int) -> set[int]:
            return {p for p, b in sent if b.source == SOURCE and b.watermark == watermark and not b.events}

        await until(lambda: learnt(at) >= {1, 2, 3})
        events_sent = next(i for i, (p, b) in enumerate(sent) if b.events)
        assert sent[events_sent][0] == 0 and sent[events_sent][1].watermark == at
        assert all(i > events_sent for i, (p, b) in enumerate(sent) if p != 0), "after the events"

        # a run that does not move the watermark sends nothing more to the others
        count = len(sent)
        await agent.repartition([message(2, event("page_view", "10:01", "x"))])
        await asyncio.sleep(0.2)
        assert [p for p, _ in sent[count:]] == [0]

        later = event("checkout", "10:05", "y")
        await agent.repartition([message(3, later)])
        await until(lambda: learnt(ClickEvent.model_validate(later).ts_ms) >= {1, 2, 3})
    finally:
        stop = True
        await announcing
