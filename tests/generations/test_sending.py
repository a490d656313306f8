"""Alerts judged by a generation that is not current are recorded (published to its own
`funnel.alerts`) but never sent to a receiver (issue 26): `Alerting.may_send` is the one
predicate before `alerts.delivery`, checked here with a real HTTP receiver on loopback."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from streams.alerts.service import Alerting
from streams.metrics import Metrics
from streams.settings import Settings
from tests.alerts.test_alerts_kafka import webhook
from tests.alerts.test_service import Recorder
from tests.counters.conftest import CONFIG
from tests.web.test_views import alert


class Generation:
    def __init__(self, current: bool) -> None:
        self.current = current

    def is_current(self) -> bool:
        return self.current


async def test_only_the_current_generation_sends_to_receivers() -> None:
    received: list[dict[str, Any]] = []
    hook = await webhook(received)
    pipeline, generation = Recorder(leader=True), Generation(current=False)
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", alert_webhook_url=SecretStr(hook.url))
    alerting = Alerting(
        settings, CONFIG, Metrics(), publisher=pipeline, leader=pipeline, generation=generation
    )
    try:
        assert not alerting.may_send()
        await alerting._publish([alert()])
        await alerting.delivery.idle()
        assert [a.id for a in pipeline.published] == ["a1"]  # recorded on its own topic
        assert received == []  # but nobody paged
        generation.current = True  # the cut-over
        assert alerting.may_send()
        resolved = alert().model_copy(update={"id": "a2", "state": "resolved", "rate": 0.8})
        await alerting._publish([resolved])
        await alerting.delivery.idle()
        assert [body["id"] for body in received] == ["a2"]
        pipeline.leader = False  # a follower of the current generation sends nothing either
        assert not alerting.may_send()
    finally:
        await alerting.close()
        await hook.runner.cleanup()
