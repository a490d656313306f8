"""Soak: live simulated traffic at half the pipeline's measured sustained rate, sampling the
worker's memory (RSS) and consumer lag every 10 s: 11 minutes of warm-up (each journey keeps
the event ids of the last `late_tolerance`, 10 minutes, to drop redeliveries, so state grows
until then by design), then 10 minutes measured. Passes when RSS grows less than 10 % over
those 10 minutes and lag stays under 10 s of traffic. `make soak`; writes
bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.run import RESULTS, Run, say
from streams.infra import LocalInfra, free_port
from streams.kafka_admin import ensure_topics
from streams.live_traffic import LiveTraffic

WORKDIR = Path(__file__).resolve().parent.parent / "var" / "soak"


def total_lag(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(float(v) for v in re.findall(r"^conversions_consumer_lag\{[^}]*\} (\S+)$", text, re.MULTILINE))


def default_rate() -> float:
    latest = RESULTS / "latest.json"
    if latest.exists():
        return float(json.loads(latest.read_text())["single"]["pipeline_eps"]) / 2
    return 300.0


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with LocalInfra(workdir=WORKDIR / "infra") as infra:
        run = Run(infra, WORKDIR, "soak")
        await ensure_topics(run.settings)
        port = free_port()
        worker = run.worker(web_port=port).start(wait_ready_s=120)
        process = psutil.Process(worker.process.pid if worker.process else 0)
        traffic = LiveTraffic(rate=args.rate, users=args.users, seed=3)
        stop = asyncio.Event()
        sender = asyncio.create_task(traffic.run(run.settings, stop))
        samples: list[dict[str, float]] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60:
                await asyncio.sleep(10)
                if sender.done():
                    sender.result()
                rss = process.memory_info().rss / 1_048_576
                lag = await asyncio.to_thread(total_lag, port)
                samples.append(
                    {"t_s": round(time.monotonic() - started), "rss_mib": round(rss, 1), "lag": lag or 0}
                )
                say(
                    f"  {samples[-1]['t_s']:>4} s  rss {rss:7.1f} MiB  lag {lag}  sent {traffic.stats.sent:,}"
                )
        finally:
            stop.set()
            await sender
            worker.stop()
    warm = [s for s in samples if s["t_s"] >= args.warmup_s]
    base = warm[0]["rss_mib"]
    growth = (warm[-1]["rss_mib"] - base) / base
    max_lag = max(s["lag"] for s in warm)
    return {
        "rate_eps": args.rate,
        "minutes": args.minutes,
        "users": args.users,
        "events_sent": traffic.stats.sent,
        "rss_after_warmup_mib": base,
        "rss_end_mib": warm[-1]["rss_mib"],
        "rss_growth": round(growth, 4),
        "max_lag_after_warmup": max_lag,
        "passed": growth < 0.10 and max_lag < args.rate * 10,
        "samples": samples,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=default_rate())
    parser.add_argument("--minutes", type=float, default=21.0)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--warmup-s", type=float, default=660.0)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
