"""Scale-out and the production store: two workers split the partitions and a crashed one's
journeys move to the other with nothing lost; a worker on a RocksDB store restarts from its
disk with nothing lost."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from tests.helpers import read_topics
from tests.pipeline.test_journeys_kafka import (
    SOURCE_IDLE,
    _debug_diff,
    canonical,
    offline_outputs,
    send_ticks,
    traffic,
    unique_by_id,
)

# a long crash or outage simulation: `make test-slow`, not every `make test`
pytestmark = pytest.mark.slow

RECOVERED = re.compile(r"journeys recovered: (\d+) journeys in partitions \[([\d, ]*)\]")
CHANGELOG_READ = re.compile(r"journeys: read (\d+) changelog records")


def owned(worker: WorkerProcess) -> tuple[int, set[int]] | None:
    """(journeys indexed, partitions) from the worker's latest recovery line."""
    found = RECOVERED.findall(worker.log_text())
    if not found:
        return None
    count, partitions = found[-1]
    return int(count), {int(p) for p in partitions.split(",") if p.strip()}


async def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.5)


async def test_two_workers_split_the_partitions_and_a_killed_ones_journeys_move_over(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    lines, ticks = traffic(users=600, seed=31)
    expected = offline_outputs(settings, lines + ticks)
    topics = sorted(set(settings.output_topics.values()))
    third = len(lines) // 3

    await ensure_topics(settings)
    first = start_worker("first", env={**SOURCE_IDLE, "CONVERSIONS_DATA_DIR": str(tmp_path / "a")})
    await produce_lines(settings, lines[:third])
    second = start_worker("second", env={**SOURCE_IDLE, "CONVERSIONS_DATA_DIR": str(tmp_path / "b")})

    def split() -> bool:
        a, b = owned(first), owned(second)
        return bool(a and b and a[1] and b[1] and a[1] | b[1] == {0, 1, 2, 3} and not a[1] & b[1])

    await wait_until(split, "both workers own a share of the partitions")
    await produce_lines(settings, lines[third : 2 * third])
    await read_topics(settings, topics, quiet_s=3.0)  # both have worked on their shares

    first.kill()
    await wait_until(
        lambda: (owned(second) or (0, set()))[1] == {0, 1, 2, 3}, "the survivor owns every partition"
    )
    survivor = owned(second)
    assert survivor is not None and survivor[0] > 0, "the moved journeys were recovered"
    await produce_lines(settings, lines[2 * third :])
    await send_ticks(settings, ticks)
    actual = await read_topics(settings, topics, expect=len(expected), quiet_s=8.0, timeout_s=90.0)

    assert canonical(unique_by_id(actual)) == canonical(expected), _debug_diff(unique_by_id(actual), expected)


async def test_a_worker_with_a_rocksdb_store_keeps_its_journeys_on_disk_and_resumes_after_a_restart(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    lines, ticks = traffic(users=400, seed=37)
    expected = offline_outputs(settings, lines + ticks)
    half = len(lines) // 2
    topics = sorted(set(settings.output_topics.values()))
    rocks = {**SOURCE_IDLE, "CONVERSIONS_TABLE_STORE": "rocksdb://"}

    await ensure_topics(settings)
    first = start_worker("first", env=rocks)
    await produce_lines(settings, lines[:half])
    await read_topics(settings, topics, quiet_s=4.0)
    assert first.stop() == 0
    assert await asyncio.to_thread(lambda: list(Path(settings.data_dir).rglob("*journeys*"))), "on disk"

    second = start_worker("second", env=rocks)
    recovered = owned(second)
    assert recovered is not None and recovered[0] > 0, "journeys come back"
    # from its own disk: the changelog is read only past the last write it had acknowledged
    # (every journey was written at least once, so a full read would be at least this many)
    read = [int(n) for n in CHANGELOG_READ.findall(second.log_text())]
    assert read and read[-1] < recovered[0] // 10, (read, recovered)
    await produce_lines(settings, lines[half:])
    await send_ticks(settings, ticks)
    actual = await read_topics(settings, topics, expect=len(expected), quiet_s=6.0)

    assert canonical(unique_by_id(actual)) == canonical(expected)
