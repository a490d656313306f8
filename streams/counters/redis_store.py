"""The counters in Redis: one Lua call per batch and shard applies the batch's increments, folded
per key and field (`batch`), and records the applied offsets, so a redelivered message (a crash
before the offset commit) is skipped, and an output id seen recently is skipped too (a repeated
output from upstream redelivery).

Every key of a shard carries the hash tag `{<app>:<shard>}`: a shard's keys share one Redis
Cluster slot, so the script is atomic there too, and each read of several keys (a PFCOUNT over a
shard's sketches) stays in one slot. The shard is the output topic's partition; output topics
are keyed by identity, so one identity is always counted in one shard, and unique-user counts
add up across shards. `REDIS_URL=redis+cluster://host:port[,host:port...]` selects a Redis
Cluster (`redis_client`).
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
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.counters.base import CountedMessage, CounterReads
from streams.counters.batch import fold
from streams.settings import Settings

log = logging.getLogger(__name__)

REDIS_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)
"""What a Redis or Redis Cluster outage raises (a node down, a slot without a master, a slot
moving): waited out, never a reason to drop a batch."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""`REDIS_URL` schemes that mean a Redis Cluster, and the plain scheme of each node."""

RedisClient = aioredis.Redis | RedisCluster


def redis_client(url: str, **options: Any) -> RedisClient:
    """A client for `url`: `redis://` or `rediss://` one server, `redis+cluster://` or
    `rediss+cluster://` a Redis Cluster, given by any of its nodes
    (`redis+cluster://[user:password@]host:port[,host:port...]`; the client finds the rest)."""
    scheme, _, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None:
        return aioredis.from_url(url, **options)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    credentials, at, hosts = rest[:cut].rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for address in others:
        host, _, port = address.rpartition(":")
        nodes.append(ClusterNode(host, int(port)))
    return RedisCluster.from_url(
        f"{plain}://{credentials}{at}{first}{rest[cut:]}", startup_nodes=nodes, **options
    )


# The batch travels as one JSON argument (decoded by Redis's cjson), not as thousands of
# arguments: redis-py's argument packing was a sixth of the worker's time. It is
# [messages, expected stale, increments]: each message as [topic, offset, output id]; the
# positions (from 0) of the messages the caller expects to be stale, whose increments it left
# out; and the increments of the others folded per key and field (`batch.BatchIncrements.wire`),
# amounts as strings so that Redis gets exactly those digits.
#
# First, read only, which messages are stale: an offset at or below the topic's applied offset,
# or an output id seen in this period or the one before, or earlier in the batch. If that is not
# the caller's expectation (a redelivery it could not know of), nothing is written and the reply
# is {-1, stale positions...}: the caller folds the fresh ones again and calls once more. Else
# the applied offsets move on, the fresh ids are remembered, the increments are applied, and the
# reply is {applied, skipped}.
APPLY_SCRIPT = """
local ttl, seen_ttl, prefix = ARGV[1], ARGV[2], ARGV[3]
local seen_now, seen_before = prefix .. ARGV[4], prefix .. ARGV[5]
local batch = cjson.decode(ARGV[6])
local messages, expected, ops = batch[1], batch[2], batch[3]
local CHUNK = 1000

local function chunked(command, key, values)
  for i = 1, #values, CHUNK do
    redis.call(command, key, unpack(values, i, math.min(i + CHUNK - 1, #values)))
  end
end

local function members_of(key, ids)
  local flags = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('SMISMEMBER', key, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do flags[#flags + 1] = part[j] end
  end
  return flags
end

local last, moved, claimed, stale, pending, pending_ids = {}, {}, {}, {}, {}, {}
for i, message in ipairs(messages) do
  local topic, offset, id = message[1], message[2], message[3]
  local before = last[topic]
  if before == nil then
    before = tonumber(redis.call('HGET', KEYS[1], topic) or '-1')
    last[topic] = before
  end
  if offset > before then
    last[topic] = offset
    moved[topic] = true
    if id ~= '' then
      if claimed[id] then
        stale[i] = true
      else
        claimed[id] = true
        pending[#pending + 1] = i
        pending_ids[#pending_ids + 1] = id
      end
    end
  else
    stale[i] = true
  end
end
if #pending_ids > 0 then
  local old, now = members_of(seen_before, pending_ids), members_of(seen_now, pending_ids)
  for j, i in ipairs(pending) do
    if old[j] == 1 or now[j] == 1 then stale[i] = true end
  end
end

local found = {}
for i = 1, #messages do
  if stale[i] then found[#found + 1] = i - 1 end
end
local same = #found == #expected
for j = 1, #found do
  if not same then break end
  same = found[j] == expected[j]
end
if not same then
  table.insert(found, 1, -1)
  return found
end

for topic in pairs(moved) do
  redis.call('HSET', KEYS[1], topic, string.format('%d', last[topic]))
end
local fresh_ids = {}
for _, i in ipairs(pending) do
  if not stale[i] then fresh_ids[#fresh_ids + 1] = messages[i][3] end
end
chunked('SADD', seen_now, fresh_ids)
if #pending > 0 then redis.call('EXPIRE', seen_now, seen_ttl) end

local touched = {}
for key, fields in pairs(ops.h) do
  local k = prefix .. key
  for field, amount in pairs(fields) do redis.call('HINCRBY', k, field, amount) end
  touched[k] = true
end
for key, fields in pairs(ops.f) do
  local k = prefix .. key
  for field, amount in pairs(fields) do redis.call('HINCRBYFLOAT', k, field, amount) end
  touched[k] = true
end
for key, fields in pairs(ops.m) do
  local k = prefix .. key
  for field, amount in pairs(fields) do
    if tonumber(amount) > tonumber(redis.call('HGET', k, field) or '0') then
      redis.call('HSET', k, field, amount)
    end
  end
  touched[k] = true
end
for key, members in pairs(ops.p) do
  local k = prefix .. key
  chunked('PFADD', k, members)
  touched[k] = true
end
for key, runs in pairs(ops.l) do
  local k = prefix .. key
  for _, run in ipairs(runs) do
    chunked('LPUSH', k, run[2])
    redis.call('LTRIM', k, 0, run[1] - 1)
  end
  touched[k] = true
end
for k in pairs(touched) do redis.call('EXPIRE', k, ttl) end
redis.call('EXPIRE', KEYS[1], ttl)
return {#messages - #found, #found}
"""
MAX_ROUNDS = 8
"""Calls for one batch before giving up: a second only when messages turned out stale that the
caller did not expect (a redelivery), more only while another consumer writes the same shard."""


@dataclass(frozen=True)
class CounterStore(CounterReads):
    """The counters in Redis: the Lua apply, and the four reads `CounterReads` needs."""

    redis: RedisClient
    app_id: str
    shards: int
    bucket_ms: int
    ttl_s: int
    dedupe_s: int = 3_600

    async def apply(self, shard: int, messages: Iterable[CountedMessage]) -> tuple[int, int]:
        """Apply a batch for one shard in one round trip (two after a redelivery); returns
        (applied, skipped).

        The increments of the batch's messages are folded per key and field first
        (`batch.BatchIncrements`); a redelivered message adds nothing. Output ids are remembered
        for one to two `dedupe_s` periods (wall clock): long enough for an upstream redelivery,
        short enough to keep memory bounded.
        """
        batch = list(messages)
        if not batch:
            return (0, 0)
        period = int(time.time()) // self.dedupe_s
        heads = [[m.topic, m.offset, m.output_id] for m in batch]
        stale: list[int] = []
        folded = fold(m.ops for m in batch)
        for _ in range(MAX_ROUNDS):
            result = await self.redis.eval(
                APPLY_SCRIPT,
                1,
                self.offsets_key(shard),
                str(self.ttl_s),
                str(2 * self.dedupe_s),
                self.prefix(shard),
                f"seen:{period}",
                f"seen:{period - 1}",
                orjson.dumps([heads, stale, folded.wire()]),
            )
            if int(result[0]) >= 0:
                return int(result[0]), int(result[1])
            stale = [int(i) for i in result[1:]]
            skip = set(stale)
            folded = fold(m.ops for i, m in enumerate(batch) if i not in skip)
        raise RuntimeError(f"shard {shard}: the batch's stale messages kept changing over {MAX_ROUNDS} calls")

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
            # by name: redis-py's cluster pipeline refuses `pfcount` with several keys even in one slot
            pipe.execute_command("PFCOUNT", *keys)
        return [int(value) for value in await pipe.execute()]


def counter_store(settings: Settings, redis: RedisClient) -> CounterStore:
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
    return counter_store(settings, redis_client(dsn, socket_timeout=5))


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
        except REDIS_UNAVAILABLE as exc:
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
