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


def recording_ingest(**options: Any) -> tuple[Ingest, list[tuple[int, RepartitionBatch]]]:
    """Ingest over four journey partitions of one input partition, each batch it sends kept in
    the list (nothing here is invalid: a dead letter fails the test)."""
    sent: list[tuple[int, RepartitionBatch]] = []

    async def send(partition: int, batch: RepartitionBatch) -> None:
        sent.append((partition, batch))

    async def dead_letter(rejects: Any, _: Any) -> None:
        raise AssertionError(f"nothing here is invalid: {rejects}")

    settings = Settings(topic_prefix="p.", partitions=4, max_future_skew_s=10**9, watermark_interval_s=3600)
    agent = Ingest(
        settings, Metrics(), send, dead_letter, assignment=lambda: {TP("p.clickstream", 0)}, **options
    )
    return agent, sent


async def test_every_partition_learns_a_runs_watermark_right_after_the_run() -> None:
    # every event to partition 0: 1 to 3 get none
    agent, sent = recording_ingest(home_partition=lambda click: 0)
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


async def test_an_event_with_both_ids_gives_its_users_partition_a_link_notice_in_its_sources_batch() -> None:
    """With stitching, ingest sends an event carrying both ids to its anonymous id's home and a
    link notice to its user's partition, in the same source's batch (so covered by the watermark
    that batch carries), which the engine there takes as a notice (`core.journeys.notices`)."""
    from streams.core.config.loader import parse_config
    from streams.core.config.matching import compile_config
    from streams.core.journeys.engine import Engine, partition_for
    from streams.core.journeys.notices import decode_notice, is_notice
    from streams.settings import DEFAULT_FUNNELS

    engine = Engine(
        compile_config(parse_config(DEFAULT_FUNNELS.read_text())),
        {},
        4,
        [SOURCE],
        forwarding=True,
        early_release=True,
    )
    user = next(f"u{i}" for i in range(100) if partition_for(f"u{i}", 4) == 0)
    anonymous = next(f"a{i}" for i in range(100) if partition_for(f"a{i}", 4) == 1)
    together = next(f"t{i}" for i in range(100) if partition_for(f"t{i}", 4) == 0)
    agent, sent = recording_ingest(home_partition=engine.home_partition, notice_for=engine.notice_for)
    browse = {**event("page_view", "10:00", None), "anonymous_id": anonymous}
    login = {**event("login", "10:01", user), "anonymous_id": anonymous}
    same_home = {**event("login", "10:02", user), "anonymous_id": together}  # both on partition 0
    own = event("purchase", "10:03", user)
    await agent.repartition([message(1, browse, login, same_home, own)])

    batches = {partition: batch for partition, batch in sent if batch.source == SOURCE and batch.events}
    assert [e["event_id"] for e in batches[1].events] == [browse["event_id"], login["event_id"]]
    to_user = batches[0].events
    assert [is_notice(item) for item in to_user] == [True, False, False]
    notice = decode_notice(to_user[0])
    login_ms = ClickEvent.model_validate(login).ts_ms
    assert (notice.user, notice.anonymous_id, notice.ts) == (user, anonymous, login_ms)
    assert batches[0].watermark is not None and batches[0].watermark >= login_ms
    assert batches[0].event_offsets() == [1, 1, 1]

    engine.notice(0, to_user[0])  # the journeys agent hands it to the engine, not to validation
    assert engine._clocks[0].notices == {user: {"journeys/1": login_ms}}
