"""The engine's output codecs compared (`python -m bench.compression`): for each value of
`CONVERSIONS_OUTPUT_COMPRESSION` (none, gzip, snappy, lz4, zstd), one worker handles the same
keyed single-event traffic waiting on the topic, and the bench reports its events/s (from the
worker ready to the outputs no longer growing), the bytes its record batches take on the output
topics (each batch as fetched back from the broker, compressed as stored) and on the internal
events topic, and the worker's CPU time per event.

The traffic is `make bench`'s simulated shop; every codec gets its own app id and topics on one
broker. Results in bench/results/compression.json; the default codec is chosen from them
(settings.py says why).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import TopicPartition

from bench.harness import COUNTED, Run, metrics, produce, say, traffic
from streams.kafka import ensure_topics
from streams.kafka import undecodable as guard
from streams.kafka.clients import new_consumer
from streams.tools.infra import LocalInfra, free_port

ROOT = Path(__file__).resolve().parent
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
EVENTS = 20_000
QUIET_S = 6.0


async def stored_bytes(run: Run, topics: list[str]) -> dict[str, int]:
    """The bytes of every record batch on these topics, as the broker hands them back."""
    sizes: dict[tuple[Any, int], int] = {}
    decode = guard._GuardedRecords._decode

    def measured(self: Any, data: memoryview, base_offset: int) -> Any:
        sizes[(self.tp, base_offset)] = len(data)
        return decode(self, data, base_offset)

    guard._GuardedRecords._decode = measured  # type: ignore[method-assign]
    consumer = new_consumer(run.settings, cls=guard.GuardedConsumer)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in range(run.settings.partitions)]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            if await consumer.getmany(timeout_ms=300, max_records=50_000):
                quiet_since = time.monotonic()
        assert all([await consumer.position(tp) >= ends[tp] for tp in partitions])
    finally:
        await consumer.stop()
        guard._GuardedRecords._decode = decode  # type: ignore[method-assign]
    by_topic: dict[str, int] = defaultdict(int)
    for (tp, _), size in sizes.items():
        by_topic[tp.topic] += size
    return dict(by_topic)


async def one(infra: LocalInfra, workdir: Path, codec: str, lines: list[bytes]) -> dict[str, Any]:
    run = Run(infra, workdir, f"z{codec}")
    run.env["CONVERSIONS_OUTPUT_COMPRESSION"] = codec
    await ensure_topics(run.settings)
    await produce(run.settings, run.source, lines, keyed=True)
    port = free_port()
    worker = run.worker(web_port=port)
    worker.start(wait_ready_s=120)
    assert worker.process is not None
    process = psutil.Process(worker.process.pid)
    cpu_at_start = process.cpu_times()
    started = changed = time.monotonic()
    outputs: dict[str, float] = {}
    try:
        while time.monotonic() - changed < QUIET_S:
            found = metrics(port)
            now = {kind: found.get(f'conversions_outputs_total{{type="{kind}"}}', 0.0) for kind in COUNTED}
            if now != outputs:
                outputs, changed = now, time.monotonic()
            await asyncio.sleep(0.25)
        cpu = process.cpu_times()
    finally:
        worker.stop()
    cpu_s = (cpu.user + cpu.system) - (cpu_at_start.user + cpu_at_start.system)
    output_topics = sorted(set(run.settings.output_topics.values()) - {run.settings.output_topics["alert"]})
    sizes = await stored_bytes(run, [*output_topics, run.settings.topic(run.settings.topic_events)])
    events_topic = sizes.pop(run.settings.topic(run.settings.topic_events), 0)
    return {
        "codec": codec,
        "events": len(lines),
        "events_per_s": round(len(lines) / (changed - started), 1),
        "worker_cpu_us_per_event": round(cpu_s / len(lines) * 1e6, 1),
        "outputs": int(sum(outputs.values())),
        "output_bytes": sum(sizes.values()),
        "output_bytes_by_topic": sizes,
        "events_topic_bytes": events_topic,
    }


async def compare(infra: LocalInfra, workdir: Path, events: int) -> list[dict[str, Any]]:
    lines = traffic(events)
    results = []
    for codec in CODECS:
        result = await one(infra, workdir, codec, lines)
        say(
            f"{codec}: {result['events_per_s']:,} events/s, {result['output_bytes']:,} output bytes, "
            f"{result['events_topic_bytes']:,} on the events topic, "
            f"{result['worker_cpu_us_per_event']} us CPU/event"
        )
        results.append(result)
    return results


def main() -> None:
    workdir = ROOT.parent / "var" / "bench" / "compression"
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalInfra(workdir=workdir / "infra") as infra:
        results = asyncio.run(compare(infra, workdir, EVENTS))
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.compression",
        "results": results,
    }
    text = json.dumps(document, indent=2)
    (ROOT / "results" / "compression.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
