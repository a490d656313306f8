"""`/alerts`, `/experiments` and the alerts in `/live` answer from the current generation
(issue 26), on the real Redis: each generation's leader records what its evaluators judged
(`generations.judged`), and a worker's web answers from its own evaluators while its generation
is current, else from the current generation's record; before the flip the old generation's
alerts, after it the new one's, on the new generation's workers and on the old ones alike."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.config.versions import config_fingerprint
from streams.counters.redis_store import counter_store
from streams.generations import judged
from streams.generations.current import REFRESH_S, CurrentGeneration
from streams.generations.registry import Registry
from streams.settings import Settings
from streams.tools.infra import LocalInfra
from streams.web import experiments, views

A = """
version: 1
funnels:
  - name: checkout
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
alerts:
  - {funnel: checkout, step: cart, window: 15m, baseline: 1h, min_entered: 5, relative_drop: 0.5}
"""
B = (
    A
    + """experiments:
  - {name: layout, funnel: checkout, variant: properties.variant, control: control, step: cart}
"""
)


def judged_by(alert_id: str) -> judged.Judged:
    """What one generation's evaluators hold: one alert firing, nothing else judged yet."""
    alert: dict[str, Any] = {
        "id": alert_id,
        "type": "alert",
        "state": "fired",
        "funnel": "checkout",
        "step": "cart",
        "step_index": 1,
        "by": {},
        "timestamp": datetime(2024, 3, 13, 10, 20, tzinfo=UTC).isoformat(),
        "window": "15m",
        "baseline": "1h",
        "rate": 0.2,
        "baseline_rate": 0.6,
        "entered": 40,
        "baseline_entered": 400,
    }
    return judged.Judged({"watermark_ms": 1710325200000, "firing": [alert], "history": [alert]})


class Leading:
    def is_leader(self) -> bool:
        return True


async def test_alerts_and_experiments_follow_the_current_generation_across_a_flip(
    settings: Settings, infra: LocalInfra
) -> None:
    redis = Redis.from_url(infra.redis_url)
    registry = Registry(redis, settings.app_id)
    await registry.ensure_first(A, config_fingerprint(parse_config(A)))
    await registry.create(B, config_fingerprint(parse_config(B)))
    stopped = False
    leaders = [
        asyncio.create_task(judged.publish(registry, n, judged_by(f"g{n}"), Leading(), lambda: stopped))
        for n in (0, 1)
    ]

    def worker(number: int, text: str) -> CurrentGeneration:
        own = settings.model_copy(update={"generation": number} if number else {})
        current = CurrentGeneration(
            own,
            compile_config(parse_config(text)),
            None,
            registry,
            lambda app_id: counter_store(settings.model_copy(update={"app_id": app_id}), redis),
            lambda: None,
        )
        current.judging = judged_by(f"g{number}")
        return current

    async def answers(current: CurrentGeneration) -> tuple[list[str], list[str]]:
        source = await current.source()
        firing = [a["id"] for a in views.alerts(source.alerts, source.config)["firing"]]
        status, body = experiments.experiments(source.experiments, source.config, {})
        assert status == 200
        return firing, [e["name"] for e in body["experiments"]]

    old, new = worker(0, A), worker(1, B)
    try:
        deadline = time.monotonic() + 10 * judged.EVERY_S
        while None in [await registry.judged(n) for n in (0, 1)]:  # both leaders have written once
            assert time.monotonic() < deadline, "a leader never wrote what its generation judged"
            await asyncio.sleep(0.05)
        assert await answers(old) == (["g0"], [])
        assert await answers(new) == (["g0"], []), "the new generation's web answers the old one's"
        assert await registry.flip(0, 1)
        await asyncio.sleep(REFRESH_S + 0.1)
        assert await answers(new) == (["g1"], ["layout"])
        assert await answers(old) == (["g1"], ["layout"]), "the old generation's web, in its last second"
    finally:
        stopped = True
        await asyncio.gather(*leaders)
        await redis.aclose()
