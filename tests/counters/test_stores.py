"""The counter stores: replays change nothing, windows across bucket edges, breakdowns, goals and
recent macroconversions, each test on the real Redis (one round trip per batch, a TTL on every
key) and on the in-memory store, which must answer alike (the `store` fixture runs both)."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from streams.core.measures.counters import increments
from streams.counters.base import CountedMessage
from streams.counters.redis_store import CounterStore
from tests.counters.conftest import BASE, CHECKOUT, CONFIG, MINUTE, Store


def milestone(step: int, at_ms: int, user: str, platform: str = "web") -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex,
        "type": "micro",
        "kind": "milestone",
        "funnel": "checkout",
        "step": CHECKOUT.steps[step].name,
        "step_index": step,
        "user_id": user,
        "timestamp": at_ms_iso(at_ms),
        "breakdowns": {"context.platform": platform},
        "funnel_version": CHECKOUT.version,
    }


def at_ms_iso(ms: int) -> str:
    from streams.core.input.event import from_epoch_ms

    return from_epoch_ms(ms).isoformat()


def batch(
    outputs: list[dict[str, object]], topic: str = "conversions.micro", first: int = 0
) -> list[CountedMessage]:
    return [
        CountedMessage(topic, first + i, str(o["id"]), increments(o, CONFIG, MINUTE))
        for i, o in enumerate(outputs)
    ]


async def test_a_replayed_batch_changes_nothing(store: Store) -> None:
    outputs = [milestone(0, BASE + i * 1000, f"u{i % 3}") for i in range(5)]
    assert await store.apply(0, batch(outputs)) == (5, 0)
    before = await store.funnel_report(CHECKOUT, BASE, BASE + MINUTE)
    assert await store.apply(0, batch(outputs)) == (0, 5)
    after = await store.funnel_report(CHECKOUT, BASE, BASE + MINUTE)
    assert before == after and after.steps[0].entered == 5 and after.steps[0].unique_users == 3


async def test_a_repeated_output_id_at_a_new_offset_is_not_counted_twice(store: Store) -> None:
    outputs = [milestone(0, BASE, "u1"), milestone(1, BASE, "u1")]
    await store.apply(0, batch(outputs))
    assert await store.apply(0, batch(outputs, first=10)) == (0, 2)  # same ids, later offsets
    report = await store.funnel_report(CHECKOUT, BASE, BASE + MINUTE)
    assert [s.entered for s in report.steps[:2]] == [1, 1]


async def test_offsets_are_per_topic_and_shards_add_up(store: Store) -> None:
    await store.apply(0, batch([milestone(0, BASE, "a")], topic="conversions.micro"))
    await store.apply(0, batch([milestone(0, BASE, "b")], topic="other.topic"))  # offset 0 of another topic
    await store.apply(1, batch([milestone(0, BASE, "c")]))
    report = await store.funnel_report(CHECKOUT, BASE, BASE + MINUTE)
    assert report.steps[0].entered == 3 and report.steps[0].unique_users == 3


async def test_windows_across_bucket_edges(store: Store) -> None:
    times = [BASE - 1, BASE, BASE + MINUTE - 1, BASE + MINUTE, BASE + 3 * MINUTE + 5]
    await store.apply(0, batch([milestone(0, t, f"u{i}") for i, t in enumerate(times)]))
    entered = [
        (await store.funnel_report(CHECKOUT, start, end)).steps[0].entered
        for start, end in [
            (BASE, BASE + MINUTE),
            (BASE, BASE + 2 * MINUTE),
            (BASE - MINUTE, BASE),
            (BASE, BASE + 4 * MINUTE),
            (BASE + 30_000, BASE + 4 * MINUTE),
        ]
    ]
    # buckets whose start lies in [start, end): a half-bucket start skips its bucket
    assert entered == [2, 3, 1, 4, 2]
    assert await store.latest_event_ms() == BASE + 3 * MINUTE + 5


async def test_breakdowns_and_goals(store: Store) -> None:
    outputs = [
        milestone(0, BASE, "a", "ios"),
        milestone(0, BASE, "b", "web"),
        milestone(1, BASE, "a", "ios"),
        {
            "id": "m1",
            "type": "macro",
            "goal": "purchase",
            "value": 10.5,
            "decision_time_ms": 90_000,
            "user_id": "a",
            "timestamp": at_ms_iso(BASE),
            "channel": "email",
            "landing_page": "/",
            "breakdowns": {},
        },
    ]
    await store.apply(0, batch(outputs))
    report = await store.funnel_report(CHECKOUT, BASE, BASE + MINUTE, by="context.platform")
    assert [s.entered for s in report.breakdown["ios"][:2]] == [1, 1]
    assert report.breakdown["ios"][1].rate_from_previous == 1.0
    assert [s.entered for s in report.breakdown["web"][:2]] == [1, 0]
    goals = await store.goals_report(["purchase", "signup"], BASE, BASE + MINUTE)
    assert goals["goals"]["purchase"]["count"] == 1 and goals["goals"]["purchase"]["value"] == 10.5
    assert goals["goals"]["purchase"]["avg_decision_time_ms"] == 90_000
    assert goals["goals"]["purchase"]["by"]["channel=email"] == 1
    assert goals["micro_macro_ratio"] == 3.0


def macro(output_id: str, at_ms: int, user: str, value: float = 10.5) -> dict[str, object]:
    return {
        "id": output_id,
        "type": "macro",
        "goal": "purchase",
        "value": value,
        "currency": "EUR",
        "decision_time_ms": 90_000,
        "user_id": user,
        "timestamp": at_ms_iso(at_ms),
        "channel": "email",
        "landing_page": "/",
        "breakdowns": {"context.platform": "ios"},
    }


async def test_recent_macroconversions_are_newest_first_capped_deduplicated_and_anonymous(
    store: Store,
) -> None:
    per_shard = {
        shard: [
            macro(f"m{shard}-{i}", BASE + (2 * i + shard) * 1_000, f"user-{shard}-{i}") for i in range(15)
        ]
        for shard in (0, 1)
    }
    for shard, outputs in per_shard.items():
        await store.apply(shard, batch(outputs))
        await store.apply(shard, batch(outputs))  # a redelivered batch adds nothing
    recent = await store.recent_macros()
    assert len(recent) == 20
    assert [m["id"] for m in recent[:4]] == ["m1-14", "m0-14", "m1-13", "m0-13"]
    assert [m["timestamp"] for m in recent] == sorted((m["timestamp"] for m in recent), reverse=True)
    assert len({m["id"] for m in recent}) == 20
    assert recent[0]["value"] == 10.5 and recent[0]["channel"] == "email"
    assert not any("user" in orjson.dumps(m).decode() for m in recent), "no identity is kept"


async def test_every_key_has_a_ttl(served_store: tuple[CounterStore, str]) -> None:
    store, _ = served_store
    outputs = [
        milestone(0, BASE, "a"),
        macro("m1", BASE, "a"),
        {
            "id": "s1",
            "type": "session",
            "user_id": "a",
            "timestamp": at_ms_iso(BASE),
            "page_views": 2,
            "duration_ms": 100,
            "landing_page": "/",
            "channel": "direct",
        },
    ]
    await store.apply(0, batch(outputs))
    keys = [key async for key in store.redis.scan_iter(match=f"conv:{{{store.app_id}:*")]
    assert len(keys) >= 6
    ttls = {key: await store.redis.ttl(key) for key in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls


async def test_report_command_reads_the_counters(
    served_store: tuple[CounterStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, url = served_store
    from click.testing import CliRunner

    from streams.cli import main

    outputs = [milestone(0, BASE, "a"), milestone(0, BASE, "b"), milestone(1, BASE + 5, "a")]
    await store.apply(0, batch(outputs))
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("CONVERSIONS_APP_ID", store.app_id)
    monkeypatch.setenv("CONVERSIONS_PARTITIONS", "2")
    runner = CliRunner()
    table = await asyncio.to_thread(runner.invoke, main, ["report", "checkout", "--window", "1h"])
    assert table.exit_code == 0, table.output
    assert "product_view" in table.output and "50.0%" in table.output
    as_json = await asyncio.to_thread(
        runner.invoke, main, ["report", "checkout", "--json", "--by", "context.platform"]
    )
    body = orjson.loads(as_json.output)
    assert [s["entered"] for s in body["steps"][:2]] == [2, 1]
    assert body["breakdown"]["web"][1]["rate_from_previous"] == 0.5
    unknown = await asyncio.to_thread(runner.invoke, main, ["report", "nope"])
    assert unknown.exit_code == 2 and "no funnel 'nope'" in unknown.output
