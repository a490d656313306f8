"""The counters consumer's apply on its own: the outputs of simulated traffic, as the counters
consumer receives them from Kafka, applied to a real redis-server batch by batch
(`python -m bench.counters`).

It isolates what the counters cost per output, apart from the broker and the journeys: the
consumer's Python (decoding, increments, the batch it sends) and Redis's own CPU for the Lua
calls, each per output, and the wall-clock rate. The same outputs are applied to a fresh app id
in each repetition; the best repetition is reported (the machine is shared). With REDIS_URL
set, that Redis is used instead of starting one; `redis+cluster://` there runs it on a cluster.

With `--process`, the counters in their own process as deployed (`conversions counters`): the
same outputs produced to the output topics of a local Tansu, then consumed and applied by the
process, its CPU time (and Redis's) per output and per input event from the first message
counted to the last; `--tree DIR` (repeatable) runs the process from other source trees too (a
checkout of an earlier commit), in turn, so that a change is measured beside what it replaced on
the same traffic in the same run, and `--compiled` the compiled package too (this checkout's
wheel, mypyc, `bench.compiled.build`, in a virtualenv of its own). `make bench` runs the pure
and the compiled package so (`process_measure`, under "counters_process").

`python -m bench.counters_pipeline`: the whole pipeline instead, as `make bench` measures it
(`bench.run`: the same traffic waiting on the topic, events per second from the first event in
to the last counter applied): the counters in the worker, then in a `conversions counters`
process beside a worker with CONVERSIONS_COUNTERS_ENABLED=false; with each, the CPU time per
event of the worker and of the counters process from the first event in.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from bench.harness import Run, cpu_seconds, metrics
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.journeys.engine import partition_for
from streams.counters.consumer import Counting
from streams.counters.redis_store import counter_store, redis_client
from streams.kafka import ensure_topics, kafka_client_options
from streams.metrics import Metrics
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.tools.infra import LocalInfra, free_port, start_redis
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent
COUNTED = ("micro", "macro", "dropoff", "stalled", "session")


@dataclass(frozen=True)
class Partition:
    topic: str
    partition: int


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes


def outputs(
    count: int, partitions: int, days: float = 2.0, read: list[int] | None = None
) -> list[tuple[str, int, bytes]]:
    """(type, partition, value) of the first `count` counted outputs of the simulated shop, its
    visits spread over `days` (the bench's traffic: 2 days replayed; a small fraction of a day is
    denser, as live traffic is: a batch's outputs then share the same few minutes). `read`, when
    given, gets the number of input lines (one event each) that made them."""
    config = compile_config(load_config(DEFAULT_FUNNELS))
    run = OfflineRun(config, partitions)
    found: list[tuple[str, int, bytes]] = []
    users = max(1_000, count // 4)
    lines = 0

    def counted_lines() -> Iterator[bytes]:
        nonlocal lines
        for line in Simulator(seed=7, users=users, days=days, bad_rate=0.0).lines():
            lines += 1
            yield line

    for output in run.run(counted_lines()):
        if output.type not in COUNTED:
            continue
        identity = getattr(output, "user_id", None) or getattr(output, "anonymous_id", None) or ""
        found.append((output.type, partition_for(identity, partitions), output.to_json()))
        if len(found) >= count:
            break
    if read is not None:
        read.append(lines)
    return found


def batches(found: list[tuple[str, int, bytes]], settings: Settings, size: int) -> list[dict[Any, list[Any]]]:
    """What `getmany` hands the consumer: up to `size` records per batch, per topic partition."""
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    out: list[dict[Any, list[Any]]] = []
    for start in range(0, len(found), size):
        batch: dict[Any, list[Any]] = defaultdict(list)
        for kind, partition, value in found[start : start + size]:
            topic = settings.output_topics["micro" if kind == "stalled" else kind]
            tp = Partition(topic, partition)
            batch[tp].append(Record(offsets[(topic, partition)], value))
            offsets[(topic, partition)] += 1
        out.append(dict(batch))
    return out


async def redis_cpu_s(client: Any) -> float:
    """Redis's CPU seconds (user + system), summed over the nodes of a cluster."""
    if isinstance(client, RedisCluster):
        info = await client.info("cpu", target_nodes=RedisCluster.PRIMARIES)
        per_node = list(info.values())
    else:
        per_node = [await client.info("cpu")]
    return sum(float(node["used_cpu_user"]) + float(node["used_cpu_sys"]) for node in per_node)


async def once(
    url: str, prepared: list[dict[Any, list[Any]]], partitions: int, count: int
) -> dict[str, float]:
    settings = Settings(redis_url=url, app_id=f"bc{uuid.uuid4().hex[:8]}", partitions=partitions)
    config = compile_config(load_config(DEFAULT_FUNNELS))
    client = redis_client(url)
    counting = Counting(settings, config, Metrics(), counter_store(settings, client))
    try:
        redis_before, cpu_before, started = (
            await redis_cpu_s(client),
            time.process_time(),
            time.perf_counter(),
        )
        for batch in prepared:
            await counting._apply(batch)
        wall = time.perf_counter() - started
        cpu, redis = time.process_time() - cpu_before, await redis_cpu_s(client) - redis_before
        latest = await counting.store.latest_event_ms()
        assert latest is not None, "nothing was counted"
    finally:
        await client.aclose()
    return {
        "outputs_per_s": round(count / wall),
        "python_us_per_output": round(cpu / count * 1e6, 1),
        "redis_us_per_output": round(redis / count * 1e6, 1),
        "wall_s": round(wall, 2),
    }


async def produce_outputs(settings: Settings, found: list[tuple[str, int, bytes]], rate: float = 0.0) -> None:
    """The outputs on their topics and partitions, as the worker publishes them: all at once, or
    at `rate` outputs per second (live, the consumer's batches then as small as it fetches)."""
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    started = time.monotonic()
    try:
        for i, (kind, partition, value) in enumerate(found):
            if rate and (ahead := started + i / rate - time.monotonic()) > 0.005:
                await asyncio.sleep(ahead)
            topic = settings.output_topics["micro" if kind == "stalled" else kind]
            await producer.send(topic, value, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def counted_cpu(
    process: WorkerProcess, port: int, redis_pid: int, total: int
) -> tuple[float, list[float], int]:
    """Wall seconds and CPU seconds of the process and of Redis from the first poll that found
    messages counted to the last message counted, and how many messages were counted in that
    window. `/metrics` is read 20 times a second until it shows a message counted, then twice a
    second: each read costs the process about a millisecond of CPU (prometheus_client serves it
    from a new thread), which at 20 reads a second was a seventh of the compiled process's CPU in
    the window; the messages counted before the window are left out of the division."""
    assert process.process is not None
    pids = [process.process.pid, redis_pid]
    before: list[float] | None = None
    started, first = 0.0, 0
    deadline = time.monotonic() + 120
    while True:
        values = metrics(port)
        counted = int(sum(v for k, v in values.items() if k.startswith("conversions_counter_messages_total")))
        if counted and before is None:
            before, started, first = cpu_seconds(pids), time.perf_counter(), counted
        if counted >= total:
            break
        if time.monotonic() > deadline or not process.running:
            raise RuntimeError(f"the counters counted {counted} of {total}:\n{process.tail()}")
        time.sleep(0.05 if before is None else 0.5)
    wall = time.perf_counter() - started
    assert before is not None
    if first >= total:
        raise RuntimeError("every message was counted before the first poll: more outputs, or a --rate")
    spent = [after - then for then, after in zip(before, cpu_seconds(pids), strict=True)]
    return wall, spent, total - first


async def dump_counters(url: str, app_id: str) -> dict[str, Any]:
    """Every Redis key of the app `app_id` (its counters, applied offsets and remembered output
    ids), named without the app id and the dedupe period, with its contents: hashes as field ->
    value (decimal sums to 6 places, `_amount`), lists in order, sets sorted, unique-user
    sketches as their bytes (hex). Two processes that counted the same outputs leave the same
    dump."""
    client: Any = redis_client(url)
    dump: dict[str, Any] = {}
    try:
        keys = sorted([key async for key in client.scan_iter(match=f"conv:{{{app_id}*", count=1_000)])
        for i in range(0, len(keys), 1_000):
            chunk = keys[i : i + 1_000]
            pipe = client.pipeline(transaction=False)
            for raw in chunk:
                pipe.type(raw)
            kinds = [kind.decode() for kind in await pipe.execute()]
            pipe = client.pipeline(transaction=False)
            for raw, kind in zip(chunk, kinds, strict=True):
                read = {"hash": pipe.hgetall, "list": pipe.lrange, "set": pipe.smembers}.get(kind, pipe.get)
                read(raw, 0, -1) if kind == "list" else read(raw)
            for raw, kind, value in zip(chunk, kinds, await pipe.execute(), strict=True):
                name = re.sub(r"^conv:\{[^}]*:(\d+)\}:", r"\1:", raw.decode().replace(app_id, "<app>"))
                name = re.sub(r":seen:-?\d+$", ":seen", name)
                if kind == "hash":
                    dump[name] = {
                        f.decode().replace(app_id, "<app>"): _amount(v.decode()) for f, v in value.items()
                    }
                elif kind == "list":
                    dump[name] = [v.decode() for v in value]
                elif kind == "set":  # the two dedupe periods as one
                    dump[name] = sorted({*dump.get(name, []), *(v.decode() for v in value)})
                else:
                    dump[name] = (value or b"").hex()
    finally:
        await client.aclose()
    return dump


def _amount(value: str) -> str:
    """A hash field's value; a decimal sum (HINCRBYFLOAT) to 6 places: Redis adds those in long
    double, so their last digits depend on how the batches fell, which differs from run to run
    with outputs arriving live, whatever the version."""
    if "." not in value:
        return value
    try:
        return format(round(Decimal(value), 6).normalize(), "f")
    except ArithmeticError:
        return value


def digest(dump: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(dump, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True)
class Package:
    """Which `conversions counters` a process run measures: this checkout's (pure Python, this
    virtualenv), another source tree's (`tree`, on this virtualenv's dependencies), or an
    installed package's (`python`: a virtualenv's interpreter, e.g. the compiled wheel's)."""

    label: str
    tree: str | None = None
    python: str | None = None

    def env(self) -> dict[str, str]:
        # PYTHONSAFEPATH: `python -m` would put the current directory (this checkout) first
        if self.tree:
            return {"PYTHONPATH": self.tree, "PYTHONSAFEPATH": "1"}
        if self.python:
            return {"PYTHONPATH": "", "PYTHONSAFEPATH": "1"}
        return {}


def compiled_package(workdir: Path, tree: Path = ROOT.parent) -> Package:
    """The compiled wheel of `tree` (`bench.compiled.build`: `pip install .` as a user gets it)
    in a fresh virtualenv under `workdir`."""
    from bench.compiled import build, say

    say(f"building the compiled wheel from {tree}")
    bin_dir, _ = build(tree, workdir, compiled=True)
    return installed(bin_dir, "compiled")


def installed(bin_dir: Path, label: str) -> Package:
    """The package installed in the virtualenv of `bin_dir`."""
    return Package(label, python=str(bin_dir / "python"))


async def process_once(
    infra: LocalInfra,
    workdir: Path,
    package: Package,
    found: list[tuple[str, int, bytes]],
    events: int,
    rate: float,
) -> dict[str, Any]:
    """One `conversions counters` process (of `package`) over the outputs on topics of its own:
    CPU per output and per event of the process and of Redis, from the first message counted to
    the last."""
    run = Run(infra, workdir, "cp")
    run.workdir.mkdir(parents=True, exist_ok=True)
    await ensure_topics(run.settings)
    if not rate:
        await produce_outputs(run.settings, found)
    port = free_port()
    process = WorkerProcess(
        dict(run.env) | package.env(),
        run.workdir / "counters.log",
        ["--metrics-port", str(port)],
        command="counters",
        python=package.python,
    )
    await asyncio.to_thread(process.start, 60)
    try:
        producing = asyncio.create_task(produce_outputs(run.settings, found, rate)) if rate else None
        wall, spent, counted = await asyncio.to_thread(
            counted_cpu, process, port, run.shared["redis"], len(found)
        )
        if producing is not None:
            await producing
    finally:
        process.stop()
    dumped = await dump_counters(infra.redis_url, run.settings.app_id)
    (run.workdir / "counters-dump.json").write_bytes(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS))
    return {
        "package": package.label,
        "tree": package.tree or "this checkout",
        "keys": len(dumped),
        "counters_digest": digest(dumped),
        "dump": str(run.workdir / "counters-dump.json"),
        "outputs_per_s": round(counted / wall),
        "outputs_in_window": counted,
        "process_us_per_output": round(spent[0] / counted * 1e6, 1),
        # the input events behind the outputs counted in the window, in proportion
        "process_us_per_event": round(spent[0] / (events * counted / len(found)) * 1e6, 1),
        "redis_us_per_event": round(spent[1] / (events * counted / len(found)) * 1e6, 1),
    }


async def process_runs(
    found: list[tuple[str, int, bytes]], events: int, packages: list[Package], repeat: int, rate: float
) -> list[dict[str, Any]]:
    """`process_once` for each package in turn, `repeat` times, on one Tansu and redis-server."""
    workdir = ROOT.parent / "var" / "bench" / "counters-process"
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    rows: list[dict[str, Any]] = []
    with LocalInfra(*given, workdir=workdir / "infra") as infra:
        for _ in range(repeat):
            for package in packages:
                row = await process_once(infra, workdir, package, found, events, rate)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def process_measure(
    packages: list[Package], outputs_count: int = 30_000, rate: float = 5_000.0, repeat: int = 1
) -> dict[str, Any]:
    """The counters' own process of each package, in turn, over the same outputs produced live at
    `rate` (`make bench`: this checkout's pure package beside the compiled one): CPU per input
    event, the best of `repeat` runs per package, and whether all left the same counters."""
    read: list[int] = []
    found = outputs(outputs_count, 4, 2.0, read)
    rows = asyncio.run(process_runs(found, read[0], packages, repeat, rate))
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = best.get(row["package"])
        if held is None or row["process_us_per_event"] < held["process_us_per_event"]:
            best[row["package"]] = row
    return {
        "outputs": len(found),
        "events": read[0],
        "rate": rate,
        "us_per_event": {label: row["process_us_per_event"] for label, row in best.items()},
        "redis_us_per_event": {label: row["redis_us_per_event"] for label, row in best.items()},
        "runs": rows,
        "same_counters": same_counters(rows),
    }


def same_counters(rows: list[dict[str, Any]]) -> bool:
    """Whether every process left the same Redis dump (`dump_counters`) for the same outputs."""
    return len({row["counters_digest"] for row in rows}) == 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outputs", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=Settings().counter_batch_size)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--days", type=float, default=2.0, help="Event time the traffic spans (2: as `make bench`)."
    )
    parser.add_argument("--label", default="", help="Recorded with the result (e.g. a commit).")
    parser.add_argument("--process", action="store_true", help="The counters' own process (see above).")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="With --process: outputs/s produced live (0: all waiting)."
    )
    parser.add_argument(
        "--tree", action="append", default=[], help="With --process: also a process from this source tree."
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="With --process: also the compiled package (this checkout's wheel, built by mypyc).",
    )
    args = parser.parse_args()
    if args.process:
        read: list[int] = []
        found = outputs(args.outputs, args.partitions, args.days, read)
        packages = [Package("pure"), *[Package(tree, tree=tree) for tree in args.tree]]
        with tempfile.TemporaryDirectory(prefix="bench-counters-") as tmp:
            if args.compiled:
                packages.append(compiled_package(Path(tmp)))
            rows = asyncio.run(process_runs(found, read[0], packages, args.repeat, args.rate))
        print(
            json.dumps(
                {
                    "label": args.label,
                    "outputs": len(found),
                    "events": read[0],
                    "days": args.days,
                    "rate": args.rate,
                    "process": rows,
                    "same_counters": same_counters(rows),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                indent=2,
            )
        )
        return
    found = outputs(args.outputs, args.partitions, args.days)
    settings = Settings(partitions=args.partitions)
    prepared = batches(found, settings, args.batch)
    url = os.environ.get("REDIS_URL")
    server = None
    if not url:
        workdir = ROOT.parent / "var" / "bench" / "counters"
        workdir.mkdir(parents=True, exist_ok=True)
        server = start_redis(workdir)
        url = server.url
    try:
        runs = [asyncio.run(once(url, prepared, args.partitions, len(found))) for _ in range(args.repeat)]
    finally:
        if server is not None:
            server.stop()
    best = max(runs, key=lambda r: r["outputs_per_s"])
    result = {
        "label": args.label,
        "outputs": len(found),
        "batch": args.batch,
        "partitions": args.partitions,
        "days": args.days,
        "best": best,
        "runs": runs,
        "cluster": url.startswith(("redis+cluster", "rediss+cluster")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{len(found):,} outputs: {best['outputs_per_s']:,} outputs/s, "
        f"Python {best['python_us_per_output']} us and Redis {best['redis_us_per_output']} us per output",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
