"""`conversions counters`: the counters in a process of their own give the reports the in-worker
counters give.

A real worker with `CONVERSIONS_COUNTERS_ENABLED=false` runs the journeys and answers the
queries; a `conversions counters` process applies the outputs to Redis (one server, then the
three-master cluster). Beside them, the
counters consumer exactly as the worker runs it in-process (`Counting`, here in the test's
event loop) counts the same output topics under another app id of the same Redis. Once both
have applied every output, the worker's API answers the same as the views over the in-process
counters, unique users included (the same identities in the same shards make the same
sketches), and the worker itself counted nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.counters.consumer import Counting
from streams.counters.redis_store import redis_counter_store
from streams.kafka import ensure_topics
from streams.metrics import Metrics
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.worker_process import WorkerProcess
from streams.web import analysis, views
from tests.counters.test_counters_worker import WINDOW, get_json, get_metric, wait_for
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, offline_outputs, send_ticks, traffic

COUNTED = ("micro", "macro", "dropoff", "stalled", "session")


def as_json(body: Any) -> Any:
    return orjson.loads(orjson.dumps(body))


@pytest.mark.timeout(400)
@pytest.mark.parametrize("redis", ["redis", "cluster"])
async def test_a_counters_process_beside_a_worker_without_counters_reports_as_in_process(
    settings: Settings,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    redis: str,
) -> None:
    if redis == "cluster":  # the worker's queries, the counters and the reference on the cluster
        url: str = request.getfixturevalue("redis_cluster_url")
        worker_env["REDIS_URL"] = url
        monkeypatch.setenv("REDIS_URL", url)
        settings = settings.model_copy(update={"redis_url": SecretStr(url)})
    lines, ticks = traffic(users=300, seed=37)
    expected = offline_outputs(settings, lines + ticks)
    counted = sum(1 for o in expected if o["type"] in COUNTED)
    web_port, metrics_port = free_port(), free_port()
    await ensure_topics(settings)
    worker = start_worker(
        "journeys",
        env={
            **SOURCE_IDLE,
            "CONVERSIONS_WEB_ENABLED": "true",
            "CONVERSIONS_WEB_PORT": str(web_port),
            "CONVERSIONS_COUNTERS_ENABLED": "false",
        },
    )
    counters = WorkerProcess(
        worker_env, tmp_path / "counters.log", ["--metrics-port", str(metrics_port)], command="counters"
    ).start(wait_ready_s=90)

    # the in-process reference: the worker's counters consumer, another app id, the same topics
    reference = settings.model_copy(update={"app_id": f"{settings.app_id}ref"})
    config = compile_config(load_config(settings.funnels))
    in_process = Counting(reference, config, Metrics(), redis_counter_store(reference))
    stop = asyncio.Event()
    running = asyncio.create_task(in_process.run(stop.is_set))
    try:
        await produce_lines(settings, lines)
        await send_ticks(settings, ticks)

        async def applied_by_both() -> bool:
            process = await get_metric(metrics_port, "conversions_counter_messages_total", 'result="applied"')
            ours = in_process.metrics.registry.get_sample_value(
                "conversions_counter_messages_total", {"result": "applied"}
            )
            return process >= counted and (ours or 0) >= counted

        await wait_for(applied_by_both, timeout_s=240)
        await asyncio.sleep(1)
        applied = 'result="applied"'
        assert await get_metric(metrics_port, "conversions_counter_messages_total", applied) == counted
        assert await get_metric(web_port, "conversions_counter_messages_total", applied) == 0
        assert "not applied here" in worker.log_text()

        store = in_process.store
        by = {**WINDOW, "by": "context.platform"}
        reads: list[tuple[str, dict[str, str], Callable[[], Awaitable[tuple[int, dict[str, Any]]]]]] = [
            ("/funnels", WINDOW, lambda: views.overview(store, config, dict(WINDOW))),
            ("/funnels/checkout", by, lambda: views.funnel(store, config, "checkout", dict(by))),
            ("/goals", WINDOW, lambda: views.goals(store, config, dict(WINDOW))),
            ("/channels", WINDOW, lambda: analysis.channels(store, config, dict(WINDOW))),
            (
                "/funnels/checkout/progress",
                WINDOW,
                lambda: analysis.progress_view(store, config, "checkout", dict(WINDOW)),
            ),
            (
                "/funnels/checkout/time-to-convert",
                WINDOW,
                lambda: analysis.time_to_convert_view(store, config, "checkout", dict(WINDOW)),
            ),
        ]
        for path, query, read in reads:
            status, body = await read()
            assert status == 200, body
            assert await get_json(web_port, path, **query) == as_json(body), path
        checkout = await get_json(web_port, "/funnels/checkout", **WINDOW)
        entered = Counter(
            o["step_index"] for o in expected if o["type"] == "micro" and o.get("funnel") == "checkout"
        )
        assert [s["entered"] for s in checkout["steps"]] == [
            entered[k] for k in range(len(checkout["steps"]))
        ]
        assert entered[0] > 100
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        await in_process.close()
        counters.stop()
    assert not counters.error_lines(), counters.tail()
    assert "counters: stopped" in counters.log_text()
