"""The demo: embedded broker and Redis, a worker, live simulated traffic, a live funnel summary.

The traffic goes to the clickstream topic, or with `via="collector"` through the worker's own
Segment-compatible collector, as Segment messages posted over HTTP (tools/collector_traffic)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.core.config.loader import load_config
from streams.kafka import ensure_topics
from streams.kafka.clients import new_consumer
from streams.settings import Settings
from streams.tools.collector_traffic import CollectorSink
from streams.tools.infra import LOCAL_BROKER_ENV, LocalInfra, free_port, stopped_by_signals
from streams.tools.live_traffic import LiveTraffic, TrafficStats
from streams.tools.worker_process import WorkerProcess

console = Console(stderr=True)
DEMO_WRITE_KEY = "demo-write-key"
Via = Literal["broker", "collector"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


class LiveSummary:
    """Counts the output topics as they arrive: what the terminal shows."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = load_config(settings.funnels)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.revenue = 0.0
        self.recent: list[str] = []

    def add(self, output: dict[str, object]) -> None:
        kind = str(output["type"])
        if kind == "micro" and output.get("funnel"):
            self.counts[("step", str(output["funnel"]), str(output["step"]))] += 1
        elif kind == "micro":
            self.counts[("micro", "", str(output["name"]))] += 1
        elif kind == "macro":
            self.counts[("macro", "", str(output["goal"]))] += 1
            value = output.get("value")
            self.revenue += float(value) if isinstance(value, int | float) else 0.0
            self.recent = [f"{output['goal']} {value or ''} via {output.get('channel')}", *self.recent][:5]
        elif kind in {"dropoff", "stalled"}:
            self.counts[(kind, str(output["funnel"]), str(output.get("reason", "stalled")))] += 1
        else:
            self.counts[(kind, "", "")] += 1

    def render(
        self,
        traffic: TrafficStats,
        started: float,
        dashboard: str | None,
        collector: CollectorSink | None = None,
    ) -> Group:
        elapsed = time.monotonic() - started
        head = Text.assemble(
            ("Conversion Streams demo", "bold"),
            f"  {elapsed:5.0f}s  sent {traffic.sent} events ({traffic.bad} malformed), "
            f"{traffic.visits} visits",
        )
        parts: list[object] = [head]
        if collector is not None:
            stats = collector.stats
            parts.append(
                Text(
                    f"via the collector {collector.url}: {stats.acknowledged} acknowledged in "
                    f"{stats.requests} requests, {stats.refused} malformed refused, {stats.retries} retried",
                    style="dim",
                )
            )
        if dashboard:
            parts.append(
                Text.assemble(
                    ("dashboard: ", "bold"),
                    (dashboard, "bold cyan"),
                    (
                        f"   JSON: {dashboard}live  metrics: {dashboard}metrics   Ctrl-C stops everything",
                        "dim",
                    ),
                )
            )
        for funnel in self.config.funnels:
            table = Table(title=f"funnel {funnel.name}", title_justify="left", expand=False)
            for column in ("step", "reached", "from previous", "overall"):
                table.add_column(column, justify="right" if column != "step" else "left")
            first = previous = None
            for step in funnel.steps:
                reached = self.counts[("step", funnel.name, step.name)]
                first = reached if first is None else first
                rate = f"{reached / previous:.0%}" if previous else ""
                overall = f"{reached / first:.0%}" if first else ""
                table.add_row(step.name, str(reached), rate, overall)
                previous = reached
            parts.append(table)
        macro = sum(v for k, v in self.counts.items() if k[0] == "macro")
        micro = sum(v for k, v in self.counts.items() if k[0] in {"micro", "step"})
        parts.append(
            Text(
                f"macro {macro}  revenue {self.revenue:,.2f}  micro {micro}  "
                f"micro/macro {micro / macro if macro else 0:.1f}  sessions closed "
                f"{self.counts[('session', '', '')]}  dropoffs "
                f"{sum(v for k, v in self.counts.items() if k[0] == 'dropoff')}  dead letters "
                f"{self.counts[('deadletter', '', '')]}"
            )
        )
        if self.recent:
            parts.append(Text("recent: " + " | ".join(self.recent), style="green"))
        return Group(*parts)  # type: ignore[arg-type]


async def _follow(settings: Settings, summary: LiveSummary, stop: asyncio.Event) -> None:
    consumer = new_consumer(
        settings, *sorted(set(settings.output_topics.values())), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for message in messages:
                    summary.add(orjson.loads(message.value))
    finally:
        await consumer.stop()


async def _run(
    settings: Settings,
    traffic: LiveTraffic,
    seconds: float | None,
    dashboard: str | None,
    collector_url: str | None = None,
) -> TrafficStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    summary = LiveSummary(settings)
    started = time.monotonic()
    sink = CollectorSink(collector_url, DEMO_WRITE_KEY) if collector_url else None
    tasks = [
        asyncio.create_task(traffic.run(settings, stop, sink)),
        asyncio.create_task(_follow(settings, summary, stop)),
    ]
    with Live(
        summary.render(traffic.stats, started, dashboard, sink),
        console=console,
        refresh_per_second=2,
        transient=False,
    ) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if seconds is not None and time.monotonic() - started >= seconds:
                stop.set()
            for task in tasks:
                if task.done() and task.exception() is not None:
                    stop.set()
            live.update(summary.render(traffic.stats, started, dashboard, sink))
    await asyncio.gather(*tasks)
    return traffic.stats


def run_demo(settings: Settings, traffic: LiveTraffic, seconds: float | None, via: Via = "broker") -> int:
    # SIGTERM before the event loop runs (while the worker starts) must still unwind the `with`
    # blocks below, or the broker, Redis and the worker would outlive the demo
    with stopped_by_signals():
        return _run_demo(settings, traffic, seconds, via)


def _run_demo(settings: Settings, traffic: LiveTraffic, seconds: float | None, via: Via) -> int:
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    workdir = Path(settings.data_dir) / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    console.print("[bold]starting[/] broker and Redis ...")
    with LocalInfra(settings.kafka_bootstrap_servers, redis_url, workdir=workdir / "infra") as infra:
        web_port = settings.web_port
        if not _port_free(settings.web_host, web_port):
            web_port = free_port()
            console.print(f"port {settings.web_port} is taken: the dashboard listens on {web_port}")
        env = {
            **(LOCAL_BROKER_ENV if infra.broker is not None else {}),
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "REDIS_URL": infra.redis_url,
            "CONVERSIONS_WEB_PORT": str(web_port),
            "CONVERSIONS_WEB_ENABLED": "true",
            "CONVERSIONS_SOURCE_IDLE_S": "5",
            # the shop's simulated clock runs ahead of the wall clock: its events are not from the future
            "CONVERSIONS_MAX_FUTURE_SKEW_S": str(400 * 86_400),
        }
        collector_url = None
        if via == "collector":
            host = settings.collector_host
            port = settings.collector_port if _port_free(host, settings.collector_port) else free_port()
            env |= {
                "CONVERSIONS_COLLECTOR_ENABLED": "true",
                "CONVERSIONS_COLLECTOR_HOST": host,
                "CONVERSIONS_COLLECTOR_PORT": str(port),
                "CONVERSIONS_COLLECTOR_WRITE_KEYS": DEMO_WRITE_KEY,
            }
            collector_url = f"http://{host}:{port}"
        live_settings = settings.model_copy(update={"kafka_bootstrap_servers": infra.kafka_bootstrap})
        asyncio.run(ensure_topics(live_settings))
        worker = WorkerProcess(env, workdir / "worker.log")
        dashboard = f"http://{settings.web_host}:{web_port}/"
        try:
            console.print(f"[bold]starting[/] worker (log: {worker.log_path}) ...")
            worker.start(wait_ready_s=120)
            if collector_url:
                worker.wait_for("collector ready", timeout_s=60)
                console.print(f"traffic goes through the collector: {collector_url}/v1/batch")
            console.print(f"kafka {infra.kafka_bootstrap}  redis {infra.redis_url}")
            console.print(f"[bold]open the live dashboard:[/] [bold cyan]{dashboard}[/]")
            if traffic.speed != 1:
                console.print(f"the simulated shop clock runs {traffic.speed:g}x faster than real time")
            stats = asyncio.run(_run(live_settings, traffic, seconds, dashboard, collector_url))
        finally:
            console.print("\n[bold]stopping[/] worker, broker and Redis ...")  # below the live summary line
            worker.stop()
        errors = worker.error_lines()
        if errors:
            console.print(f"[red]the worker logged {len(errors)} errors, see {worker.log_path}[/]")
            return 1
    console.print(f"done: {stats.sent} events sent")
    return 0
