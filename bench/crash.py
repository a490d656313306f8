"""Crash test: replay the same traffic twice on the local broker and Redis, once undisturbed
and once while the worker is killed with SIGKILL at random moments, and compare what users
see: the counters' reports (Redis, through the API) and the conversion topics deduplicated by
id. `make crash` (about 10 minutes); writes bench/results/crash.json.

A share of the input (`--compressed-share`, 40 % by default) is sent by idempotent librdkafka
producers (confluent-kafka), in turn gzip, snappy, lz4 and zstd: each partition in chunks of
`CHUNK` messages, every chunk delivered before the next, each to the partition the aiokafka
producer would have chosen, so both runs read the same partitions in the same order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from bench.harness import RESULTS, Run, say
from streams.kafka import ensure_topics, kafka_client_options
from streams.tools.infra import LocalInfra, free_port
from streams.tools.simulate import Simulator

WORKDIR = Path(__file__).resolve().parent.parent / "var" / "crash"
WINDOW = "start=2024-03-01T00:00:00%2B00:00&end=2024-06-01T00:00:00%2B00:00"
COMPARED = ("micro", "macro", "dropoff", "session", "identity")


def traffic(events: int) -> list[bytes]:
    sim = Simulator(seed=99, users=max(1_000, events // 7), days=3, bad_rate=0.002)
    lines = list(sim.lines())[:events]
    end = sim.start + timedelta(days=60)
    ticks = [
        orjson.dumps(
            {"event_id": f"tick-{p}", "event": "tick", "user_id": f"tick-{p}", "timestamp": end.isoformat()}
        )
        for p in range(8)
    ]
    return lines + ticks


CODECS = ("gzip", "snappy", "lz4", "zstd")
CHUNK = 500
"""Messages of one partition sent by one producer before the next chunk's producer starts (each
chunk delivered first), so both runs get every partition in the same order."""


def librdkafka_producer(run: Run, codec: str) -> Any:
    return confluent_kafka.Producer(
        {
            "bootstrap.servers": run.settings.kafka_bootstrap_servers,
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )


def send_chunk(producer: Any, topic: str, partition: int, chunk: list[tuple[bytes | None, bytes]]) -> None:
    failures: list[str] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in chunk:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
                break
            except BufferError:  # its queue is full: let it deliver
                producer.poll(0.1)
    assert producer.flush(120) == 0 and not failures, failures[:5]


def by_partition(lines: list[bytes], partitions: int) -> dict[int, list[tuple[bytes | None, bytes]]]:
    """Where the aiokafka producer would put each message (Kafka's murmur2 of the key), in order;
    an unkeyed (malformed) line by its index, the ticks one per partition."""
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    found: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in every}
    for index, line in enumerate(lines):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = {}  # a malformed line: sent as it is, unkeyed
        if not isinstance(event, dict):
            event = {}
        if str(event.get("event_id", "")).startswith("tick-"):  # one per source partition
            found[int(event["event_id"][5:]) % partitions].append((None, line))
            continue
        key = event.get("anonymous_id") or event.get("user_id")  # as trackers key: by device
        if isinstance(key, str):
            found[partitioner(key.encode(), every, every)].append((key.encode(), line))
        else:
            found[index % partitions].append((None, line))
    return found


async def produce(run: Run, lines: list[bytes], compressed_share: float = 0.4) -> Counter[str]:
    """Send the traffic, each partition in chunks of `CHUNK`: a `compressed_share` of the chunks
    by librdkafka producers (confluent-kafka), one codec each in turn, the others by aiokafka
    uncompressed. Returns how many messages each codec carried."""
    producer = AIOKafkaProducer(**kafka_client_options(run.settings), linger_ms=5)
    others = {codec: librdkafka_producer(run, codec) for codec in CODECS}
    sent: Counter[str] = Counter()
    await producer.start()
    try:
        number = 0
        for partition, messages in by_partition(lines, run.settings.partitions).items():
            for start in range(0, len(messages), CHUNK):
                chunk = messages[start : start + CHUNK]
                if number % 10 < round(compressed_share * 10):
                    codec = CODECS[number % len(CODECS)]
                    await asyncio.to_thread(send_chunk, others[codec], run.source, partition, chunk)
                else:
                    codec = "aiokafka"
                    for key, value in chunk:
                        await producer.send(run.source, value, key=key, partition=partition)
                    await producer.flush()
                sent[codec] += len(chunk)
                number += 1
    finally:
        await producer.stop()
    return sent


def report(port: int) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/funnels?{WINDOW}", timeout=10) as response:
            return json.loads(response.read())
    except OSError:
        return None


async def outputs(run: Run) -> tuple[Counter[bytes], int]:
    """Deduplicated conversion outputs (one content per id, asserted), and how many repeats."""
    topics = [run.settings.output_topics[k] for k in COMPARED]
    consumer = AIOKafkaConsumer(**kafka_client_options(run.settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(run.settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: dict[str, bytes] = {}
        repeats = 0
        while batch := await consumer.getmany(timeout_ms=2_000, max_records=50_000):
            for messages in batch.values():
                for message in messages:
                    output = orjson.loads(message.value)
                    canonical = orjson.dumps(output, option=orjson.OPT_SORT_KEYS)
                    previous = seen.setdefault(output["id"], canonical)
                    if previous is not canonical:
                        repeats += 1
                        if previous != canonical:
                            raise AssertionError(f"one id, two contents: {previous!r} != {canonical!r}")
        return Counter(seen.values()), repeats
    finally:
        await consumer.stop()


def report_differences(
    expected: Any, actual: Any, path: str = "", found: list[str] | None = None
) -> list[str]:
    """Where two reports differ, as `path: expected != actual` lines (the first 30)."""
    found = [] if found is None else found
    if len(found) >= 30:
        return found
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            report_differences(expected.get(key), actual.get(key), f"{path}.{key}", found)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            report_differences(e, a, f"{path}[{i}]", found)
    elif expected != actual:
        found.append(f"{path}: {expected!r} != {actual!r}")
    return found


def output_differences(outputs: Counter[bytes]) -> dict[str, Any]:
    """How many outputs, by type, and a few of them."""
    parsed = [orjson.loads(raw) for raw in outputs.elements()]
    return {
        "count": len(parsed),
        "by_type": dict(Counter(o["type"] for o in parsed)),
        "samples": parsed[:5],
    }


async def settle(port: int, timeout_s: float, target: Any = None) -> Any:
    """Wait until the report stops changing for 20 s (or equals `target`)."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = report(port)
        if current is not None and target is not None and current == target:
            return current
        if current != last:
            last, since = current, time.monotonic()
        elif current is not None and time.monotonic() - since > 20:
            return current
        await asyncio.sleep(2)
    return last


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    lines = traffic(args.events)
    say(f"{len(lines):,} messages of simulated traffic")
    with LocalInfra(workdir=WORKDIR / "infra") as infra:
        calm, crashy = Run(infra, WORKDIR, "calm"), Run(infra, WORKDIR, "crash")
        for run in (calm, crashy):
            await ensure_topics(run.settings)
            compressed = await produce(run, lines, args.compressed_share)
        say(f"messages by producer: {dict(compressed)}")
        say("undisturbed run")
        port = free_port()
        started = time.monotonic()
        worker = calm.worker(web_port=port).start(wait_ready_s=120)
        expected = await settle(port, timeout_s=3_600)
        calm_seconds = time.monotonic() - started
        worker.stop()
        expected_outputs, _ = await outputs(calm)
        say(f"  {calm_seconds:.0f} s, {sum(expected_outputs.values()):,} outputs")

        say(f"crashing run: {args.kills} kills at random moments")
        rng = random.Random(args.seed)
        port = free_port()
        started = time.monotonic()
        worker = crashy.worker(web_port=port).start(wait_ready_s=120)
        kills = []
        for k in range(args.kills):
            await asyncio.sleep(rng.uniform(2.0, args.max_gap_s))
            worker.kill()
            kills.append(round(time.monotonic() - started, 1))
            say(f"  kill {k + 1} at {kills[-1]} s")
            worker = crashy.worker(web_port=port).start(wait_ready_s=120)
        actual = await settle(port, timeout_s=3_600, target=expected)
        crash_seconds = time.monotonic() - started
        worker.stop()
        actual_outputs, repeats = await outputs(crashy)
    equal_reports = actual == expected
    equal_outputs = actual_outputs == expected_outputs
    say(f"reports equal: {equal_reports}; outputs equal: {equal_outputs} ({repeats:,} repeats by id)")
    differences = {
        "report": report_differences(expected, actual),
        "outputs_missing": output_differences(expected_outputs - actual_outputs),
        "outputs_extra": output_differences(actual_outputs - expected_outputs),
    }
    return {
        **({} if equal_reports and equal_outputs else {"differences": differences}),
        "events_requested": args.events,
        "messages": len(lines),  # the simulated lines (events and a few malformed ones) and 8 ticks
        "messages_by_producer": dict(compressed),
        "librdkafka_version": confluent_kafka.libversion()[0],
        "kills": len(kills),
        "kill_times_s": kills,
        "undisturbed_s": round(calm_seconds),
        "crashing_s": round(crash_seconds),
        "outputs": sum(expected_outputs.values()),
        "repeated_outputs_deduplicated": repeats,
        "counter_reports_equal": equal_reports,
        "deduplicated_outputs_equal": equal_outputs,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--max-gap-s", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--compressed-share",
        type=float,
        default=0.4,
        help="share of the input sent by librdkafka, compressed",
    )
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crash.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if result["counter_reports_equal"] and result["deduplicated_outputs_equal"] else 1)


if __name__ == "__main__":
    main()
