"""The counters reconcile with the topics: the simulated shop run through the real engine, its
outputs counted in a store, and the analysis reads compared with the outputs themselves and with
the engine's own journeys (per step, entered = reached the next + dropped + still open)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from streams.core.input.event import to_epoch_ms
from streams.core.journeys.journey import Journey
from streams.core.measures.counters import increments
from streams.counters.base import CountedMessage
from streams.offline.run import OfflineRun
from streams.tools.simulate import Simulator
from streams.web import analysis
from tests.counters.conftest import CONFIG, MINUTE, Store

STEPS = [s.name for s in CONFIG.funnels_by_name["checkout"].steps]


def _ms(value: str) -> int:
    return to_epoch_ms(datetime.fromisoformat(value))


def _run() -> tuple[list[dict[str, Any]], OfflineRun]:
    run = OfflineRun(CONFIG, partitions=2)
    outputs = [o.model_dump(mode="json") for o in run.run(Simulator(seed=11, users=600, days=3).lines())]
    return outputs, run


async def test_progress_time_to_convert_and_channels_reconcile_with_the_outputs(store: Store) -> None:
    outputs, run = _run()
    by_shard: dict[int, list[CountedMessage]] = {0: [], 1: []}
    for i, output in enumerate(outputs):
        shard = i % 2  # any split: the reads sum the shards
        by_shard[shard].append(CountedMessage("t", i, output["id"], increments(output, CONFIG, MINUTE)))
    for shard, messages in by_shard.items():
        await store.apply(shard, messages)
    window = {"start": "2024-03-01T00:00:00+00:00", "end": "2024-03-20T00:00:00+00:00"}

    # per step: entered, reached the next, dropped, and still open in the engine's journeys
    status, body = await analysis.progress_view(store, CONFIG, "checkout", window)
    assert status == 200, body
    micro = Counter(
        o["step_index"] for o in outputs if o["type"] == "micro" and o.get("funnel") == "checkout"
    )
    dropped = Counter(
        o["step_index"] for o in outputs if o["type"] == "dropoff" and o["funnel"] == "checkout"
    )
    still_open: Counter[int] = Counter()
    for raw in run.store.values():
        journey = Journey.loads(raw)
        for key, attempt in journey.attempts.items():
            if key.split("#")[0] == "checkout":
                still_open[attempt.reached] += 1
    rows = body["steps"]
    for k, row in enumerate(rows):
        assert row["entered"] == micro[k]
        assert row["dropped"] == dropped[k]
        assert row["in_progress"] == still_open[k], (k, row, still_open)
        if k < len(rows) - 1:
            assert row["entered"] == row["reached_next"] + row["dropped"] + row["in_progress"]
    assert sum(still_open.values()) > 50, "a 7-day window leaves many attempts open after 3 days"
    assert body["overall"]["rate_projected"] >= body["overall"]["rate_observed"]

    # time to convert: one per milestone after the first step, summing (step time - opening)
    status, ttc = await analysis.time_to_convert_view(store, CONFIG, "checkout", window)
    assert status == 200
    for row in ttc["steps"]:
        elapsed = [
            _ms(o["timestamp"]) - _ms(o["started_at"])
            for o in outputs
            if o["type"] == "micro" and o.get("funnel") == "checkout" and o["step_index"] == row["index"]
        ]
        assert row["conversions"] == len(elapsed) > 0
        assert row["mean_ms"] * len(elapsed) == pytest.approx(sum(elapsed))
        assert sum(b["count"] for b in row["histogram"]) == len(elapsed)
        ordered = sorted(elapsed)
        assert ordered[len(ordered) // 4] <= row["median_ms"] <= ordered[3 * len(ordered) // 4]

    # channels: sessions from the session summaries, conversions from the macroconversions
    status, table = await analysis.channels(store, CONFIG, {**window, "limit": "500"})
    assert status == 200
    sessions = Counter(o["channel"] for o in outputs if o["type"] == "session")
    purchases = Counter(o["channel"] for o in outputs if o["type"] == "macro" and o["goal"] == "purchase")
    values: Counter[str] = Counter()
    for o in outputs:
        if o["type"] == "macro" and o["goal"] == "purchase":
            values[o["channel"]] += o["value"]
    assert {r["channel"]: r["sessions"] for r in table["rows"]} == dict(sessions)
    assert {r["channel"]: r["conversions"] for r in table["rows"] if r["conversions"]} == dict(purchases)
    for row in table["rows"]:
        assert abs(row["value"] - values[row["channel"]]) < 0.01
    split_status, split = await analysis.channels(store, CONFIG, {**window, "split": "visitor_type"})
    assert split_status == 200
    visitors = Counter(o["visitor_type"] for o in outputs if o["type"] == "session")
    assert {v: t["sessions"] for v, t in split["totals"].items()} == dict(visitors)
    assert visitors["returning"] > 0 and visitors["new"] > 0
