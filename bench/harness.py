"""What every bench shares: the results folder, the simulated traffic, one run's app id and
topics on the shared broker and Redis (`Run`), and producing the traffic to a topic.

Here rather than in `bench.run` so that the single benches (collector, counters, crash, soak,
replay order) and the whole run import it without importing each other."""

from __future__ import annotations

import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import orjson
import psutil
from aiokafka import AIOKafkaProducer

from streams.kafka import kafka_client_options
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.tools.infra import LOCAL_BROKER_ENV, LocalInfra
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
BATCH = 100
COUNTED = ("micro", "macro", "dropoff", "stalled", "session")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def traffic(events: int) -> list[bytes]:
    users = max(100, events // 8)
    lines = list(Simulator(seed=7, users=users, days=2, bad_rate=0.0).lines())
    return lines[:events]


def batched(lines: list[bytes]) -> list[bytes]:
    return [b"[" + b",".join(lines[i : i + BATCH]) + b"]" for i in range(0, len(lines), BATCH)]


class Run:
    """One app id and topic prefix on the shared broker and Redis."""

    def __init__(self, infra: LocalInfra, workdir: Path, name: str) -> None:
        unique = f"b{name}{uuid.uuid4().hex[:6]}"
        self.workdir = workdir / unique
        # the processes every contender shares the machine with (when started here)
        self.shared = {
            name: managed.process.pid
            for name, managed in (("broker", infra.broker), ("redis", infra.redis))
            if managed is not None
        }
        self.env = {
            **LOCAL_BROKER_ENV,
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "REDIS_URL": infra.redis_url,
            "CONVERSIONS_APP_ID": unique,
            "CONVERSIONS_TOPIC_PREFIX": f"{unique}.",
            "CONVERSIONS_DATA_DIR": str(self.workdir),
            "CONVERSIONS_SOURCE_IDLE_S": "300",
            "CONVERSIONS_LOG_LEVEL": "INFO",
        }
        self.settings = Settings(
            kafka_bootstrap_servers=infra.kafka_bootstrap,
            redis_url=infra.redis_url,
            app_id=unique,
            topic_prefix=f"{unique}.",
            data_dir=self.workdir,
        )

    def without_stitching(self) -> Run:
        """The same run's workers with `identity: {stitch: false}` (one journey per id, as before)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "funnels-no-stitching.yaml"
        config.write_text(DEFAULT_FUNNELS.read_text() + "identity: {stitch: false}\n")
        self.env["CONVERSIONS_FUNNELS"] = str(config)
        return self

    @property
    def source(self) -> str:
        return self.settings.topic(self.settings.topic_clickstream[0])

    def worker(
        self, web_port: int | None = None, name: str = "worker", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """A worker of this run (with `env` on top of the run's); workers with other names keep
        their own log and data."""
        env = self.env | (env or {})
        if name != "worker":
            env["CONVERSIONS_DATA_DIR"] = str(self.workdir / name)
        if web_port is not None:
            env |= {"CONVERSIONS_WEB_ENABLED": "true", "CONVERSIONS_WEB_PORT": str(web_port)}
        else:
            env["CONVERSIONS_WEB_ENABLED"] = "false"
        return WorkerProcess(env, self.workdir / f"{name}.log")


async def produce(settings: Settings, topic: str, messages: list[bytes], keyed: bool) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(settings), linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        for message in messages:
            key = None
            if keyed:
                event = orjson.loads(message)
                key = (event.get("anonymous_id") or event.get("user_id") or "").encode() or None
            await producer.send(topic, message, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(conversions_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def cpu_seconds(pids: Iterable[int]) -> list[float]:
    """User and system CPU seconds of each process and its children so far."""
    spent = []
    for pid in pids:
        process = psutil.Process(pid)
        spent.append(sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)]))
    return spent
