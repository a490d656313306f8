"""A flood of client-chosen values (issue 29, item 2): 10,000 distinct `context.platform` values
counted, then `/live?by=context.platform` asked by 8 concurrent clients, 5 times each, from an
aiohttp server in this process, while a ticker measures how late the event loop wakes it (the
loop's lag: what the worker's agents and the collector would wait). Then 10,000 alerts, each for
another value, through the alerts service's metrics.

Run once with the cap (`CONVERSIONS_BREAKDOWN_CAP`'s default) and once without one (a cap above
the flood: what the code did before the cap), and writes both to `results/cardinality_flood.json`:
the answer's bytes, the Prometheus series of `conversions_alert_firing`, the loop's worst and
99th-percentile lag, the answers' median time.

    python -m bench.cardinality_flood [--values 10000]

The counts are the in-memory store's (`counters.memory_store`): the report and its
serialization, the part that grows with the values, are the same code as over Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from streams.alerts.service import Alerting
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.input.event import from_epoch_ms
from streams.core.measures.counters import increments
from streams.core.records.outputs import Alert, OutputEvent
from streams.counters.base import CountedMessage
from streams.counters.memory_store import MemoryCounterStore
from streams.metrics import Metrics
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.web import views

RESULTS = Path(__file__).parent / "results" / "cardinality_flood.json"
CLIENTS, ROUNDS, TICK_S = 8, 5, 0.005
CONFIG = compile_config(load_config(DEFAULT_FUNNELS))
MINUTE, BASE = 60_000, 1_710_325_200_000


def _milestone(step: int, at_ms: int, user: str, platform: str) -> dict[str, object]:
    funnel = CONFIG.funnels_by_name["checkout"]
    return {
        "id": f"{user}-{step}",
        "type": "micro",
        "kind": "milestone",
        "funnel": "checkout",
        "step": funnel.steps[step].name,
        "step_index": step,
        "user_id": user,
        "timestamp": from_epoch_ms(at_ms).isoformat(),
        "breakdowns": {"context.platform": platform},
        "funnel_version": funnel.version,
    }


async def _store(values: int) -> MemoryCounterStore:
    store = MemoryCounterStore(app_id="flood", shards=2, bucket_ms=MINUTE)
    outputs = [
        _milestone(k, BASE + i % 50 * 1_000, f"u{i}", f"p{i:05d}") for i in range(values) for k in (0, 1)
    ]
    counted = [
        CountedMessage("conversions.micro", n, str(o["id"]), increments(o, CONFIG, MINUTE))
        for n, o in enumerate(outputs)
    ]
    await store.apply(0, counted)
    return store


class _Recorder:
    """The alerts service's `Publisher` and `LeaderCheck`: it leads, and keeps what it sends."""

    def __init__(self) -> None:
        self.published: list[OutputEvent] = []

    async def publish(self, outputs: Any, partition: int | None = None) -> None:
        self.published.extend(outputs)

    def is_leader(self) -> bool:
        return True


def _alert(i: int) -> Alert:
    return Alert.model_validate(
        {
            "id": f"a{i}",
            "type": "alert",
            "state": "fired",
            "funnel": "checkout",
            "step": "payment",
            "step_index": 3,
            "by": {"context.platform": f"p{i}"},
            "timestamp": from_epoch_ms(BASE),
            "window": "15m",
            "baseline": "24h",
            "rate": 0.3,
            "baseline_rate": 0.8,
            "entered": 40,
            "baseline_entered": 400,
        }
    )


async def _lag_while(work: Any) -> tuple[list[float], Any]:
    """Run `work`; meanwhile, how late each TICK_S sleep woke (seconds)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append(loop.time() - before - TICK_S)

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        done.set()
        await ticker
    return lags, result


async def measure(values: int, cap: int) -> dict[str, Any]:
    store = await _store(values)
    query = {"window": "10m", "funnel": "checkout", "by": "context.platform"}

    async def live(request: web.Request) -> web.Response:
        status, body = await views.live(store, CONFIG, None, dict(request.query), cap)
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/live", live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/live"
    times: list[float] = []
    sizes: list[int] = []

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in range(ROUNDS):
            started = time.perf_counter()
            async with http.get(url, params=query) as response:
                sizes.append(len(await response.read()))
            times.append(time.perf_counter() - started)

    try:
        async with aiohttp.ClientSession() as http:
            lags, _ = await _lag_while(asyncio.gather(*(client(http) for _ in range(CLIENTS))))
    finally:
        await runner.cleanup()

    metrics = Metrics()
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", breakdown_cap=cap)
    alerting = Alerting(settings, CONFIG, metrics, publisher=_Recorder(), leader=_Recorder())
    logging.getLogger("streams.alerts.service").setLevel(logging.ERROR)  # 10,000 lines otherwise
    await alerting._publish([_alert(i) for i in range(values)])
    series = sum(
        1 for line in metrics.render().decode().splitlines() if line.startswith("conversions_alert_firing{")
    )
    lags.sort()
    return {
        "cap": cap,
        "live_response_bytes": max(sizes),
        "live_median_s": round(statistics.median(times), 4),
        "alert_firing_series": series,
        "loop_lag_max_s": round(lags[-1], 4),
        "loop_lag_p99_s": round(lags[int(len(lags) * 0.99)], 4),
        "requests": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=10_000)
    args = parser.parse_args()
    capped = asyncio.run(measure(args.values, Settings().breakdown_cap))
    uncapped = asyncio.run(measure(args.values, args.values))  # every value kept: as before the cap
    result = {
        "values": args.values,
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "capped": capped,
        "uncapped": uncapped,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
