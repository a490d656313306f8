"""A replay of unkeyed input: how many events reach their journey late (`python -m bench.replay_order`).

`make bench`'s batches of 100 events are produced without a key, so one person's events are
spread over the input partitions, and the whole traffic (two days of the simulated shop) waits
on the topic: ingest reads hours of event time per run. A journey refuses an event older than
its latest by more than the late tolerance (`late_event`, dead-lettered). How many that makes
depends on how ingest interleaves the partitions; offline mode, reading the lines in order,
refuses none.

This sends the same batches to fixed partitions (message i to partition i % 4, so every run of
it sees the same input), then one far-future tick per partition (which moves event time past
every deadline), lets one worker (counters inside) handle them until the outputs stay still, and
counts the outputs by type and the dead letters by reason, beside offline mode's outputs over the
same events in their order (`offline`). `python -m bench.replay_order 2` runs two workers in one
group (with `CONVERSIONS_INGEST_ASSIGNMENT=one`, the default, one of them reads every partition;
with `spread`, each ingest consumer aligns only its own). Run it at two commits to compare
them (bench/results/replay_order.json keeps the last run, replay_order_2_workers.json two
workers').
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import COUNTED, Run, batched, metrics, say, traffic
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.kafka import ensure_topics, kafka_client_options
from streams.kafka.changelog import read_to_end
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import LocalInfra, free_port

ROOT = Path(__file__).resolve().parent
QUIET_S = 20.0


async def replay(infra: LocalInfra, workdir: Path, events: int, workers: int = 1) -> dict[str, Any]:
    lines = traffic(events)
    messages = batched(lines)
    ticks = _ticks(lines, 4)
    run = Run(infra, workdir, "ord")
    run.env["CONVERSIONS_SOURCE_IDLE_S"] = "4"
    await ensure_topics(run.settings)
    producer = AIOKafkaProducer(**kafka_client_options(run.settings))
    await producer.start()
    try:
        for i, message in enumerate(messages):
            await producer.send(run.source, message, partition=i % run.settings.partitions)
        for partition, tick in enumerate(ticks):
            await producer.send(run.source, tick, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    ports = [free_port() for _ in range(workers)]
    started = [
        run.worker(web_port=port, name="worker" if i == 0 else f"worker{i}").start(wait_ready_s=0)
        for i, port in enumerate(ports)
    ]
    outputs: dict[str, float] = {}
    changed = time.monotonic()
    try:
        while time.monotonic() - changed < QUIET_S:
            scraped = [metrics(port) for port in ports]
            now = {
                kind: sum(one.get(f'conversions_outputs_total{{type="{kind}"}}', 0.0) for one in scraped)
                for kind in COUNTED
            }
            if now != outputs:
                outputs, changed = now, time.monotonic()
            await asyncio.sleep(0.5)
    finally:
        for worker in started:
            worker.stop()
    dead = await _dead_letters(run)
    offline = _offline(run.settings, lines + ticks)
    found = {kind: int(count) for kind, count in outputs.items()}
    return {
        "workers": workers,
        "events": sum(len(decode_message(line).events) for line in lines),
        "messages": len(messages),
        "outputs": found,
        "outputs_total": int(sum(outputs.values())),
        "dead_letters": dict(Counter(letter["reason"] for letter in dead)),
        "offline": offline,
        "equal_offline": found == offline,
    }


def _ticks(lines: list[bytes], partitions: int) -> list[bytes]:
    """One event per partition 60 days after the last: every session and attempt ends."""
    end = datetime.fromisoformat(orjson.loads(lines[-1])["timestamp"]) + timedelta(days=60)
    return [
        orjson.dumps(
            {"event_id": f"tick-{p}", "event": "tick", "user_id": f"tick-{p}", "timestamp": end.isoformat()}
        )
        for p in range(partitions)
    ]


def _offline(settings: Settings, lines: list[bytes]) -> dict[str, int]:
    """Offline mode's outputs by type over the same events, in their order."""
    run = OfflineRun(compile_config(load_config(settings.funnels)), settings.partitions)
    found = Counter(output.type for output in run.run(lines))
    return {kind: found[kind] for kind in COUNTED}


async def _dead_letters(run: Run) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def collect(_: int, records: Sequence[Any], __: int) -> int:
        found.extend(orjson.loads(record.value or b"{}") for record in records)
        return len(records)

    topic = run.settings.topic(run.settings.topic_deadletter)
    partitions = list(range(run.settings.partitions))
    await read_to_end(run.settings, topic, partitions, lambda _: -1, collect, "dead letters")
    return found


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    workdir = ROOT.parent / "var" / "bench" / "replay-order"
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalInfra(workdir=workdir / "infra") as infra:
        result = asyncio.run(replay(infra, workdir, 40_000, workers))
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["command"] = "python -m bench.replay_order" + (f" {workers}" if workers > 1 else "")
    say(
        f"outputs {result['outputs_total']:,}, dead letters {result['dead_letters']}, "
        f"offline {sum(result['offline'].values()):,} (equal by type: {result['equal_offline']})"
    )
    text = json.dumps(result, indent=2)
    name = "replay_order.json" if workers == 1 else f"replay_order_{workers}_workers.json"
    (ROOT / "results" / name).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
