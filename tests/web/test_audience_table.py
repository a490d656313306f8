"""The channels endpoint by an audience field: sessions, converting sessions, rate, conversions,
value, and the session measures (average duration, pages per session, bounce rate), reconciled
with the session summaries they were counted from; and every column's basis stated."""

from __future__ import annotations

from typing import Any

import orjson

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.input.audience import EnrichmentSpec
from streams.core.measures.counters import increments
from streams.counters.base import CountedMessage
from streams.counters.memory_store import MemoryCounterStore
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator
from streams.web import analysis

CONFIG = compile_config(load_config(DEFAULT_FUNNELS))
MINUTE = 60_000


async def test_the_audience_table_reconciles_with_the_sessions() -> None:
    run = OfflineRun(CONFIG, 2, enrichment=EnrichmentSpec())
    lines = Simulator(seed=3, users=150, days=1, audience=True).lines()
    outputs: list[dict[str, Any]] = [o.model_dump(mode="json") for line in lines for o in run.feed(line)]
    outputs += [o.model_dump(mode="json") for o in run.flush()]
    outputs = [orjson.loads(orjson.dumps(o)) for o in outputs]
    store = MemoryCounterStore(app_id="a", shards=1, bucket_ms=MINUTE)
    counted = [
        CountedMessage("t", i, str(o["id"]), increments(o, CONFIG, MINUTE)) for i, o in enumerate(outputs)
    ]
    await store.apply(0, counted)
    query = {"dimension": "audience.device", "start": "1710115200000", "end": "1710288000000"}
    status, body = await analysis.channels(store, CONFIG, query)
    assert status == 200, body
    rows = {row["audience.device"]: row for row in body["rows"]}
    sessions = [o for o in outputs if o["type"] == "session"]
    assert len(sessions) > 100 and set(rows) == {s["audience"]["device"] for s in sessions}
    for device, row in rows.items():
        mine = [s for s in sessions if s["audience"]["device"] == device]
        assert row["sessions"] == len(mine)
        assert row["avg_session_duration_ms"] == sum(s["duration_ms"] for s in mine) / len(mine)
        assert row["pages_per_session"] == sum(s["page_views"] for s in mine) / len(mine)
        assert row["bounce_rate"] == sum(1 for s in mine if s["page_views"] <= 1) / len(mine)
        macros = [o for o in outputs if o["type"] == "macro" and o["goal"] == body["goal"]]
        assert row["conversions"] == sum(1 for m in macros if m["audience"]["device"] == device)
    assert "bounce_rate" in body["bases"]["closed sessions (journeys.sessions)"]
    assert "audience.country" in body["dimensions"]
