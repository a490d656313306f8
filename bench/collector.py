"""Collector throughput beside producing to Kafka directly, on the same messages and broker.

The same simulated events, as the Segment messages a tracker sends (tools/collector_traffic),
reach the clickstream topic two ways, one after the other, each acknowledged by the broker with
`acks=all`:

- **direct**: one aiokafka producer in this process sends them keyed by device, as the
  collector's producer would, and flushes; timed from the first send to the last
  acknowledgement. The floor of what any front door can cost.
- **collector**: the collector alone in its own process (`python -m bench.collector serve`:
  what a worker runs beside its agents with `CONVERSIONS_COLLECTOR_ENABLED`), and `clients`
  concurrent HTTP clients in this process POSTing `/v1/batch` with 100 messages each, basic
  auth, as the server libraries send; timed from the first request to the last 200, each of
  which the collector gives only after the broker acknowledged every message of the request.

`python -m bench.collector` measures just this (its own broker, or KAFKA_BOOTSTRAP_SERVERS)
and writes bench/results/collector.json; `make bench` (bench/run.py) records the same under
"collector" in latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.harness import RESULTS, Run, say, traffic
from streams.collector import from_settings
from streams.kafka import ensure_topics
from streams.kafka.clients import new_producer
from streams.settings import load_settings
from streams.tools.collector_traffic import BATCH_MESSAGES, segment_message
from streams.tools.infra import LocalInfra, free_port, terminate

ROOT = Path(__file__).resolve().parent
WRITE_KEY = "bench-write-key"
READY = "collector serving"


def messages_of(lines: list[bytes]) -> list[dict[str, Any]]:
    """The simulated events (our JSON lines) as Segment messages."""
    return [segment_message(orjson.loads(line)) for line in lines]


async def direct(settings: Any, topic: str, messages: list[dict[str, Any]]) -> float:
    """Events per second produced straight to the topic, acks=all, keyed by device."""
    records = [((m.get("anonymousId") or m["userId"]).encode(), orjson.dumps(m)) for m in messages]
    producer = new_producer(settings, acks="all", linger_ms=2)
    await producer.start()
    try:
        started = time.perf_counter()
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
        return len(records) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def through_collector(url: str, messages: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Events per second through the collector, `clients` requests in flight at a time."""
    bodies = [
        orjson.dumps({"batch": messages[i : i + BATCH_MESSAGES]})
        for i in range(0, len(messages), BATCH_MESSAGES)
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    statuses: list[int] = []
    latencies: list[float] = []
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            sent = time.perf_counter()
            async with http.post(url + "/v1/batch", data=body, headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    refused = [s for s in statuses if s != 200]
    if refused:
        raise RuntimeError(f"the collector answered {len(refused)} requests with {sorted(set(refused))}")
    latencies.sort()
    return {
        "eps": len(messages) / seconds,
        "requests": len(bodies),
        "request_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "request_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
    }


def serve(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """The collector alone in a child process, once it is ready."""
    env = {
        **os.environ,
        **env,
        "CONVERSIONS_COLLECTOR_ENABLED": "true",
        "CONVERSIONS_COLLECTOR_PORT": str(port),
        "CONVERSIONS_COLLECTOR_WRITE_KEYS": WRITE_KEY,
        # the bench's clients are one address and one key sending as fast as they can: the
        # per-client limit (50 requests/s by default) would answer 429 to what it measures
        "CONVERSIONS_COLLECTOR_RATE_LIMIT": "0",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.collector", "serve"],
            env=env,
            cwd=ROOT.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while READY not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            terminate(process, "collector", 5)
            raise RuntimeError(
                f"the collector did not start:\n{log_path.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.1)
    return process


async def collector_throughput(run: Any, lines: list[bytes], clients: int = 8) -> dict[str, Any]:
    """The bench's collector entry: collector events/s beside direct produce, same messages
    (`run` is a bench.run.Run: its settings, environment and work directory)."""
    await ensure_topics(run.settings)
    topic = run.settings.topic(run.settings.topic_clickstream[0])
    messages = messages_of(lines)
    direct_eps = await direct(run.settings, topic, messages)
    port = free_port()
    run.workdir.mkdir(parents=True, exist_ok=True)
    process = serve(run.env, port, run.workdir / "collector.log")
    try:
        measured = await through_collector(f"http://127.0.0.1:{port}", messages, clients)
    finally:
        terminate(process, "collector", 10)
    return {
        "collector_eps": round(measured["eps"]),
        "direct_produce_eps": round(direct_eps),
        "collector_vs_direct": round(measured["eps"] / direct_eps, 3),
        "events": len(messages),
        "batch_messages": BATCH_MESSAGES,
        "clients": clients,
        "request_ms_p50": measured["request_ms_p50"],
        "request_ms_p99": measured["request_ms_p99"],
        "requests": measured["requests"],
    }


async def _serve_forever() -> None:
    settings = load_settings()
    collector = from_settings(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await collector.start()
    for _ in range(1_200):  # the producer reaching the broker: 60 s at most
        if collector.ready:
            break
        await asyncio.sleep(0.05)
    print(READY if collector.ready else "collector not ready", collector.url, flush=True)
    await stop.wait()
    await collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["measure", "serve"], default="measure")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if args.mode == "serve":
        asyncio.run(_serve_forever())
        return
    workdir = ROOT.parent / "var" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    with LocalInfra(
        os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL"), workdir=workdir / "infra"
    ) as infra:
        lines = traffic(args.events)
        say(f"collector: {len(lines):,} events, {args.clients} clients")
        result = asyncio.run(collector_throughput(Run(infra, workdir, "col"), lines, args.clients))
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"] = {"cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collector.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
