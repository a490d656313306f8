"""A Redis Cluster node killed and started again in the middle of the stream loses and doubles
nothing.

The outputs of the simulated shop wait on the output topics in three parts; a `conversions
counters` process applies them to a three-master Redis Cluster of its own. After the first
part is counted, the node serving the most shards is killed (SIGKILL); the second part is sent
while it is down, and the counters wait, logging, with nothing committed; the node comes back
on its port with its append-only file, and the third part follows. Then the same topics are
counted again, undisturbed, by the in-process consumer under another app id on the same
cluster: every key of every shard holds the same in both (hash fields, lists, unique-user
sketches), and the reports agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.journeys.engine import partition_for
from streams.counters.consumer import Counting
from streams.counters.redis_store import CounterStore, redis_counter_store
from streams.kafka import ensure_topics
from streams.kafka.clients import new_producer
from streams.metrics import Metrics
from streams.offline.run import OfflineRun
from streams.settings import Settings
from streams.tools.infra import free_port
from streams.tools.redis_cluster import LocalRedisCluster
from streams.tools.simulate import Simulator
from streams.tools.worker_process import WorkerProcess
from tests.counters.test_batch import same_amount
from tests.counters.test_counters_worker import get_metric, wait_for

# a long crash or outage simulation: `make test-slow`, not every `make test`
pytestmark = pytest.mark.slow

COUNTED = ("micro", "macro", "dropoff", "stalled", "session")


def shop_outputs(partitions: int) -> list[tuple[str, int, bytes]]:
    """(type, partition, value) of every counted output, each in its identity's partition."""
    config = compile_config(load_config(Settings().funnels))
    run = OfflineRun(config, partitions)
    found = []
    for output in [*run.run(Simulator(seed=41, users=400, days=1).lines()), *run.flush()]:
        if output.type in COUNTED:
            identity = getattr(output, "user_id", None) or getattr(output, "anonymous_id", None) or ""
            found.append((output.type, partition_for(identity, partitions), output.to_json()))
    return found


async def send(settings: Settings, outputs: list[tuple[str, int, bytes]]) -> None:
    producer = new_producer(settings, linger_ms=5)
    await producer.start()
    try:
        for kind, partition, value in outputs:
            await producer.send(settings.output_topics[kind], value, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def dump(store: CounterStore, shard: int) -> dict[str, Any]:
    """Every key of a shard, by its name after the shard's prefix: hashes, lists, and each
    sketch's count (the offsets and the remembered ids aside)."""
    client: Any = store.redis
    prefix = store.prefix(shard)
    keys = sorted(
        key
        for key in [key.decode() async for key in client.scan_iter(match=prefix + "*")]
        if key != prefix + "offsets" and not key.startswith(prefix + "seen:")
    )
    types = client.pipeline(transaction=False)
    for key in keys:
        types.type(key)
    reads = client.pipeline(transaction=False)
    kinds = [kind.decode() for kind in await types.execute()]
    for key, kind in zip(keys, kinds, strict=True):
        if kind == "hash":
            reads.hgetall(key)
        elif kind == "list":
            reads.lrange(key, 0, -1)
        else:
            reads.execute_command("PFCOUNT", key)
    out: dict[str, Any] = {}
    for key, kind, read in zip(keys, kinds, await reads.execute(), strict=True):
        name = key[len(prefix) :]
        if kind == "hash":
            out[name] = {f.decode(): v.decode() for f, v in read.items()}
        else:
            out[name] = ("sketch", read) if kind == "string" else read
    return out


def differences(restarted: dict[str, Any], undisturbed: dict[str, Any]) -> list[str]:
    found = [f"{name}: only after the restart" for name in restarted.keys() - undisturbed.keys()]
    found += [f"{name}: lost in the restart" for name in undisturbed.keys() - restarted.keys()]
    for name in restarted.keys() & undisturbed.keys():
        a, b = restarted[name], undisturbed[name]
        if isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys() or not all(same_amount(a[f], b[f]) for f in b):
                found.append(f"{name}: {a} != {b}")
        elif a != b:
            found.append(f"{name}: {a} != {b}")
    return found


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_a_cluster_node_restarted_mid_stream_loses_and_doubles_nothing(
    settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    outputs = shop_outputs(settings.partitions)
    parts = [outputs[: len(outputs) // 3], outputs[len(outputs) // 3 : 2 * len(outputs) // 3]]
    parts.append(outputs[2 * len(outputs) // 3 :])
    await ensure_topics(settings)
    metrics_port = free_port()
    applied = 'result="applied"'
    with LocalRedisCluster(tmp_path / "cluster") as cluster:
        env = {**worker_env, "REDIS_URL": cluster.url}
        counters = WorkerProcess(
            env, tmp_path / "counters.log", ["--metrics-port", str(metrics_port)], command="counters"
        ).start(wait_ready_s=90)
        try:
            await send(settings, parts[0])
            await wait_for(
                lambda: _at_least(metrics_port, applied, len(parts[0])),
                timeout_s=120,
            )
            restarted = settings.model_copy(update={"redis_url": SecretStr(cluster.url)})
            store = redis_counter_store(restarted)
            per_node = Counter(cluster.node_of(store.offsets_key(shard)) for shard in range(store.shards))
            victim = per_node.most_common(1)[0][0]
            cluster.kill_node(victim)
            await send(settings, parts[1])
            await asyncio.to_thread(counters.wait_for, "Redis unavailable", 60)
            await asyncio.sleep(3)  # longer than the node timeout: the cluster says it is down
            assert await get_metric(metrics_port, "conversions_counter_messages_total", applied) < len(
                parts[0]
            ) + len(parts[1])
            cluster.start_node(victim)
            await asyncio.to_thread(cluster.wait_ok)
            await send(settings, parts[2])
            counted = await wait_for(lambda: _counted(metrics_port, len(outputs)), timeout_s=120)
        finally:
            counters.stop()
        assert not counters.error_lines(), counters.tail()
        assert "Redis is back" in counters.log_text() or "applied the waiting batch" in counters.log_text()

        # the same topics, counted undisturbed, in-process, under another app id
        reference = restarted.model_copy(update={"app_id": f"{settings.app_id}ref"})
        config = compile_config(load_config(settings.funnels))
        undisturbed = Counting(reference, config, Metrics(), redis_counter_store(reference))
        stop = asyncio.Event()
        running = asyncio.create_task(undisturbed.run(stop.is_set))
        try:
            await wait_for(lambda: _done(undisturbed, len(outputs)), timeout_s=120)
            assert counted["applied"] == len(outputs), counted  # each once, a retried batch skipped
            for shard in range(store.shards):
                assert differences(await dump(store, shard), await dump(undisturbed.store, shard)) == []
            window = (1_700_000_000_000, int(time.time() * 1000))
            for funnel in config.funnels:
                after = await store.funnel_report(funnel, *window, by=None)
                assert after == await undisturbed.store.funnel_report(funnel, *window, by=None)
            goals = [g.name for g in config.goals]
            after_goals = await store.goals_report(goals, *window)
            assert close(after_goals, await undisturbed.store.goals_report(goals, *window)), after_goals
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(running, 10)
            await undisturbed.close()
            await store.redis.aclose()


def close(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 (value sums: see `same_amount`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return bool(a == b)


async def _at_least(port: int, labels: str, count: int) -> bool:
    return await get_metric(port, "conversions_counter_messages_total", labels) >= count


async def _counted(port: int, total: int) -> dict[str, float] | None:
    applied = await get_metric(port, "conversions_counter_messages_total", 'result="applied"')
    skipped = await get_metric(port, "conversions_counter_messages_total", 'result="skipped"')
    return {"applied": applied, "skipped": skipped} if applied + skipped >= total else None


async def _done(counting: Counting, total: int) -> bool:
    value = counting.metrics.registry.get_sample_value(
        "conversions_counter_messages_total", {"result": "applied"}
    )
    return (value or 0) >= total
