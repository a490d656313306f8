"""`deploy --history` against offline mode, on the same events
(`python -m bench.history_handoff [EVENTS [WORKERS]]`; issue 26).

The simulated shop's traffic: its first three quarters are the archive file, Kafka holds the last
quarter plus 1,000 records of overlap (keyed by identity, as `bench.reprocessing`). `deploy` (the
same function as `conversions deploy --history`) reads the archive offline, hands it over to
generation 1 and starts WORKERS (1) workers, which continue at the offsets after the archive and
cut over once their lag is zero (no generation 0 runs: nothing to wait for). Figures: the offline
run over the archive, the hand-off (outputs, journeys, markers, offsets written), the workers from
the hand-off to the cut-over, and `conversions process` over the whole file in the same run.
bench/results/history_handoff.json keeps the last run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import RESULTS, Run, say, traffic
from bench.reprocessing import offline
from streams.kafka import ensure_topics
from streams.kafka.clients import kafka_client_options
from streams.settings import DEFAULT_FUNNELS
from streams.tools.deploy import deploy
from streams.tools.infra import LocalInfra

OVERLAP = 1_000


async def produce_tail(run: Run, lines: list[bytes], archived: int) -> dict[str, int]:
    """lines[archived - OVERLAP:] to the clickstream, keyed; the first offset after the archive
    per partition."""
    producer = AIOKafkaProducer(**kafka_client_options(run.settings), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        sent = []
        for line in lines[archived - OVERLAP :]:
            event = orjson.loads(line)
            key = (event.get("anonymous_id") or event.get("user_id") or "").encode() or None
            sent.append(await producer.send(run.source, line, key=key))
        seam: dict[str, int] = {}
        for index, future in enumerate(sent, archived - OVERLAP):
            metadata = await future
            name = f"{run.source}/{metadata.partition}"
            if index < archived:
                seam[name] = max(seam.get(name, 0), metadata.offset + 1)
            else:
                seam.setdefault(name, metadata.offset)
        for partition in range(run.settings.partitions):
            seam.setdefault(f"{run.source}/{partition}", 0)
        return seam
    finally:
        await producer.stop()


async def main(events: int, workers: int = 1) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, LocalInfra(workdir=Path(tmp) / "infra") as infra:
        run = Run(infra, Path(tmp), "handoff")
        lines = traffic(events)
        archived = len(lines) * 3 // 4
        whole = Path(tmp) / "events.ndjson"
        whole.write_bytes(b"\n".join(lines) + b"\n")
        archive = Path(tmp) / "archive.ndjson"
        archive.write_bytes(b"\n".join(lines[:archived]) + b"\n")
        started = time.monotonic()
        await asyncio.to_thread(offline, whole, run.env)
        offline_s = time.monotonic() - started
        say(f"offline: {len(lines)} events in {offline_s:.1f} s")
        await ensure_topics(run.settings)
        seam = await produce_tail(run, lines, archived)
        os.environ.update({**run.env, "CONVERSIONS_WEB_ENABLED": "false"})
        marks: list[tuple[float, str]] = []
        done = asyncio.Event()

        def mark(line: str) -> None:
            marks.append((time.monotonic(), line))
            say(line)
            if line.startswith("cut over"):
                done.set()

        begun = time.monotonic()
        task = asyncio.create_task(
            deploy(
                run.settings,
                DEFAULT_FUNNELS.read_text(),
                mark,
                workers=workers,
                accept_short_history=True,
                every_s=0.5,
                log_dir=run.workdir,
                history_files=[archive],
                history_offsets=seam,
            )
        )
        await done.wait()
        task.cancel()

        def at(prefix: str) -> float:
            return next(t for t, line in marks if line.startswith(prefix))

        history_line = next(line for _, line in marks if line.startswith("history: "))
        history_s = float(re.search(r" in ([0-9.]+) s", history_line).group(1))  # type: ignore[union-attr]
        handoff_s = at("history handed over") - at("generation 1 recorded")
        live_s = at("cut over") - at("history handed over")
        total_s = at("cut over") - begun
        tail = len(lines) - archived
        result = {
            "events": len(lines),
            "archived": archived,
            "on_kafka_after_the_seam": tail,
            "overlap": OVERLAP,
            "workers": workers,
            "offline_whole_file_s": round(offline_s, 2),
            "offline_events_per_s": round(len(lines) / offline_s),
            "history_offline_run_s": history_s,
            "history_offline_events_per_s": round(archived / history_s),
            "handoff_s": round(handoff_s, 2),
            "kafka_tail_to_cut_over_s": round(live_s, 2),
            "deploy_to_cut_over_s": round(total_s, 2),
            "deploy_events_per_s": round(len(lines) / total_s),
            "note": "deploy_to_cut_over: from the call to the cut-over: the retention check, the offline "
            "run over the archive (in deploy's process), the hand-off, the workers' start and group joins "
            "(Tansu waits the 3 s rebalance timeout on each), ingest, journeys and counters of the tail",
        }
        say(json.dumps(result))
        return result


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    figures = asyncio.run(main(count, workers))
    name = "history_handoff.json" if workers == 1 else f"history_handoff_{workers}_workers.json"
    (RESULTS / name).write_text(json.dumps(figures, indent=2) + "\n")
