"""The counters' fixtures: a store on the real Redis, the in-memory store, and `store`, which
runs a test on both (the Redis one marked `integration`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streams.core.config_loader import load_config
from streams.core.matching import compile_config
from streams.counters.memory_store import MemoryCounterStore
from streams.counters.redis_store import CounterStore
from streams.settings import DEFAULT_FUNNELS
from streams.tools.infra import LocalInfra

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


@pytest.fixture
def memory_store() -> MemoryCounterStore:
    return MemoryCounterStore(app_id=f"t{uuid.uuid4().hex[:8]}", shards=2, bucket_ms=MINUTE)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest) -> Store:
    """The same test on both stores: they must answer alike."""
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found
