"""`conversions deploy`, `rollback` and `generations`: a configuration deployed with its history
(issue 26; docs/howto/deploy-with-history.md).

`deploy` records generation N+1 in the registry (`generations.registry`) with the configuration,
starts its workers (child `conversions worker` processes with `CONVERSIONS_GENERATION=N+1`, or
none: the operator starts them on other hosts), which read the clickstream from the earliest
retained offset in consumer groups of their own while the current generation serves. It shows
the progress (event time reached, lag per partition against the live head, time left), writes it
to the registry for the dashboard, and flips `current` once the new generation has caught up.
With `--history`, archived exports are first read by offline mode and handed over to the new
generation, which continues at the offsets after the archive (`generations.history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streams.core.config.durations import format_duration_ms
from streams.core.config.horizon import history_needs, short_needs
from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.config.model import FunnelConfig
from streams.core.config.versions import config_fingerprint
from streams.counters.redis_store import RedisClient, counter_store, redis_client
from streams.generations.history import History, HistoryError, check_offsets, discard, hand_over, run_history
from streams.generations.naming import base_app_id, consumer_groups, generation_settings, ingest_group
from streams.generations.registry import Generation, Registry, RegistryError
from streams.kafka.clients import new_admin, new_consumer
from streams.kafka.groups import delete_groups
from streams.kafka.retention import Retained, read_ends, retained_range
from streams.kafka.topics import changelog_topic, required_topics
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess

Say = Callable[[str], None]


@dataclass
class Progress:
    """A reprocessing generation against the current one, at one moment."""

    lag: dict[str, int]
    """Clickstream `topic/partition` -> records the new generation's ingest has not committed."""
    events_lag: int
    """Repartitioned events its journeys have not committed."""
    event_ms: int | None
    """The latest event time its counters have counted."""
    live_event_ms: int | None
    """...and the current generation's."""
    eta_s: float | None = None
    at: float = field(default_factory=time.time)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values()) + self.events_lag

    def caught_up(self, max_lag: int, tolerance_ms: int) -> bool:
        if self.total_lag > max_lag:
            return False
        if self.live_event_ms is None:
            return True
        return self.event_ms is not None and self.event_ms >= self.live_event_ms - tolerance_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "lag": self.lag,
            "events_lag": self.events_lag,
            "total_lag": self.total_lag,
            "event_ms": self.event_ms,
            "live_event_ms": self.live_event_ms,
            "eta_s": self.eta_s,
            "at_ms": int(self.at * 1000),
        }

    def line(self) -> str:
        reached = _moment(self.event_ms)
        behind = (
            _behind(self.live_event_ms - self.event_ms)
            if self.event_ms is not None and self.live_event_ms is not None
            else "live: none counted"
            if self.live_event_ms is None
            else "nothing counted yet"
        )
        eta = f"{self.eta_s:.0f} s left" if self.eta_s is not None else "time left: measuring"
        worst = max(self.lag.items(), key=lambda kv: kv[1], default=("-", 0))
        return (
            f"event time {reached} ({behind}); lag {self.total_lag} "
            f"(clickstream {sum(self.lag.values())}, worst {worst[0]} {worst[1]}; "
            f"events {self.events_lag}); {eta}"
        )


def _behind(ms: int) -> str:
    seconds = max(0, ms) // 1000
    return (format_duration_ms(seconds * 1000) if seconds else "0s") + " behind"


def _moment(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


async def _group_lag(
    settings: Settings, group: str, tps: list[TopicPartition], ends: dict[Any, int]
) -> dict[str, int]:
    """Per partition, the records past the group's committed offset (OffsetFetch through a
    consumer of the group that never joins it: Tansu drops the admin client's request)."""
    consumer = new_consumer(settings, group_id=group)
    await consumer.start()
    try:
        lag = {}
        for tp in tps:
            done = await consumer.committed(tp)
            lag[f"{tp.topic}/{tp.partition}"] = max(
                0, ends[tp] - (done if done is not None and done >= 0 else 0)
            )
        return lag
    finally:
        await consumer.stop()


class Watcher:
    """Measures a generation's progress against the current one, with a rate for the time left."""

    def __init__(self, base: Settings, new: Settings, redis: RedisClient) -> None:
        self.base, self.new = base, new
        self.redis = redis
        self._samples: list[tuple[float, int]] = []

    async def measure(self, current_app_id: str) -> Progress:
        s = self.new
        consumer = new_consumer(s)
        await consumer.start()
        try:
            sources = [
                TopicPartition(t, p)
                for t in (s.topic(name) for name in s.topic_clickstream)
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            events_topic = s.topic(s.topic_events)
            events = [TopicPartition(events_topic, p) for p in range(s.partitions)]
            ends = await read_ends(consumer, sources + events)
        finally:
            await consumer.stop()
        lag = await _group_lag(s, ingest_group(s), sources, ends)
        events_lag = sum((await _group_lag(s, s.app_id, events, ends)).values())
        new_ms = await counter_store(s, self.redis).latest_event_ms()
        live = self.base.model_copy(update={"app_id": current_app_id})
        live_ms = await counter_store(live, self.redis).latest_event_ms()
        progress = Progress(lag, events_lag, new_ms, live_ms)
        self._samples.append((progress.at, progress.total_lag))
        self._samples = self._samples[-10:]
        (t0, lag0), (t1, lag1) = self._samples[0], self._samples[-1]
        if t1 > t0 and lag0 > lag1:
            progress.eta_s = lag1 / ((lag0 - lag1) / (t1 - t0))
        return progress


async def last_offsets(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after each partition's last record, read: Tansu reports as the end offset the
    start of the last batch plus one, short of the batch's other records (`read_ends`)."""
    consumer = new_consumer(settings)
    await consumer.start()
    try:
        return await read_ends(consumer, tps)
    finally:
        await consumer.stop()


async def seam(base: Settings, new: Settings) -> dict[str, dict[str, int]]:
    """The end offsets of the new generation's output topics (its relay starts there) and of the
    live ones (what arrives there after it, the old generation's last words, is not relayed
    twice): `generations.relay`."""
    found: dict[str, dict[str, int]] = {}
    for name, settings in (("from", new), ("live", base)):
        tps = [
            TopicPartition(t, p)
            for t in sorted(set(settings.output_topics.values()))
            for p in range(settings.partitions)
        ]
        ends = await last_offsets(base, tps)
        found[name] = {f"{tp.topic}/{tp.partition}": ends[tp] for tp in tps}
    return found


def retention_report(retained: Retained, config_text: str, say: Say, archived: int = 0) -> list[str]:
    """Says how far back the new configuration's history reaches; the refused needs' lines.
    `archived`: events read from an archive before it (`--history`; `retained.earliest_ms` is then
    the archive's earliest and `retained.offsets` start at the seam)."""
    span = retained.span_ms()
    config = parse_config(config_text)
    if retained.earliest_ms is None:
        say("history: the clickstream topics hold no records; the new funnels start from now")
    else:
        say(
            f"history: {retained.records} records retained"
            + (f" after the archive's seam, {archived} archived events before it" if archived else "")
            + f", from {_moment(retained.earliest_ms)} "
            f"({format_duration_ms(span // 60_000 * 60_000 or 60_000)} back): the new generation's funnels "
            "reach back that far"
        )
    for topic, ms in sorted(retained.retention_ms.items()):
        kept = (
            f"retention.ms {ms} ({format_duration_ms(ms)})" if ms is not None else "retention.ms not reported"
        )
        say(f"  {topic}: {kept}")
    needs = history_needs(config)
    for need in needs:
        say("  " + need.line(span))
    refused, warned = short_needs(needs, span)
    for need in warned:
        say(
            f"warning: {need.what} is {format_duration_ms(need.ms)}: links made before the "
            "history are not known"
        )
    return [need.what for need in refused]


async def deploy(
    base: Settings,
    config_text: str,
    say: Say,
    workers: int = 1,
    accept_short_history: bool = False,
    cut_over: bool = True,
    max_lag: int = 0,
    tolerance_ms: int = 60_000,
    every_s: float = 2.0,
    web_port: int | None = None,
    log_dir: Path | None = None,
    history_files: Sequence[Path] = (),
    history_offsets: dict[str, int] | None = None,
) -> int:
    """The whole deploy; returns the exit status (0 cut over or recorded, 1 refused).
    `history_files`: archived exports read first by offline mode and handed over to the new
    generation, which continues at `history_offsets` (`generations.history`)."""
    new_config = parse_config(config_text, "the new configuration")
    retained = await retained_range(base)
    history: History | None = None
    if history_files:
        assert history_offsets is not None, "--history needs --history-offsets"
        try:  # before the offline run, which may last hours: `create` would refuse after it
            await _check_free(base)
        except RegistryError as exc:
            say(f"refused: {exc}")
            return 1
        problems = check_offsets(history_offsets, retained.offsets)
        if problems:
            say("refused: the history's hand-off offsets do not meet the clickstream topics:")
            for problem in problems:
                say(f"  {problem}")
            return 1
        started = time.monotonic()
        history = await asyncio.to_thread(
            run_history,
            base,
            compile_config(new_config),
            history_files,
            (log_dir or base.data_dir / "generations"),
        )
        run = history.run
        say(
            f"history: {run.lines} lines, {run.events} events ({run.rejected} rejected) from "
            f"{len(history_files)} file(s) in {time.monotonic() - started:.1f} s, "
            f"{_moment(run.earliest_ms)} to {_moment(run.latest_event_ms)}; Kafka continues at "
            + ", ".join(f"{name} {offset}" for name, offset in sorted(history_offsets.items()))
        )
        # the records Kafka keeps before the seam are the archive's too: counted once, there
        after_seam = {
            name: (max(first, history_offsets.get(name, first)), end)
            for name, (first, end) in retained.offsets.items()
        }
        retained = replace(retained, offsets=after_seam)
        if run.earliest_ms is not None:
            earliest = min(run.earliest_ms, retained.earliest_ms or run.earliest_ms)
            retained = replace(retained, earliest_ms=earliest)
    try:
        return await _deploy(
            base,
            config_text,
            new_config,
            retained,
            say,
            workers=workers,
            accept_short_history=accept_short_history,
            cut_over=cut_over,
            max_lag=max_lag,
            tolerance_ms=tolerance_ms,
            every_s=every_s,
            web_port=web_port,
            log_dir=log_dir,
            history=history,
            history_offsets=history_offsets,
        )
    finally:
        if history is not None:
            discard(history)


async def _check_free(base: Settings) -> None:
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    try:
        await Registry(redis, base_app_id(base)).check_free()
    finally:
        await redis.aclose()


async def _deploy(
    base: Settings,
    config_text: str,
    new_config: FunnelConfig,
    retained: Retained,
    say: Say,
    *,
    workers: int,
    accept_short_history: bool,
    cut_over: bool,
    max_lag: int,
    tolerance_ms: int,
    every_s: float,
    web_port: int | None,
    log_dir: Path | None,
    history: History | None,
    history_offsets: dict[str, int] | None,
) -> int:
    refused = retention_report(retained, config_text, say, history.run.events if history is not None else 0)
    if refused and not accept_short_history:
        say(
            f"refused: the retained history is shorter than {', '.join(refused)}; their first answers "
            "would be incomplete. Deploy anyway with --accept-short-history"
        )
        return 1
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    registry = Registry(redis, base_app_id(base))
    children: list[WorkerProcess] = []
    try:
        current = await registry.ensure_first(
            base.funnels.read_text(), config_fingerprint(parse_config(base.funnels.read_text()))
        )
        try:
            generation = await registry.create(
                config_text, config_fingerprint(new_config), "history" if history is not None else None
            )
        except RegistryError as exc:
            say(f"refused: {exc}")
            return 1
        say(
            f"generation {generation.number} recorded ({generation.app_id}); generation {current.number} "
            f"({current.app_id}) keeps serving"
        )
        new = generation_settings(base, generation.number)
        if history is not None:
            assert history_offsets is not None
            try:
                await hand_over(new, history, history_offsets, say)
            except HistoryError as exc:
                say(f"refused: {exc}")
                say(
                    f"generation {generation.number} is left pending (its workers are refused): "
                    f"`conversions generations --abandon {generation.number}`, then deploy again "
                    "with an archive that reaches what Kafka keeps"
                )
                return 1
            await registry.ready(generation.number)
        say(f"more workers, on any host: CONVERSIONS_GENERATION={generation.number} conversions worker")
        log_dir = log_dir or base.data_dir / "generations"
        for i in range(workers):
            env = {"CONVERSIONS_GENERATION": str(generation.number)}
            env["CONVERSIONS_WEB_ENABLED"] = "true" if (web_port is not None and i == 0) else "false"
            if web_port is not None and i == 0:
                env["CONVERSIONS_WEB_PORT"] = str(web_port)
            child = WorkerProcess(env, log_dir / f"g{generation.number}-w{i}.log")
            children.append(child.start(wait_ready_s=120.0))
        start = "the history's hand-off offsets" if history is not None else "the earliest retained offset"
        say(f"{workers} worker(s) started, reprocessing from {start}")
        watcher = Watcher(base, new, redis)
        while True:
            progress = await watcher.measure(current.app_id)
            await registry.set_progress(generation.number, progress.to_json())
            say(f"g{generation.number}: {progress.line()}")
            if cut_over and progress.caught_up(max_lag, tolerance_ms):
                break
            if any(not c.running for c in children):
                say("a reprocessing worker exited: see its log in " + str(log_dir))
                return 1
            await asyncio.sleep(every_s)
        await registry.set_seam(generation.number, await seam(base, new))
        if not await registry.flip(current.number, generation.number):
            say("refused: the current generation changed meanwhile (another deploy or a rollback)")
            return 1
        say(
            f"cut over: generation {generation.number} is current; generation {current.number}'s workers "
            "stop; `conversions rollback` returns to it while its topics and keys are kept "
            f"(until `conversions generations --delete {current.number}`)"
        )
        if children:
            say("the new generation's workers run under this command: Ctrl-C stops them")
            await asyncio.to_thread(_wait_all, children)
        return 0
    finally:
        for child in children:
            child.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()


def _wait_all(children: list[WorkerProcess]) -> None:
    for child in children:
        if child.process is not None:
            child.process.wait()


async def rollback(base: Settings, say: Say) -> int:
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    try:
        registry = Registry(redis, base_app_id(base))
        current, previous = await registry.current_number(), await registry.previous_number()
        if previous is None or await registry.get(previous) is None:
            say(f"refused: no previous generation to return to (current: {current})")
            return 1
        if not await registry.flip(current, previous):
            say("refused: the current generation changed meanwhile")
            return 1
        say(
            f"rolled back: generation {previous} is current again; generation {current}'s workers stop. "
            f"Start generation {previous}'s workers (`conversions worker`): they resume where they stopped"
        )
        return 0
    finally:
        await redis.aclose()


async def list_generations(base: Settings) -> tuple[int, list[Generation]]:
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    try:
        registry = Registry(redis, base_app_id(base))
        return await registry.current_number(), await registry.all()
    finally:
        await redis.aclose()


async def abandon_generation(base: Settings, number: int, say: Say) -> int:
    """A reprocessing generation retired without a cut-over; `generations --delete` frees it."""
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    try:
        try:
            await Registry(redis, base_app_id(base)).abandon(number)
        except RegistryError as exc:
            say(f"refused: {exc}")
            return 1
        say(f"generation {number} abandoned (retired): its workers stop; `--delete {number}` frees it")
        return 0
    finally:
        await redis.aclose()


async def delete_generation(base: Settings, number: int, grace_ms: int, say: Say) -> int:
    """A retired generation's topics (internal, outputs, changelog) and counter keys deleted, then
    its record: refused within `grace_ms` of its retirement (the time left for a rollback)."""
    assert base.redis_dsn, "REDIS_URL must be set"
    redis = redis_client(base.redis_dsn, socket_timeout=10)
    try:
        registry = Registry(redis, base_app_id(base))
        generation = await registry.get(number)
        if generation is None or generation.state != "retired" or generation.retired_ms is None:
            say(f"refused: generation {number} is not retired")
            return 1
        left = generation.retired_ms + grace_ms - int(time.time() * 1000)
        if left > 0:
            say(
                f"refused: generation {number} retired less than the grace period ago ({left // 1000} s left)"
            )
            return 1
        old = generation_settings(base, number)
        clickstream = {old.topic(t) for t in old.topic_clickstream}
        doomed = [t for t in required_topics(old) if t not in clickstream]
        if number == 0:  # generation 0 wrote the live topics: those stay
            doomed = [changelog_topic(old, "journeys"), old.topic(old.topic_events)]
        admin = new_admin(base)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            gone = [t for t in doomed if t in existing]
            if gone:
                await admin.delete_topics(gone)
        finally:
            await admin.close()
        kept = [f"{g} ({why})" for g, why in (await delete_groups(base, consumer_groups(old))).items() if why]
        if kept:
            say("consumer groups not deleted: " + ", ".join(kept))
        keys = 0
        async for key in redis.scan_iter(match=f"conv:{{{generation.app_id}:*", count=1_000):
            keys += int(await redis.unlink(key))
        await registry.forget(number)
        say(f"generation {number} deleted: {len(gone)} topics, its consumer groups, {keys} Redis keys")
        return 0
    finally:
        await redis.aclose()
