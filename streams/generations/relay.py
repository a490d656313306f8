"""The relay: the current generation's outputs onto the live topics, from the cut-over on.

A generation N >= 1 writes its outputs to topics of its own (`generations.naming`); the services
downstream read the live topics. Once N is current, its leading worker copies each record of its
own output topics to the live topic of the same name and partition, from the seam `deploy`
recorded at the flip (the end offsets of N's topics then): what N produced before the seam is
history the previous generation had already published, or a new funnel's history, which is not
sent (no flood). Until the previous generation's workers have stopped (their heartbeats in the
registry expire) nothing is relayed; then every record the live topics received since the seam
(the previous generation's last words) is remembered by id and not sent again: a consumer of the
live topics sees each record once across a cut-over. After each delivered batch the relay
checkpoints in the registry, in one write, its offsets in its own topics, the live topics' offsets
after what it sent, and the last words it has not met yet: a new leader resumes there and reads
the live topics from those offsets (what the previous leader sent after its last checkpoint, not
sent again) and the `LOOKBACK` before the seam only, so a leadership change costs the same at any
age of the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.generations.registry import Registry, RelayCheckpoint
from streams.kafka.clients import new_consumer, new_producer, start_with_retry
from streams.kafka.undecodable import GuardedConsumer, undecodable
from streams.ports import GenerationCheck, LeaderCheck, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

WAIT_FOR_OLD_S = 30.0
"""How long the relay waits for the previous generation's workers to stop before it goes on."""


LOOKBACK = 10_000
"""Records per live partition before the seam whose ids are also remembered."""


@dataclass
class Published:
    """Ids already on the live topics: each is skipped once when the relay meets it."""

    before: set[Any]
    """Read before the seam (the lookback) or after a checkpoint: not carried in checkpoints."""
    last_words: set[Any]
    """The previous generation's records after the seam, not met yet: carried in checkpoints."""

    def met(self, output_id: Any) -> bool:
        if output_id in self.last_words:
            self.last_words.discard(output_id)
            return True
        if output_id in self.before:
            self.before.discard(output_id)
            return True
        return False


def split(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition("/")
    return TopicPartition(topic, int(partition))


def live_topic(settings: Settings, own: str) -> str:
    """The live topic a generation topic is relayed to: the name without the generation prefix."""
    marker = f"{settings.app_id}."
    head, found, tail = own.partition(marker)
    assert found, f"{own} is not a topic of {settings.app_id}"
    return head + tail


def own_output_topics(settings: Settings) -> list[str]:
    return sorted(set(settings.output_topics.values()))


class Relay:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        generation: GenerationCheck,
        leader: LeaderCheck,
    ) -> None:
        self.settings = settings
        self.number = settings.generation or 0
        self.registry = registry
        self.generation = generation
        self.leader = leader
        self.relayed = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def _active(self) -> bool:
        if not self.generation.is_current():
            return False
        try:
            return self.leader.is_leader()
        except Exception:
            return False

    async def run(self, stopping: Stopping) -> None:
        while not stopping():
            if not self._active():
                await self._park()
                await asyncio.sleep(0.5)
                continue
            seam = await self.registry.seam(self.number)
            if seam is None:  # current without a seam: never cut over by deploy (rollback target)
                seam = {"from": {}, "live": {}}
            await self._relay(seam, stopping)

    async def _park(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _wait_for_previous(self, stopping: Stopping) -> None:
        deadline = time.monotonic() + WAIT_FOR_OLD_S
        others: list[int] = []
        while not stopping() and time.monotonic() < deadline:
            others = await self.registry.alive_elsewhere(self.number)
            if not others:
                return
            await asyncio.sleep(0.5)
        if others and not stopping():
            log.warning("relay: workers of generation(s) %s still beat; relaying anyway", others)

    async def _relay(self, seam: dict[str, dict[str, int]], stopping: Stopping) -> None:
        s = self.settings
        checkpoint = await self.registry.relay_checkpoint(self.number)
        positions = {**seam["from"], **checkpoint.own}
        await self._wait_for_previous(stopping)
        published = await self._published(seam["live"], checkpoint, stopping)
        consumer = self._consumer = new_consumer(s, cls=GuardedConsumer)
        if self._producer is None:
            self._producer = new_producer(s, acks="all")
            if not await start_with_retry(self._producer, "relay", stopping):
                return
        if not await start_with_retry(consumer, "relay", stopping):
            return
        tps = [TopicPartition(t, p) for t in own_output_topics(s) for p in range(s.partitions)]
        consumer.assign(tps)
        for tp in tps:
            name = f"{tp.topic}/{tp.partition}"
            if name in positions:
                consumer.seek(tp, positions[name])
            else:
                await consumer.seek_to_beginning(tp)
        log.info(
            "relay: generation %d's outputs to the live topics (%d ids already there)",
            self.number,
            len(published.before) + len(published.last_words),
        )
        first = checkpoint.remembered is None
        while not stopping() and self._active():
            batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            if not batch:
                continue
            sent, moved, met = [], {}, False
            for tp, messages in batch.items():
                for message in messages:
                    moved[f"{tp.topic}/{tp.partition}"] = message.offset + 1
                    if undecodable(message) is not None or message.value is None:
                        continue
                    output_id = orjson.loads(message.value).get("id")
                    if published.met(output_id):
                        met = True
                        continue
                    sent.append(
                        await self._producer.send(
                            live_topic(s, tp.topic),
                            value=message.value,
                            key=message.key,
                            partition=tp.partition,
                            headers=list(message.headers or ()),
                        )
                    )
            live: dict[str, int] = {}
            for metadata in await asyncio.gather(*sent):
                name = f"{metadata.topic}/{metadata.partition}"
                live[name] = max(live.get(name, 0), metadata.offset + 1)
            self.relayed += len(sent)
            remembered = list(published.last_words) if (met or first) else None
            await self.registry.set_relay_checkpoint(self.number, moved, live, remembered)
            first = False
        await self._park()

    async def _published(
        self, seam_live: dict[str, int], checkpoint: RelayCheckpoint, stopping: Stopping
    ) -> Published:
        """The ids on the live topics this relay must not send again. The first leader since the
        cut-over reads the live topics from the seam (and `LOOKBACK` before it: a broker may report
        an end offset short of its last batch, Tansu does) to their end: the previous generation's
        last words. A later leader reads the same `LOOKBACK` before the seam (what a generation that
        lagged at the flip still holds after its seam, not all met by the first leader), then only
        from the checkpoint: the live topics after what the relay had sent (a crash between a send
        and its checkpoint repeats nothing), and the last words not met yet, which the checkpoint
        carries; so what it reads does not grow with the generation's age."""
        lookback = {name: max(0, at - LOOKBACK) for name, at in seam_live.items()}
        if checkpoint.remembered is None:
            read = await self._ids_since(lookback, stopping)
        else:
            read = await self._ids_since(lookback, stopping, until=seam_live)
            read += await self._ids_since({**seam_live, **checkpoint.live}, stopping)
        published = Published(set(), set(checkpoint.remembered or ()))
        for name, offset, output_id in read:
            if checkpoint.remembered is None and offset >= seam_live.get(name, 0):
                published.last_words.add(output_id)
            else:
                published.before.add(output_id)
        return published

    async def _ids_since(
        self, starts: dict[str, int], stopping: Stopping, until: dict[str, int] | None = None
    ) -> list[tuple[str, int, Any]]:
        """(`topic/partition`, offset, id) of each record on the live topics from `starts` to
        their end, or to `until` (excluded) where given."""
        stops = {name: at for name, at in (until or {}).items() if name in starts}
        tps = [split(name) for name in starts if name not in stops or stops[name] > starts[name]]
        if not tps:
            return []
        consumer = new_consumer(self.settings, cls=GuardedConsumer)
        if not await start_with_retry(consumer, "relay", stopping):
            return []
        try:
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, starts[f"{tp.topic}/{tp.partition}"])
            found: list[tuple[str, int, Any]] = []
            quiet, reading = 0, set(tps)
            while not stopping() and quiet < 2 and reading:  # it has stopped: nothing more comes
                batch = await consumer.getmany(*reading, timeout_ms=1_000, max_records=5_000)
                quiet = 0 if batch else quiet + 1
                for tp, messages in batch.items():
                    name = f"{tp.topic}/{tp.partition}"
                    stop = stops.get(name)
                    for message in messages:
                        if stop is not None and message.offset >= stop:
                            reading.discard(tp)
                            break
                        if undecodable(message) is None and message.value is not None:
                            found.append((name, message.offset, orjson.loads(message.value).get("id")))
                        if stop is not None and message.offset + 1 >= stop:
                            reading.discard(tp)
            return found
        finally:
            await consumer.stop()

    async def close(self) -> None:
        await self._park()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
