"""The relay's checkpoint on the real broker and Redis (issue 26): each delivered batch records the
live topics' offsets after what it sent with its own position, so a new leader reads the live
topics from there only (not from the seam: that would grow with the generation's age), and a
crash between a send and its checkpoint sends nothing twice."""

from __future__ import annotations

import asyncio

import orjson
from redis.asyncio import Redis

from streams.generations.naming import generation_settings
from streams.generations.registry import Registry
from streams.generations.relay import Relay
from streams.kafka import ensure_topics
from streams.kafka.clients import new_producer
from streams.settings import Settings
from streams.tools.infra import LocalInfra
from tests.helpers import read_topics


class Always:
    """This worker leads and its generation is current (the ports the relay asks)."""

    def is_leader(self) -> bool:
        return True

    def is_current(self) -> bool:
        return True


async def produce(settings: Settings, topic: str, ids: list[str]) -> None:
    producer = new_producer(settings)
    await producer.start()
    try:
        for output_id in ids:
            record = {"id": output_id, "type": "micro", "user_id": "u"}
            await producer.send_and_wait(topic, orjson.dumps(record), key=b"u", partition=0)
    finally:
        await producer.stop()


async def relay_until(relay: Relay, settings: Settings, topic: str, count: int) -> list[str]:
    """Run the relay until the live topic holds `count` records; their ids."""
    stop = False
    task = asyncio.create_task(relay.run(lambda: stop))
    try:
        found = await read_topics(settings, [topic], expect=count, quiet_s=1.5, timeout_s=60)
    finally:
        stop = True
        await asyncio.wait_for(task, 30)
        await relay.close()
    return [o["id"] for o in found]


async def test_a_new_leader_reads_the_live_topics_from_the_checkpoint_and_repeats_nothing(
    settings: Settings, infra: LocalInfra
) -> None:
    new = generation_settings(settings, 1)
    await ensure_topics(settings)
    await ensure_topics(new)
    own, live = new.output_topics["micro"], settings.output_topics["micro"]
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        # the previous generation's last words on the live topic after the seam: not relayed
        await produce(settings, live, ["w0", "w1"])
        await registry.set_seam(1, {"from": {f"{own}/0": 0}, "live": {f"{live}/0": 0}})
        await produce(new, own, ["w1", *(f"a{i}" for i in range(10))])
        assert await relay_until(Relay(new, registry, Always(), Always()), settings, live, 12) == [
            "w0",
            "w1",
            *(f"a{i}" for i in range(10)),
        ]
        checkpoint = await registry.relay_checkpoint(1)
        assert checkpoint.own[f"{own}/0"] == 11 and checkpoint.live[f"{live}/0"] == 12
        assert checkpoint.remembered == ["w0"]  # w1 met; w0 never comes: carried on

        # a batch sent, then a crash before its checkpoint: the checkpoint is the one before it
        await produce(new, own, [f"b{i}" for i in range(5)])
        await relay_until(Relay(new, registry, Always(), Always()), settings, live, 17)
        await registry.set_relay_checkpoint(1, {f"{own}/0": 11}, {f"{live}/0": 12})
        # the next leader reads the live topic from offset 12 only (5 ids), not from the seam
        relay = Relay(new, registry, Always(), Always())
        checkpoint = await registry.relay_checkpoint(1)
        published = await relay._published({f"{live}/0": 0}, checkpoint, lambda: False)
        assert (published.before, published.last_words) == ({f"b{i}" for i in range(5)}, {"w0"})
        await produce(new, own, ["c0"])
        ids = await relay_until(relay, settings, live, 18)
        assert len(ids) == len(set(ids)) == 18, ids
        assert ids[-1] == "c0"
        assert (await registry.relay_checkpoint(1)).own[f"{own}/0"] == 17
    finally:
        await redis.aclose()


async def test_a_later_leader_still_skips_what_the_previous_generation_sent_before_the_seam(
    settings: Settings, infra: LocalInfra
) -> None:
    """A generation that lagged at the flip (`--max-lag`) holds, after its seam, records the
    previous generation had already published before the live seam (the lookback). A leader that
    checkpointed after meeting only the first of them dies: the next must not send the rest."""
    new = generation_settings(settings, 1)
    await ensure_topics(settings)
    await ensure_topics(new)
    own, live = new.output_topics["micro"], settings.output_topics["micro"]
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    try:
        await produce(settings, live, ["p0", "p1", "p2"])
        await registry.set_seam(1, {"from": {f"{own}/0": 0}, "live": {f"{live}/0": 3}})
        await produce(new, own, ["p0", "p1", "p2", "a0"])
        # the first leader met p0, checkpointed (no last words), and died
        await registry.set_relay_checkpoint(1, {f"{own}/0": 1}, {}, [])
        ids = await relay_until(Relay(new, registry, Always(), Always()), settings, live, 4)
        assert ids == ["p0", "p1", "p2", "a0"], ids
    finally:
        await redis.aclose()
