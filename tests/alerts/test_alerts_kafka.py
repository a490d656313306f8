"""Alerts through the real worker: the planted incident raises exactly the alerts offline mode
raises for the same input, and their state shows in /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.kafka import ensure_topics
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.producer import produce_lines
from streams.tools.simulate import Incident, Simulator
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_counters_worker import get_metric, wait_for
from tests.helpers import incident_funnels, lines_past, read_topics
from tests.pipeline.test_journeys_kafka import SOURCE_IDLE, send_ticks

FUNNELS = incident_funnels(baseline="3d", min_entered=15)


@pytest.mark.timeout(400)
async def test_kafka_raises_the_same_alerts_as_offline(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(FUNNELS)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    incident = Incident(start + timedelta(days=4), start + timedelta(days=11), "mobile", 0.3)  # a week
    lines = list(Simulator(seed=8, users=4_000, start=start, days=13, incident=incident).lines())
    end = start + timedelta(days=40)
    closing, ticks = lines_past(end)
    run = OfflineRun(compile_config(load_config(funnels)), settings.partitions)
    expected = [orjson.loads(o.to_json()) for o in run.run(lines + closing + ticks) if o.type == "alert"]
    assert any(a["state"] == "fired" and a["by"] == {"context.platform": "mobile"} for a in expected)

    port = free_port()
    received: list[dict[str, Any]] = []
    hook = await webhook(received)
    await ensure_topics(settings)
    start_worker(
        env={
            **SOURCE_IDLE,
            "CONVERSIONS_FUNNELS": str(funnels),
            "CONVERSIONS_WEB_ENABLED": "true",
            "CONVERSIONS_WEB_PORT": str(port),
            "CONVERSIONS_ALERT_WEBHOOK_URL": hook.url,
        }
    )
    await produce_lines(settings, lines)
    await send_ticks(settings, ticks)  # every journey partition's watermark moves to the end ...
    await asyncio.sleep(3)
    await produce_lines(settings, closing)  # ... and these carry it to the alert evaluator
    judged_to = await wait_for(lambda: _past(port, incident.end + timedelta(days=2)), timeout_s=180)
    judged = [a for a in expected if datetime.fromisoformat(a["timestamp"]).timestamp() <= judged_to]
    assert any(a["state"] == "resolved" for a in judged), "the judged range covers the whole incident"
    actual = await read_topics(settings, [settings.topic(settings.topic_alerts)], expect=len(judged))

    def brief(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((a["timestamp"], a["state"], str(a["by"]), a["entered"], a["id"]) for a in alerts)

    assert brief(actual) == brief(judged)
    assert sorted(actual, key=lambda a: a["id"]) == sorted(judged, key=lambda a: a["id"])
    assert brief(received) == brief(actual), "the webhook got every alert"
    await hook.runner.cleanup()
    mobile = [a for a in judged if a["by"] == {"context.platform": "mobile"}]

    def in_incident(alert: dict[str, Any]) -> bool:
        at = datetime.fromisoformat(alert["timestamp"])
        return alert["by"] == {"context.platform": "mobile"} and incident.start < at < incident.end

    fired = [a for a in actual if a["state"] == "fired"]
    assert any(in_incident(a) for a in fired), "the incident raised an alert, on its platform"
    false_alarms = [a for a in fired if not in_incident(a)]
    assert len(false_alarms) <= 2, brief(false_alarms)
    labels = 'by="context.platform=mobile",funnel="checkout",step="payment"'
    assert await get_metric(port, "conversions_alert_firing", labels) == (
        1.0 if mobile[-1]["state"] == "fired" else 0.0
    )


class Hook:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


async def webhook(received: list[dict[str, Any]]) -> Hook:
    """An HTTP endpoint on loopback that keeps what is POSTed to it."""

    async def take(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return Hook(runner, f"http://127.0.0.1:{port}/alerts")


async def _past(port: int, moment: datetime) -> float | None:
    judged_to = await get_metric(port, "conversions_alert_watermark_seconds", "")
    return judged_to if judged_to >= moment.timestamp() else None
