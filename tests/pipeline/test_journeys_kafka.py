"""The journey engine through the real broker and worker: the same outputs as offline mode,
and journeys that survive a worker restart through the table's changelog."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.journeys.engine import partition_for
from streams.kafka import ensure_topics
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.producer import clickstream_producer, produce_lines
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess
from tests.helpers import comparable, read_topics

SOURCE_IDLE = {"CONVERSIONS_SOURCE_IDLE_S": "300"}


def traffic(users: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Simulated lines, and one far-future tick per source partition that closes the input:
    it moves every source's watermark past every deadline, on Kafka as offline."""
    sim = Simulator(seed=seed, users=users, days=3, bad_rate=0.01)
    lines = list(sim.lines())
    end = sim.start + timedelta(days=60)
    ticks = [
        orjson.dumps(
            {
                "event_id": f"tick-{p}",
                "event": "tick",
                "user_id": f"tick-{p}",
                "timestamp": end.isoformat(),
            }
        )
        for p in range(4)
    ]
    return lines, ticks


def offline_outputs(settings: Settings, lines: list[bytes]) -> list[dict[str, Any]]:
    run = OfflineRun(
        compile_config(load_config(settings.funnels)), settings.partitions, enrichment=settings.enrichment()
    )
    return [orjson.loads(o.to_json()) for o in run.run(lines)]


async def send_ticks(settings: Settings, ticks: list[bytes]) -> None:
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for partition, tick in enumerate(ticks):
            await producer.send_and_wait(settings.topic("clickstream"), tick, partition=partition)
    finally:
        await producer.stop()


def canonical(outputs: list[dict[str, Any]]) -> Counter[bytes]:
    return Counter(orjson.dumps(comparable(o), option=orjson.OPT_SORT_KEYS) for o in outputs)


def unique_by_id(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a consumer deduplicating on `id` keeps (at-least-once may repeat a record)."""
    seen: dict[str, dict[str, Any]] = {}
    for output in outputs:
        previous = seen.setdefault(output["id"], output)
        assert previous == output, f"one id, two contents: {previous} != {output}"
    return list(seen.values())


async def test_kafka_path_equals_offline_mode(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    lines, ticks = traffic(users=600, seed=11)
    expected = offline_outputs(settings, lines + ticks)
    assert {o["type"] for o in expected} >= {
        "micro",
        "macro",
        "dropoff",
        "stalled",
        "session",
        "deadletter",
        "identity",
    }
    merged = {o["anonymous_id"] for o in expected if o["type"] == "identity"}
    partitions = settings.partitions
    # the simulated shop stitches: people sign in at checkout, some on a second device, and most
    # anonymous ids hash to another partition than their user's, so items travel between them
    assert len(merged) > 50
    assert (
        sum(
            partition_for(o["anonymous_id"], partitions) != partition_for(o["user_id"], partitions)
            for o in expected
            if o["type"] == "identity"
        )
        > len(merged) // 2
    )

    await ensure_topics(settings)
    start_worker(env=SOURCE_IDLE)
    await produce_lines(settings, lines)
    await send_ticks(settings, ticks)
    topics = sorted(set(settings.output_topics.values()))
    actual = await read_topics(settings, topics, expect=len(expected))

    assert len(actual) == len({o["id"] for o in actual}), "a clean run repeats no id"
    assert canonical(actual) == canonical(expected), _debug_diff(actual, expected)


async def test_journeys_resume_from_the_changelog_after_a_restart(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    lines, ticks = traffic(users=400, seed=23)
    expected = offline_outputs(settings, lines + ticks)
    half = len(lines) // 2
    topics = sorted(set(settings.output_topics.values()))

    await ensure_topics(settings)
    first = start_worker("first", env=SOURCE_IDLE)
    await produce_lines(settings, lines[:half])
    before = await read_topics(settings, topics, quiet_s=4.0)
    assert before, "the first worker produced outputs"
    assert first.stop() == 0

    second = start_worker("second", env=SOURCE_IDLE)
    recovered = [line for line in second.log_text().splitlines() if "journeys recovered" in line]
    assert recovered and " 0 journeys" not in recovered[-1], recovered
    await produce_lines(settings, lines[half:])
    await send_ticks(settings, ticks)
    actual = await read_topics(settings, topics, expect=len(expected))

    assert canonical(unique_by_id(actual)) == canonical(expected)


async def test_a_restarted_worker_remembers_how_far_sources_that_have_finished_had_got(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Event time survives a restart: three source partitions end (their ticks consumed and
    committed) before the restart and never speak again; the fourth's tick after it must
    then be enough to fire every deadline, without waiting for the others to go idle."""
    lines, ticks = traffic(users=300, seed=29)
    expected = offline_outputs(settings, lines + ticks)
    topics = sorted(set(settings.output_topics.values()))

    await ensure_topics(settings)
    first = start_worker("first", env=SOURCE_IDLE)
    await produce_lines(settings, lines)
    producer = clickstream_producer(settings)
    await producer.start()
    try:
        for partition, tick in enumerate(ticks[1:], 1):
            await producer.send_and_wait(settings.topic("clickstream"), tick, partition=partition)
    finally:
        await producer.stop()
    await read_topics(settings, topics, quiet_s=4.0)
    assert first.stop() == 0

    start_worker("second", env=SOURCE_IDLE)
    await send_ticks(settings, ticks[:1])
    actual = await read_topics(settings, topics, expect=len(expected), timeout_s=60.0)

    assert canonical(unique_by_id(actual)) == canonical(expected), _debug_diff(unique_by_id(actual), expected)


@pytest.mark.parametrize("partitions", [1])
async def test_single_partition_source_needs_no_ticks_for_equivalence_of_conversions(
    settings: Settings, start_worker: Callable[..., WorkerProcess], partitions: int
) -> None:
    """Conversions (micro, macro) do not wait for watermarks: they match offline at once."""
    lines, _ = traffic(users=200, seed=5)
    expected = [o for o in offline_outputs(settings, lines) if o["type"] in {"micro", "macro"}]
    await ensure_topics(settings)
    start_worker(env=SOURCE_IDLE)
    await produce_lines(settings, lines)
    topics = [settings.topic(settings.topic_micro), settings.topic(settings.topic_macro)]
    actual = await read_topics(settings, topics, expect=len(expected))
    assert canonical(actual) == canonical(expected)


def _debug_diff(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> str:
    a, e = canonical(actual), canonical(expected)
    only_a = sorted((a - e).elements())
    only_e = sorted((e - a).elements())
    return (
        "\nONLY KAFKA:\n"
        + "\n".join(x.decode() for x in only_a[:30])
        + "\nONLY OFFLINE:\n"
        + "\n".join(x.decode() for x in only_e[:30])
    )
