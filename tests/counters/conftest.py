"""The counters' fixtures: a store on the real Redis, one on a real three-master Redis Cluster,
the in-memory store, and `store`, which runs a test on all three (the Redis ones marked
`integration`).

The cluster is started once per session (`tools.redis_cluster`, about 2 s), or is the one
`REDIS_CLUSTER_URL` names (`redis+cluster://host:port,...`). Its store's app id is chosen so that
shards 0 and 1 live on different nodes: every read then spans nodes."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.counters.memory_store import MemoryCounterStore
from streams.counters.redis_store import CounterStore, redis_client
from streams.settings import DEFAULT_FUNNELS
from streams.tools.infra import LocalInfra
from streams.tools.redis_cluster import LocalRedisCluster

CONFIG = compile_config(load_config(DEFAULT_FUNNELS))
CHECKOUT = CONFIG.funnels_by_name["checkout"]
MINUTE = 60_000
BASE = 1_710_325_200_000  # 2024-03-13T10:20:00Z, a bucket edge

Store = CounterStore | MemoryCounterStore


@pytest.fixture
async def redis_store(infra: LocalInfra) -> AsyncIterator[CounterStore]:
    client = aioredis.from_url(infra.redis_url)
    yield CounterStore(client, app_id=f"t{uuid.uuid4().hex[:8]}", shards=2, bucket_ms=MINUTE, ttl_s=3_600)
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster's `redis+cluster://` URL: REDIS_CLUSTER_URL, or three local masters."""
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


async def spread_app_id(url: str, shards: int = 2) -> str:
    """An app id whose shards are served by as many different nodes of the cluster at `url` as
    can be (up to the number of nodes)."""
    probe = redis_client(url)
    assert isinstance(probe, RedisCluster)
    try:
        await probe.initialize()
        want = min(shards, len(probe.get_primaries()))
        while True:
            app_id = f"t{uuid.uuid4().hex[:8]}"
            keys = [f"conv:{{{app_id}:{shard}}}:offsets" for shard in range(shards)]
            nodes = {getattr(probe.get_node_from_key(key), "name", None) for key in keys}
            if len(nodes - {None}) == want:
                return app_id
    finally:
        await probe.aclose()


@pytest.fixture
def redis_url(infra: LocalInfra) -> str:
    return infra.redis_url


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[CounterStore]:
    client = redis_client(redis_cluster_url)
    app_id = await spread_app_id(redis_cluster_url)
    yield CounterStore(client, app_id=app_id, shards=2, bucket_ms=MINUTE, ttl_s=3_600)
    await client.aclose()


@pytest.fixture
def memory_store() -> MemoryCounterStore:
    return MemoryCounterStore(app_id=f"t{uuid.uuid4().hex[:8]}", shards=2, bucket_ms=MINUTE)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    """The same test on every store: they must answer alike."""
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("cluster", marks=pytest.mark.integration),
    ]
)
def served_store(request: pytest.FixtureRequest) -> tuple[CounterStore, str]:
    """A Redis store and the `REDIS_URL` that reaches it: one server, then the cluster."""
    found: CounterStore = request.getfixturevalue(f"{request.param}_store")
    url: str = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    return found, url
