"""The counters in Redis: one Lua call per batch and shard applies the increments and records the
applied offsets, so a redelivered message (a crash before the offset commit) is skipped, and an
output id seen recently is skipped too (a repeated output from upstream redelivery).

Every key of a shard carries the hash tag `{<app>:<shard>}`: a shard's keys share one Redis
Cluster slot, so the script is atomic there too. The shard is the output topic's partition;
output topics are keyed by identity, so one identity is always counted in one shard, and
unique-user counts add up across shards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.counters.base import CountedMessage, CounterReads
from streams.settings import Settings

log = logging.getLogger(__name__)

# The batch travels as one JSON argument (decoded by Redis's cjson), not as thousands of
# arguments: redis-py's argument packing was a sixth of the worker's time. Amounts stay strings
# so that HINCRBYFLOAT gets exactly the digits it was given.
APPLY_SCRIPT = """
local ttl, seen_ttl, prefix = ARGV[1], ARGV[2], ARGV[3]
local seen_now, seen_before = prefix .. ARGV[4], prefix .. ARGV[5]
local messages = cjson.decode(ARGV[6])
local applied, skipped = 0, 0
local touched = {}
for _, message in ipairs(messages) do
  local topic, offset, id, ops = message[1], message[2], message[3], message[4]
  local last = tonumber(redis.call('HGET', KEYS[1], topic) or '-1')
  local fresh = offset > last
  if fresh then
    redis.call('HSET', KEYS[1], topic, string.format('%d', offset))
    if id ~= '' then
      fresh = redis.call('SISMEMBER', seen_before, id) == 0 and redis.call('SADD', seen_now, id) == 1
      touched[seen_now] = seen_ttl
    end
  end
  if fresh then
    for _, op in ipairs(ops) do
      local kind, key, field, amount = op[1], prefix .. op[2], op[3], op[4]
      if kind == 'h' then redis.call('HINCRBY', key, field, amount)
      elseif kind == 'f' then redis.call('HINCRBYFLOAT', key, field, amount)
      elseif kind == 'p' then redis.call('PFADD', key, field)
      elseif kind == 'm' then
        if tonumber(amount) > tonumber(redis.call('HGET', key, field) or '0') then
          redis.call('HSET', key, field, amount)
        end
      elseif kind == 'l' then
        redis.call('LPUSH', key, field)
        redis.call('LTRIM', key, 0, tonumber(amount) - 1)
      end
      touched[key] = ttl
    end
    applied = applied + 1
  else
    skipped = skipped + 1
  end
end
for key, key_ttl in pairs(touched) do redis.call('EXPIRE', key, key_ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
return {applied, skipped}
"""


@dataclass(frozen=True)
class CounterStore(CounterReads):
    """The counters in Redis: the Lua apply, and the four reads `CounterReads` needs."""

    redis: aioredis.Redis
    app_id: str
    shards: int
    bucket_ms: int
    ttl_s: int
    dedupe_s: int = 3_600

    async def apply(self, shard: int, messages: Iterable[CountedMessage]) -> tuple[int, int]:
        """Apply a batch for one shard in one round trip; returns (applied, skipped).

        Output ids are remembered for one to two `dedupe_s` periods (wall clock): long enough
        for an upstream redelivery, short enough to keep memory bounded.
        """
        period = int(time.time()) // self.dedupe_s
        batch = [
            [m.topic, m.offset, m.output_id, [[o.kind, o.key, o.field, str(o.amount)] for o in m.ops]]
            for m in messages
        ]
        if not batch:
            return (0, 0)
        result = await self.redis.eval(
            APPLY_SCRIPT,
            1,
            self.offsets_key(shard),
            self.ttl_s,
            2 * self.dedupe_s,
            self.prefix(shard),
            f"seen:{period}",
            f"seen:{period - 1}",
            orjson.dumps(batch),
        )
        return int(result[0]), int(result[1])

    async def _hget_each(self, keys: list[str], field: str) -> list[bytes | None]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, field)
        return list(await pipe.execute())

    async def _lrange_each(self, keys: list[str], count: int) -> list[list[bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, count - 1)
        return list(await pipe.execute())

    async def _hgetall_each(self, keys: list[str]) -> list[Mapping[Any, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return list(await pipe.execute())

    async def _hmget_each(self, keys: list[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, list(fields))
        return list(await pipe.execute())

    async def _pfcount_each(self, groups: list[list[str]]) -> list[int]:
        """One PFCOUNT per group: a group is one shard's keys, in one Cluster slot."""
        pipe = self.redis.pipeline(transaction=False)
        for keys in groups:
            pipe.pfcount(*keys)
        return [int(value) for value in await pipe.execute()]


def counter_store(settings: Settings, redis: aioredis.Redis) -> CounterStore:
    return CounterStore(
        redis=redis,
        app_id=settings.app_id,
        shards=settings.partitions,
        bucket_ms=settings.counter_bucket_s * 1_000,
        ttl_s=settings.counter_ttl_s,
        dedupe_s=settings.counter_dedupe_s,
    )


def redis_counter_store(settings: Settings) -> CounterStore:
    """The worker's store: REDIS_URL, with a socket timeout so an outage is noticed."""
    dsn = settings.redis_dsn
    assert dsn, "REDIS_URL must be set for the counters"
    return counter_store(settings, aioredis.from_url(dsn, socket_timeout=5))


async def apply_with_retry(
    store: CounterStore, shard: int, messages: list[CountedMessage], stop: asyncio.Event | None = None
) -> tuple[int, int]:
    """Wait out a Redis outage: retry with backoff and a log line, never drop the batch."""
    delay = 0.2
    started = time.monotonic()
    while True:
        try:
            result = await store.apply(shard, messages)
            if time.monotonic() - started > 1.0:
                log.warning(
                    "Redis is back after %.1f s; applied the waiting batch of %d",
                    time.monotonic() - started,
                    len(messages),
                )
            return result
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning(
                "Redis unavailable (%s); %d counter updates for shard %d wait, retrying in %.1f s; "
                "offsets stay uncommitted meanwhile",
                exc.__class__.__name__,
                len(messages),
                shard,
                delay,
            )
            if stop is not None and stop.is_set():
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
