"""The counters consumer's one-pass increments (`counters.tally`) fold to exactly what
`core.counters.increments_of` folds to, and leave Redis exactly as it does.

The reference is the list of increments `increments_of` makes per output (the definition of the
counters), folded per batch by `batch.fold`: over every output of simulated shops and outputs
made by hand for what simulation seldom makes (an attempt carried to a new funnel version, a
funnel no longer configured, numbers and booleans as breakdown values, other timestamp shapes),
with the breakdown cap low enough to refuse values and with pseudonymized identities, at three
bucket sizes and three batch sizes, the wire sent to Redis must be equal, key for key, field for
field and member for member; and on a real Redis, batches delivered with redeliveries must leave
the same dump (every hash, list, sketch's bytes, applied offsets and remembered ids).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from streams.core.measures.cardinality import ValueCap
from streams.core.measures.counters import increments, increments_of, pseudonymizer
from streams.counters.base import CountedMessage
from streams.counters.batch import fold
from streams.counters.redis_store import CounterStore
from streams.counters.tally import CapMemo, Tallied, Tallier
from streams.offline.run import OfflineRun
from streams.tools.infra import LocalInfra
from streams.tools.simulate import Simulator
from tests.counters.conftest import CONFIG, MINUTE

HOUR = 3_600_000


def by_hand() -> list[dict[str, Any]]:
    """Outputs the simulated shop seldom or never makes."""
    base = {"anonymous_id": "a-hand", "user_id": None, "session_id": "s-hand"}
    breakdowns = {"context.platform": 1, "campaign.source": True, "landing_page": 1.0, "channel": None}
    return [
        {
            **base,
            "id": "carried-1",
            "type": "carried",
            "timestamp": "2024-03-13T10:20:05.123456Z",
            "funnel": "checkout",
            "funnel_version": "v2",
            "previous_version": "v1",
            "previous_step_index": 1,
            "step_index": 1,
            "reached": [0, 1],
            "started_at": "2024-03-13T09:59:59Z",
            "breakdowns": breakdowns,
        },
        {
            **base,
            "id": "carried-2",
            "type": "carried",
            "timestamp": "2024-03-13T10:21:05+00:00",
            "funnel": "gone",
            "funnel_version": "v9",
            "previous_version": None,
            "previous_step_index": 0,
            "step_index": 0,
            "reached": [],
            "started_at": None,
            "breakdowns": {"x": "y"},
        },
        {
            **base,
            "id": "micro-gone",
            "type": "micro",
            "kind": "milestone",
            "timestamp": "2024-03-13T10:22:00Z",
            "funnel": "gone",
            "funnel_version": "v9",
            "step_index": 2,
            "started_at": "2024-03-13T10:00:00.5+00:00",
            "previous_at": "2024-03-13T10:21:00.000001Z",
            "breakdowns": {"x": 1, "y": True},
        },
        {  # an unversioned output of a funnel no longer configured: not counted
            **base,
            "id": "micro-old",
            "type": "micro",
            "kind": "milestone",
            "timestamp": "2024-03-13T10:22:00Z",
            "funnel": "gone",
            "step_index": 0,
            "started_at": "2024-03-13T10:22:00Z",
        },
        {
            **base,
            "id": "dropoff-gone",
            "type": "dropoff",
            "timestamp": "2024-03-14T00:00:00.999999Z",
            "funnel": "gone",
            "funnel_version": "v9",
            "step_index": 1,
            "reason": "timeout",
            "started_at": "2024-03-13T23:00:00Z",
            "time_in_funnel_ms": 61_000,
            "breakdowns": {"x": "1"},
        },
        {
            **base,
            "id": "macro-hand",
            "type": "macro",
            "timestamp": "2024-03-14T00:00:01.000000Z",
            "goal": "purchase",
            "value": 19.99,
            "currency": "EUR",
            "decision_time_ms": 1,
            "channel": 1,
            "landing_page": True,
            "sessions": 3,
            "breakdowns": {"channel": "Other", "visitor_type": "new", "n": 1},
            "audience": {"device": "mobile", "country": None},
        },
        {
            **base,
            "id": "session-hand",
            "type": "session",
            "timestamp": "2024-03-14T00:00:02.5Z",
            "landing_page": "/",
            "channel": "Direct",
            "page_views": 9,
            "duration_ms": 0,
            "microconversions": 2,
            "conversions": ["purchase", "signup", "purchase"],
            "visitor_type": None,
            "audience": {},
        },
        {**base, "id": "alert", "type": "alert", "timestamp": "2024-03-14T00:00:02Z"},
    ]


def shop(seed: int) -> list[dict[str, Any]]:
    """Every output of a simulated shop (the journeys closed at the end: stalls and drop-offs),
    decoded as the counters consumer decodes them, and the outputs made by hand among them."""
    run = OfflineRun(CONFIG, partitions=2)
    made = [*run.run(Simulator(seed=seed, users=150, days=0.5).lines()), *run.flush()]
    outputs = [o.model_dump(mode="json") for o in made]
    for i, output in enumerate(by_hand()):
        outputs.insert(len(outputs) * (i + 1) // 9, output)
    return outputs


@pytest.mark.parametrize(("seed", "cap", "pseudonymize"), [(4, 2, False), (5, 1_000, True), (6, 3, True)])
def test_tallied_increments_fold_as_increments_of(seed: int, cap: int, pseudonymize: bool) -> None:
    outputs = shop(seed)
    assert {o["type"] for o in outputs} >= {"micro", "macro", "dropoff", "stalled", "session", "carried"}
    pseudonym = pseudonymizer(b"key") if pseudonymize else None
    for bucket_ms in (MINUTE, 5 * MINUTE, HOUR):
        for size in (1, 37, 500):
            reference_cap, tallied_cap = ValueCap(cap), ValueCap(cap)
            tallier = Tallier(CONFIG, bucket_ms, pseudonym, tallied_cap)
            for start in range(0, len(outputs), size):
                chunk = outputs[start : start + size]
                reference = [
                    increments_of(o, CONFIG, bucket_ms, pseudonym, reference_cap) or () for o in chunk
                ]
                tallied = [tallier.tally(o) for o in chunk]
                assert [i for i, _ in tallied] == [str(o.get("id", "")) for o in chunk]
                folded = fold(t or () for _, t in tallied)
                assert folded.wire() == fold(reference).wire(), (bucket_ms, size, start)
                assert len(folded) == len(fold(reference))
            for day, dims in reference_cap._admitted.items():
                for dim, values in dims.items():
                    assert tallied_cap.admitted(day, dim) == len(values)


def test_tallied_lists_the_increments_of_its_output() -> None:
    """Iterated (by the in-memory store), a `Tallied` gives `increments`' list of its output."""
    outputs = shop(7)
    reference_cap, tallied_cap = ValueCap(4), ValueCap(4)
    tallier = Tallier(CONFIG, MINUTE, None, tallied_cap)
    counted = 0
    for output in outputs:
        _, tallied = tallier.tally(output)
        expected = increments(output, CONFIG, MINUTE, cap=reference_cap)
        assert (list(tallied) if tallied is not None else []) == expected
        counted += tallied is not None
    assert counted > 300


def test_the_cap_memo_answers_as_the_cap_and_leaves_it_as_offered_every_value() -> None:
    """Values that print alike are alike to the cap (1 and "1"), others are not (1 and True);
    days come and go (the cap keeps the latest three), and come back after being forgotten."""
    rng = random.Random(3)
    reference, remembered = ValueCap(2), ValueCap(2)
    memo = CapMemo(remembered)
    values: list[Any] = [1, "1", True, "True", 1.0, None, "a", "b", "c", "(other)"]
    for _ in range(5_000):
        day = rng.choice([0, 1, 2, 3, 4, 5, 9, 10, 11, rng.randrange(20)])
        dim = rng.choice(["d", "e"])
        value = rng.choice(values)
        want = reference.admit(day, dim, value)
        got = memo.admit(memo.day(day), day, dim, value)
        assert type(got) is type(want) and got == want, (day, dim, value)
    assert remembered._admitted == reference._admitted


async def dump(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under `prefix`, with its contents (sketches as their bytes)."""
    contents: dict[str, Any] = {}
    async for raw in client.scan_iter(match=prefix + "*"):
        key = raw.decode()[len(prefix) :]
        kind = (await client.type(raw)).decode()
        if kind == "hash":
            contents[key] = {f.decode(): v.decode() for f, v in (await client.hgetall(raw)).items()}
        elif kind == "list":
            contents[key] = await client.lrange(raw, 0, -1)
        elif kind == "set":
            contents[key] = sorted(await client.smembers(raw))
        else:
            contents[key] = await client.get(raw)
    return contents


@pytest.mark.integration
async def test_tallied_batches_leave_redis_as_increments_of_does(infra: LocalInfra) -> None:
    """The same outputs, in the same batches with the same redeliveries (a crash before the
    commit), once as `increments_of` makes them and once tallied: the same dump of every key."""
    outputs = [o for o in shop(8) if o["type"] != "alert"]
    rng = random.Random(8)
    batches: list[list[int]] = []
    position = 0
    while position < len(outputs):
        size = rng.randint(1, 120)
        batches.append(list(range(position, min(position + size, len(outputs)))))
        position += size
        if rng.random() < 0.3:
            position = max(0, position - rng.randint(1, 60))
    client = aioredis.from_url(infra.redis_url)
    app = uuid.uuid4().hex[:8]
    stores = [
        CounterStore(client, app_id=f"{app}-{name}", shards=1, bucket_ms=MINUTE, ttl_s=3_600, dedupe_s=86_400)
        for name in ("reference", "tallied")
    ]
    reference_cap, tallied_cap = ValueCap(5), ValueCap(5)
    tallier = Tallier(CONFIG, MINUTE, None, tallied_cap)
    try:
        skipped = 0
        for batch in batches:
            reference = [
                CountedMessage(
                    "t",
                    i,
                    outputs[i]["id"],
                    increments_of(outputs[i], CONFIG, MINUTE, None, reference_cap) or (),
                )
                for i in batch
            ]
            tallied: list[CountedMessage] = []
            for i in batch:
                output_id, planned = tallier.tally(outputs[i])
                assert isinstance(planned, Tallied) == (reference[len(tallied)].ops != ())
                tallied.append(CountedMessage("t", i, output_id, planned or ()))
            want = await stores[0].apply(0, reference)
            assert await stores[1].apply(0, tallied) == want
            skipped += want[1]
        assert skipped > 100, "the deliveries exercise the redelivery"
        expected = await dump(client, stores[0].prefix(0))
        got = await dump(client, stores[1].prefix(0))
        assert len(expected) > 500
        assert got == expected
    finally:
        await client.aclose()


def test_the_cap_memo_remembers_only_what_the_cap_keeps() -> None:
    """A flood of distinct values (bots, random paths) past the cap: each still answers `(other)`,
    and the memo holds no more than the cap does, however many were refused."""
    cap = ValueCap(3)
    memo = CapMemo(cap)
    known = memo.day(7)
    answers = [memo.admit(known, 7, "landing_page", f"/random/{i}") for i in range(10_000)]
    assert answers[:3] == ["/random/0", "/random/1", "/random/2"]
    assert set(answers[3:]) == {"(other)"}
    assert len(known) == cap.admitted(7, "landing_page") == 3
    assert memo.admit(known, 7, "landing_page", "/random/1") == "/random/1"
