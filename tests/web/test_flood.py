"""10,000 distinct values of a client-chosen field (issue 29): the answers, the metric series and
the alert state stay bounded by CONVERSIONS_BREAKDOWN_CAP, the top values and `(other)`.

The event loop's lag during such a flood is a time, measured in bench (`python -m
bench.cardinality_flood`), not asserted here; what keeps it short is what this asserts: the
answers the loop builds and serializes are a few dozen rows, not 10,000.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from streams.alerts.service import Alerting
from streams.core.measures.cardinality import OTHER
from streams.core.records.outputs import OutputEvent
from streams.counters.memory_store import MemoryCounterStore
from streams.metrics import Metrics
from streams.settings import Settings
from streams.web import views
from tests.counters.conftest import BASE, CONFIG, MINUTE
from tests.counters.test_stores import batch, macro, milestone
from tests.web.test_views import alert

FLOOD = 10_000
CAP = 50


async def flooded_store() -> MemoryCounterStore:
    """Each of FLOOD people on a platform of their own, entering checkout and buying."""
    store = MemoryCounterStore(app_id="flood", shards=2, bucket_ms=MINUTE)
    outputs: list[dict[str, object]] = []
    for i in range(FLOOD):
        platform = f"p{i:05d}"
        outputs.append(milestone(0, BASE + i % 50 * 1_000, f"u{i}", platform))
        bought = macro(f"m{i}", BASE + i % 50 * 1_000, f"u{i}")
        bought["breakdowns"] = {"context.platform": platform}
        outputs.append(bought)
    await store.apply(0, batch(outputs))
    return store


async def test_a_flood_of_breakdown_values_gives_bounded_answers() -> None:
    store = await flooded_store()
    query = {"window": "10m", "funnel": "checkout", "by": "context.platform"}
    status, body = await views.live(store, CONFIG, None, query, cap=CAP)
    assert status == 200
    breakdown = body["funnels"]["checkout"]["breakdown"]
    assert len(breakdown) == CAP + 1 and OTHER in breakdown
    assert breakdown[OTHER][0]["entered"] == FLOOD - CAP, "(other) sums every value past the cap"
    assert sum(steps[0]["entered"] for steps in breakdown.values()) == FLOOD
    goal_by = body["goals"]["goals"]["purchase"]["by"]
    platforms = [k for k in goal_by if k.startswith("context.platform=")]
    assert len(platforms) == CAP + 1 and goal_by[f"context.platform={OTHER}"] == FLOOD - CAP
    size = len(orjson.dumps(body))
    assert size < 100_000, f"/live answers {size} bytes"
    # the same answer without a cap: what the flood made of it before
    _, unbounded = await views.live(store, CONFIG, None, query, cap=FLOOD)
    assert len(orjson.dumps(unbounded)) > 20 * size

    by_platform = {"window": "10m", "by": "context.platform"}
    status, one = await views.funnel(store, CONFIG, "checkout", by_platform, CAP)
    assert status == 200 and len(one["breakdown"]) == CAP + 1
    _, goals = await views.goals(store, CONFIG, {"window": "10m"}, CAP)
    assert len(goals["goals"]["purchase"]["by"]) <= 5 * (CAP + 1)


class Recorder:
    """A `Publisher` and a `LeaderCheck` (as in tests/alerts/test_service.py)."""

    def __init__(self) -> None:
        self.published: list[OutputEvent] = []

    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        self.published.extend(outputs)

    def is_leader(self) -> bool:
        return True


async def test_a_flood_of_alert_values_gives_bounded_metric_series() -> None:
    metrics = Metrics()
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", breakdown_cap=CAP)
    alerting = Alerting(settings, CONFIG, metrics, publisher=Recorder(), leader=Recorder())
    fired = alert()
    await alerting._publish(
        [fired.model_copy(update={"id": f"a{i}", "by": {"context.platform": f"p{i}"}}) for i in range(FLOOD)]
    )
    series = [
        line
        for line in metrics.render().decode().splitlines()
        if line.startswith("conversions_alert_firing{")
    ]
    assert len(series) == CAP + 1 and any('by="other"' in line for line in series)
