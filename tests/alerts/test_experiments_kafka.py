"""Experiments through the real worker: simulated traffic with a planted variant difference,
through the broker, the journeys, `conversions.micro` and the alerts service, publishes on
`conversions.experiments` exactly the `type: experiment` outputs offline mode prints for the
same input, although the worker is killed mid-stream and its successor judges everything again
(the same ids and contents, deduplicated by id). The successor's `/experiments`, its /metrics
p-value and `conversions report --experiment` (replayed from the Redis counters) show offline
mode's final state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.records.outputs import ExperimentUpdate
from streams.kafka import ensure_topics
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.report import experiment_report
from streams.tools.simulate import Simulator, VariantSplit
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import get_json, get_metric, wait_for
from tests.helpers import experiment_funnels, lines_past, read_topics
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, send_ticks, unique_by_id

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 7


@pytest.mark.timeout(400)
async def test_kafka_publishes_the_experiment_updates_offline_mode_prints(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(experiment_funnels())
    config = compile_config(load_config(funnels))
    split = VariantSplit(step="add_to_cart", lift=1.4)
    lines = list(Simulator(seed=8, users=2_000, start=START, days=DAYS, split=split).lines())
    end = START + timedelta(days=40)
    closing, ticks = lines_past(end)
    run = OfflineRun(config, settings.partitions)
    expected = [o for o in run.run(lines + closing + ticks) if isinstance(o, ExperimentUpdate)]
    (final,) = [s for s in run.experiments.snapshot() if s.experiment == "cart_button"]
    assert [v.decision for v in final.variants] == ["control", "better"], "the planted lift is found"
    assert expected[-1].timestamp < START + timedelta(days=DAYS + 1)

    port = free_port()
    env = {
        **SOURCE_IDLE,
        "CONVERSIONS_FUNNELS": str(funnels),
        "CONVERSIONS_WEB_ENABLED": "true",
        "CONVERSIONS_WEB_PORT": str(port),
        "CONVERSIONS_COMMIT_INTERVAL_S": "3600",  # nothing committed before the kill: all redelivered
    }
    await ensure_topics(settings)
    first = start_worker("first", env=env)
    half = len(lines) // 2
    await produce_lines(settings, lines[:half])
    await wait_for(lambda: _past(port, START + timedelta(days=1)), timeout_s=120)
    topic = settings.output_topics["experiment"]
    assert topic == settings.topic("conversions.experiments")
    await wait_for(lambda: read_topics(settings, [topic], quiet_s=0.5, timeout_s=3), timeout_s=60)
    first.kill()  # after it has published some updates, and before it has committed anything
    start_worker("second", env=env)
    await produce_lines(settings, lines[half:])
    await send_ticks(settings, ticks)  # every journey partition's watermark moves to the end ...
    await asyncio.sleep(3)
    await produce_lines(settings, closing)  # ... and these carry it to the evaluators
    await wait_for(lambda: _past(port, START + timedelta(days=DAYS + 2)), timeout_s=180)

    actual = await read_topics(settings, [topic], expect=len(expected))
    published = unique_by_id(actual)  # one id, one content, however often it was sent
    assert len(actual) > len(published), "the successor published the first worker's updates again"
    assert sorted(published, key=lambda u: u["id"]) == sorted(
        (orjson.loads(u.to_json()) for u in expected), key=lambda u: u["id"]
    )

    body = await get_json(port, "/experiments", name="cart_button")
    (shown,) = body["experiments"]
    assert shown["variants"] == [v.model_dump(mode="json") for v in final.variants]
    assert shown["updated_at"] == final.timestamp.isoformat()
    assert shown["changes"][0]["id"] == [u for u in expected if u.experiment == "cart_button"][-1].id
    treatment = final.variants[1]
    labels = 'experiment="cart_button",variant="treatment"'
    assert await get_metric(port, "conversions_experiment_p_value", labels) == pytest.approx(
        treatment.p_value
    )

    async def reported() -> Any:
        report = await experiment_report(
            settings, config, "cart_button", 10 * 86_400_000, START + timedelta(days=DAYS + 3)
        )
        return report if report.state is not None and report.state.variants == final.variants else None

    report = await wait_for(reported, timeout_s=60)  # the counters may still be applying
    assert [u.model_dump(mode="json") for u in report.changes] == [
        u.model_dump(mode="json") for u in expected if u.experiment == "cart_button"
    ], "replayed from the Redis counters: the worker's decision changes"


async def _past(port: int, moment: datetime) -> float | None:
    judged_to = await get_metric(port, "conversions_alert_watermark_seconds", "")
    return judged_to if judged_to >= moment.timestamp() else None
