"""The alerts service at its seams: it publishes through a `Publisher` only while its
`LeaderCheck` says it leads, and keeps what the web reads (firing now, the latest changes)."""

from __future__ import annotations

from collections.abc import Iterable

from streams.alerts.service import Alerting
from streams.core.records.outputs import Alert, OutputEvent
from streams.metrics import Metrics
from streams.settings import Settings
from tests.counters.conftest import CONFIG
from tests.web.test_views import alert


class Recorder:
    """A `Publisher` and a `LeaderCheck`."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self.published: list[OutputEvent] = []

    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        self.published.extend(outputs)

    def is_leader(self) -> bool:
        return self.leader


def service(pipeline: Recorder) -> Alerting:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    return Alerting(settings, CONFIG, Metrics(), publisher=pipeline, leader=pipeline)


def resolved(fired: Alert) -> Alert:
    return fired.model_copy(update={"id": "a2", "state": "resolved", "rate": 0.8})


async def test_only_the_leader_publishes_but_every_worker_knows_what_fires() -> None:
    for leader in (True, False):
        pipeline = Recorder(leader)
        alerting = service(pipeline)
        await alerting._publish([alert()])
        assert [a.id for a in alerting.firing.values()] == ["a1"]
        assert [a.id for a in pipeline.published] == (["a1"] if leader else [])
        await alerting._publish([resolved(alert())])
        assert alerting.firing == {}
        assert [a.id for a in alerting.history] == ["a2", "a1"]
        assert [a.id for a in pipeline.published] == (["a1", "a2"] if leader else [])


def test_event_time_waits_for_every_partition() -> None:
    alerting = service(Recorder(True))
    assert alerting.watermark() is None
    alerting._watermarks = {p: 1_000 * (p + 1) for p in range(alerting.settings.partitions)}
    alerting._heard_at = dict.fromkeys(alerting._watermarks, float("inf"))
    assert alerting.watermark() == 1_000


async def test_a_worker_on_a_new_definition_resolves_the_incident_left_firing(settings: Settings) -> None:
    """Through the real broker: a fired alert on the alerts topic whose funnel has since changed
    is resolved at start, under the same dedup key, and only the leader publishes it."""
    import asyncio

    import orjson

    from streams.core.config.loader import parse_config
    from streams.core.config.matching import compile_config
    from streams.kafka import ensure_topics
    from streams.kafka.clients import new_producer
    from tests.helpers import STALE_CONFIG, fired_alert

    await ensure_topics(settings)
    fired = fired_alert(compile_config(parse_config(STALE_CONFIG % "b")))
    producer = new_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.output_topics["alert"], orjson.dumps(fired), partition=0)
    finally:
        await producer.stop()
    edited = compile_config(parse_config(STALE_CONFIG % "checkout_b"))
    pipeline = Recorder(leader=True)
    alerting = Alerting(settings, edited, Metrics(), publisher=pipeline, leader=pipeline)
    stop = asyncio.Event()
    running = asyncio.create_task(alerting.run(stop.is_set))
    try:
        for _ in range(300):
            if pipeline.published:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await running
        await alerting.close()
    [resolution] = pipeline.published
    assert isinstance(resolution, Alert)
    assert (resolution.state, resolution.reason, resolution.incident_id) == (
        "resolved",
        "definition_changed",
        fired["incident_id"],
    )
