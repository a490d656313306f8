"""The webhook POSTs an alert with the test's figures (issue 16): a real HTTP endpoint on
loopback receives what `funnel.alerts` carries, p-value, per-look threshold and interval
included."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from streams.alerts.webhook import Webhook
from tests.alerts.test_alerts_kafka import webhook
from tests.web.test_views import alert


async def test_the_post_carries_the_confidence_figures() -> None:
    received: list[dict[str, Any]] = []
    hook = await webhook(received)
    fired = alert().model_copy(
        update={
            "confidence": 0.99,
            "p_value": 0.00031,
            "p_threshold": 0.00106,
            "rate_low": 0.18,
            "rate_high": 0.45,
            "interval_level": 0.99,
            "baseline_frozen": True,
        }
    )
    sender = Webhook(SecretStr(hook.url), timeout_s=5.0, topic="funnel.alerts")
    try:
        await sender.post(fired)
    finally:
        await sender.close()
        await hook.runner.cleanup()
    (body,) = received
    assert body == fired.model_dump(mode="json")
    assert (body["p_value"], body["p_threshold"], body["rate_low"], body["rate_high"]) == (
        0.00031,
        0.00106,
        0.18,
        0.45,
    )
    assert body["confidence"] == body["interval_level"] == 0.99 and body["baseline_frozen"] is True
