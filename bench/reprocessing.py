"""Reprocessing in a new generation against offline mode, on the same events
(`python -m bench.reprocessing [EVENTS [WORKERS]]`; issue 26).

The simulated shop's traffic (keyed by identity) is produced to the clickstream; generation 0 (one
worker, counters inside) processes it; then `deploy` (the same function as `conversions deploy`,
progress every 0.5 s) starts WORKERS (1) workers of generation 1 on the same configuration, which reads the
clickstream from the earliest offset, and cuts over once its lag is zero and its counters reached
generation 0's event time. Reprocessing speed = events / (cut-over time - the child's start,
group join on Tansu included); offline = `conversions process` on the same file, wall clock from
the process's start to its exit. bench/results/reprocessing.json keeps the last run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import RESULTS, Run, produce, say, traffic
from streams.counters.redis_store import redis_client
from streams.kafka import ensure_topics
from streams.settings import DEFAULT_FUNNELS
from streams.tools.deploy import Watcher, deploy
from streams.tools.infra import LocalInfra


async def settle(run: Run) -> int | None:
    """Wait until generation 0 has processed everything: no lag, its event time still."""
    redis = redis_client(run.env["REDIS_URL"])
    watcher = Watcher(run.settings, run.settings, redis)
    last, still = None, 0
    while still < 3:
        progress = await watcher.measure(run.settings.app_id)
        still = still + 1 if progress.total_lag == 0 and progress.event_ms == last else 0
        last = progress.event_ms
        await asyncio.sleep(1.0)
    await redis.aclose()
    return last


def offline(source: Path, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "streams.cli", "process", "--config", str(DEFAULT_FUNNELS)]
    subprocess.run(
        [*command, "--input", str(source)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


async def main(events: int, workers: int = 1) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, LocalInfra(workdir=Path(tmp) / "infra") as infra:
        run = Run(infra, Path(tmp), "reproc")
        lines = traffic(events)
        source = Path(tmp) / "events.ndjson"
        source.write_bytes(b"\n".join(lines) + b"\n")
        started = time.monotonic()
        await asyncio.to_thread(offline, source, run.env)
        offline_s = time.monotonic() - started
        say(f"offline: {len(lines)} events in {offline_s:.1f} s")
        await ensure_topics(run.settings)
        await produce(run.settings, run.source, lines, keyed=True)
        first = run.worker().start()
        try:
            live_ms = await settle(run)
            say(f"generation 0 settled at event time {live_ms}")
            os.environ.update({**run.env, "CONVERSIONS_WEB_ENABLED": "false"})
            marks: list[tuple[float, str]] = []
            done = asyncio.Event()

            def mark(line: str) -> None:
                marks.append((time.monotonic(), line))
                say(line)
                if line.startswith("cut over"):
                    done.set()

            task = asyncio.create_task(
                deploy(
                    run.settings,
                    DEFAULT_FUNNELS.read_text(),
                    mark,
                    workers=workers,
                    accept_short_history=True,
                    every_s=0.5,
                    log_dir=run.workdir,
                )
            )
            await done.wait()
            child_started = next(t for t, line in marks if line.startswith("generation 1 recorded"))
            cut_over = next(t for t, line in marks if line.startswith("cut over"))
            task.cancel()
            ready = next(t for t, line in marks if "worker(s) started" in line)
            reprocess_s = cut_over - child_started
            after_ready_s = cut_over - ready
        finally:
            first.stop()
        result = {
            "events": len(lines),
            "offline_s": round(offline_s, 2),
            "offline_events_per_s": round(len(lines) / offline_s),
            "workers": workers,
            "reprocess_s": round(reprocess_s, 2),
            "reprocess_events_per_s": round(len(lines) / reprocess_s),
            "reprocess_after_worker_ready_s": round(after_ready_s, 2),
            "reprocess_after_worker_ready_events_per_s": round(len(lines) / after_ready_s),
            "note": "reprocess runs from the generation's record to the cut-over: the child "
            "worker's start, its group joins (Tansu waits the 3 s rebalance timeout on each), ingest, "
            "journeys and counters, progress polled every 0.5 s; after_worker_ready starts at the "
            "child's 'Worker ready' line (group joins still inside)",
        }
        say(json.dumps(result))
        return result


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    figures = asyncio.run(main(count, workers))
    name = "reprocessing.json" if workers == 1 else f"reprocessing_{workers}_workers.json"
    (RESULTS / name).write_text(json.dumps(figures, indent=2) + "\n")
