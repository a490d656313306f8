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
