"""Folding a batch's increments (`counters.batch`) changes no result.

The Redis stores (one server and the cluster) fold each batch's increments per key and field
before their one Lua call (the counters consumer hands them unstamped, `core.counters.
Increments`: folded once per finest bucket, stamped per resolution after); the in-memory store
applies every message's increments one by one, as the Lua script did before folding, and is the
reference here. Seeded deliveries of the simulated shop's outputs, with crashes that redeliver
what was applied, ids repeated upstream and within a batch, two topics and two shards, must
leave both with the same (applied, skipped) for every call and the same contents in every key:
each hash field (sums of integers and of decimals), each list, each offset, and each
unique-user sketch (its count equals that of a sketch built from the reference's exact members
one by one; decimal sums as `same_amount` says).
"""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from streams.core.measures.counters import Increments, Op, increments, increments_of
from streams.counters.base import CountedMessage
from streams.counters.batch import fold
from streams.counters.memory_store import MemoryCounterStore
from streams.counters.redis_store import CounterStore
from streams.offline.run import OfflineRun
from streams.tools.infra import start_redis
from streams.tools.simulate import Simulator
from tests.counters.conftest import CONFIG, MINUTE

DAY_S = 86_400  # the dedupe period: no period boundary falls inside a test


def test_each_kind_folds_to_one_increment_per_key_and_field() -> None:
    ops = [
        Op("h", "f:x", "e:0", 1),
        Op("h", "f:x", "e:0", 2),
        Op("h", "f:x", "d:1", -1),
        Op("h", "g:x", "n", "4"),
        Op("h", "g:y", "n", 2**53),
        Op("f", "g:x", "v", 0.1),
        Op("f", "g:x", "v", 0.2),
        Op("f", "g:x", "w", 1e-7),
        Op("p", "u:x", "alice", 1),
        Op("p", "u:x", "bob", 1),
        Op("p", "u:x", "alice", 1),
        Op("m", "meta", "latest", 5),
        Op("m", "meta", "latest", 9),
        Op("m", "meta", "latest", 3),
        Op("l", "recent", "a", 2),
        Op("l", "recent", "b", 2),
        Op("l", "recent", "c", 2),
        Op("l", "recent", "d", 3),
    ]
    folded = fold([ops[:8], ops[8:]])
    assert folded.wire() == {
        # integer sums as numbers, a key's as strings where one is beyond a double's exact range
        "h": {"f:x": {"e:0": 3, "d:1": -1}, "g:x": {"n": 4}, "g:y": {"n": str(2**53)}},
        "f": {"g:x": {"v": "0.3", "w": "0.0000001"}},  # exact decimal sums, no exponent
        "m": {"meta": {"latest": "9"}},
        "p": {"u:x": ["alice", "bob"]},
        "l": {"recent": [[2, ["b", "c"]], [3, ["d"]]]},  # runs of one cap, in order
    }
    assert len(folded) == 4 + 2 + 1 + 2 + 2
    with pytest.raises(ValueError, match="unknown increment kind"):
        fold([[Op("x", "k", "f", 1)]])  # type: ignore[arg-type]


def test_unstamped_increments_fold_as_their_stamped_list() -> None:
    """The consumer's path (the groups folded per finest bucket, stamped once) against the
    stamped list folded op by op, over every output of a simulated run, at three bucket sizes
    and batch sizes: the same wire, field for field."""
    run = OfflineRun(CONFIG, partitions=2)
    outputs = [o.model_dump(mode="json") for o in run.run(Simulator(seed=4, users=150, days=0.5).lines())]
    for bucket_ms in (MINUTE, 5 * MINUTE, 3_600_000):
        planned = [p for p in (increments_of(o, CONFIG, bucket_ms) for o in outputs) if p is not None]
        assert len(planned) > 300
        for size in (1, 37, 500):
            for start in range(0, len(planned), size):
                chunk = planned[start : start + size]
                unstamped, stamped = fold(chunk), fold([list(p) for p in chunk])
                assert unstamped.wire() == stamped.wire()
                assert len(unstamped) == len(stamped)
    assert all(isinstance(p, Increments) and len(p) == len(list(p)) for p in planned)


def shop_messages(seed: int, unstamped: bool = False) -> list[list[CountedMessage]]:
    """Per shard, the messages of the simulated shop's outputs in offset order: two topics,
    some ids repeated upstream (at a later offset), some without an id, and extra increments of
    every kind (lists of another cap, negative and large amounts). `unstamped`: an output's own
    increments as the counters consumer makes them (`increments_of`), where nothing is added."""
    rng = random.Random(seed)
    run = OfflineRun(CONFIG, partitions=2)
    outputs = [o.model_dump(mode="json") for o in run.run(Simulator(seed=seed, users=120, days=0.2).lines())]
    per_shard: list[list[CountedMessage]] = [[], []]
    offsets: dict[tuple[int, str], int] = {}
    ids: list[str] = []
    for output in outputs:
        shard, topic = rng.randrange(2), rng.choice(["micro", "macro"])
        ops: list[Op] | Increments | None = increments(output, CONFIG, MINUTE)
        if not ops:
            continue
        if unstamped:
            ops = increments_of(output, CONFIG, MINUTE)
            assert ops is not None
        if rng.random() < 0.2:
            ops = [
                *ops,
                Op("h", "x:big", "n", rng.choice([-3, 2**40, 7])),
                Op("f", "x:big", "v", rng.choice([0.01, 19.99, -2.5])),
                Op("l", "x:list", output["id"], rng.choice([3, 5])),
                Op("m", "x:max", "m", rng.randrange(1_000)),
            ]
        output_id = str(output["id"])
        roll = rng.random()
        if roll < 0.08 and ids:
            output_id = rng.choice(ids)  # repeated upstream
        elif roll < 0.12:
            output_id = ""
        ids.append(output_id)
        offset = offsets[(shard, topic)] = offsets.get((shard, topic), -1) + 1
        per_shard[shard].append(CountedMessage(topic, offset, output_id, ops))
    return per_shard


def deliveries(messages: list[CountedMessage], rng: random.Random) -> list[list[CountedMessage]]:
    """Batches as a consumer gets them: in order, of random sizes, and after a crash again from
    an earlier position (what was applied but not committed is delivered again), sometimes with
    a message delivered twice in one batch."""
    batches: list[list[CountedMessage]] = []
    position = 0
    while position < len(messages):
        size = rng.randint(1, 60)
        batch = messages[position : position + size]
        if rng.random() < 0.1:
            batch = [*batch, rng.choice(batch)]
        batches.append(batch)
        position += size
        if rng.random() < 0.25:
            position = max(0, position - rng.randint(1, 80))  # a crash before the commit
    return batches


def same_amount(got: str, want: str) -> bool:
    """Integers exactly; decimal sums as Redis keeps them: HINCRBYFLOAT adds in long double and
    prints up to 17 decimals (249 + 59.9 is kept as 308.89999999999999999, folded or not), so
    they agree with the exact sum to far below a cent."""
    if want.lstrip("-").isdigit():
        return got == want
    scale = max(Decimal(1), abs(Decimal(want)))
    return abs(Decimal(got) - Decimal(want)) <= Decimal("1e-9") * scale


async def contents(store: CounterStore, memory: MemoryCounterStore, shard: int) -> list[str]:
    """Compare every key of the shard; returns the differences."""
    differences: list[str] = []
    prefix = store.prefix(shard)
    client: Any = store.redis
    expected_keys = {
        k
        for k in [*memory.hashes, *memory.lists, *memory.uniques]
        if k.startswith(prefix) and (memory.hashes.get(k) or memory.lists.get(k) or memory.uniques.get(k))
    }
    found_keys = {key.decode() async for key in client.scan_iter(match=prefix + "*")}
    found_keys = {k for k in found_keys if not k.startswith(prefix + "seen:")}
    if found_keys != expected_keys:
        differences.append(f"keys: extra {found_keys - expected_keys}, missing {expected_keys - found_keys}")
    keys = sorted(expected_keys)
    read = client.pipeline(transaction=False)
    for key in keys:
        if key in memory.lists:
            read.lrange(key, 0, -1)
        elif key in memory.uniques:
            reference = f"ref:{{{key}}}"  # a key of its own, in another slot
            for member in sorted(memory.uniques[key]):
                read.pfadd(reference, member)  # one by one, as before folding
            read.execute_command("PFCOUNT", key)
            read.execute_command("PFCOUNT", reference)
            read.delete(reference)
        else:
            read.hgetall(key)
    replies = iter(await read.execute())
    for key in keys:
        if key in memory.lists:
            got = next(replies)
            if got != memory.lists[key]:
                differences.append(f"{key}: {got} != {memory.lists[key]}")
        elif key in memory.uniques:
            for _ in memory.uniques[key]:
                next(replies)
            got_count, want_count, _ = next(replies), next(replies), next(replies)
            if got_count != want_count:
                differences.append(f"{key}: sketch counts {got_count}, one by one {want_count}")
        else:
            got_hash = {f.decode(): v.decode() for f, v in next(replies).items()}
            want_hash = {f.decode(): v.decode() for f, v in memory.hashes[key].items()}
            if set(got_hash) != set(want_hash) or not all(
                same_amount(got_hash[f], want_hash[f]) for f in want_hash
            ):
                differences.append(f"{key}: {got_hash} != {want_hash}")
    return differences


@pytest.mark.parametrize(("seed", "unstamped"), [(1, False), (2, True), (3, True)])
async def test_folded_batches_equal_increments_applied_one_by_one(
    served_store: tuple[CounterStore, str], seed: int, unstamped: bool
) -> None:
    store, _ = served_store
    store = CounterStore(
        store.redis, store.app_id, store.shards, store.bucket_ms, ttl_s=3_600, dedupe_s=DAY_S
    )
    memory = MemoryCounterStore(app_id=store.app_id, shards=2, bucket_ms=MINUTE, dedupe_s=DAY_S)
    rng = random.Random(seed)
    redelivered = 0
    for shard, messages in enumerate(shop_messages(seed, unstamped)):
        for batch in deliveries(messages, rng):
            # the reference applies each message's stamped list, op by op
            want = await memory.apply(shard, [replace(m, ops=list(m.ops)) for m in batch])
            got = await store.apply(shard, batch)
            assert got == want, (shard, batch[0].offset)
            redelivered += want[1]
    assert redelivered > 50, "the deliveries exercise the dedupe"
    for shard in (0, 1):
        assert await contents(store, memory, shard) == []


@pytest.mark.integration
async def test_redis_is_sent_one_increment_per_key_and_field(tmp_path: Path) -> None:
    """Counted by Redis itself (its command statistics, on a server of this test's own)."""
    server = start_redis(tmp_path)
    client = aioredis.from_url(server.url)
    try:
        store = CounterStore(client, app_id="one", shards=1, bucket_ms=MINUTE, ttl_s=3_600)
        distinct = {m.output_id: m for m in shop_messages(5)[0] if m.output_id}
        messages = sorted(distinct.values(), key=lambda m: (m.topic, m.offset))[:400]
        folded = fold(m.ops for m in messages)
        before = await client.info("commandstats")
        assert await store.apply(0, messages) == (len(messages), 0)
        after = await client.info("commandstats")

        def calls(name: str) -> int:
            return int(after.get(f"cmdstat_{name}", {}).get("calls", 0)) - int(
                before.get(f"cmdstat_{name}", {}).get("calls", 0)
            )

        wire = folded.wire()
        assert calls("hincrby") == sum(map(len, wire["h"].values()))
        assert calls("hincrbyfloat") == sum(map(len, wire["f"].values()))
        assert calls("pfadd") == len(wire["p"])
        assert calls("hincrby") * 2 < sum(o.kind == "h" for m in messages for o in m.ops)
    finally:
        await client.aclose()
        server.stop()
