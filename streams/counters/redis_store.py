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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.core.counters import (
    RECENT_MACROS,
    FunnelReport,
    Op,
    breakdown_values,
    plan_buckets,
    step_reports,
    sum_hashes,
)
from streams.core.matching import CompiledFunnel
from streams.errors import QueryTooLarge

log = logging.getLogger(__name__)

MAX_KEYS_PER_QUERY = 50_000


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


@dataclass(frozen=True, slots=True)
class CountedMessage:
    """One output message to count: where it sits in Kafka, its id, and its increments."""

    topic: str
    offset: int
    output_id: str
    ops: Sequence[Op]


@dataclass(frozen=True)
class CounterStore:
    redis: aioredis.Redis
    app_id: str
    shards: int
    bucket_ms: int
    ttl_s: int
    dedupe_s: int = 3_600

    def prefix(self, shard: int) -> str:
        return f"conv:{{{self.app_id}:{shard}}}:"

    def offsets_key(self, shard: int) -> str:
        return self.prefix(shard) + "offsets"

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

    async def latest_event_ms(self) -> int | None:
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.hget(self.prefix(shard) + "meta", "latest")
        values = [int(v) for v in await pipe.execute() if v is not None]
        return max(values) if values else None

    async def recent_macros(self, limit: int = RECENT_MACROS) -> list[dict[str, Any]]:
        """The latest macroconversions over every shard, newest first."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.lrange(self.prefix(shard) + "recent", 0, limit - 1)
        entries = [orjson.loads(raw) for per_shard in await pipe.execute() for raw in per_shard]
        entries.sort(key=lambda e: str(e.get("timestamp")), reverse=True)
        return entries[:limit]

    async def _sum(self, keys: list[str]) -> dict[str, float]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return sum_hashes(await pipe.execute())

    async def _count_unique(self, keys_by_label: dict[Any, list[list[str]]]) -> dict[Any, int]:
        """Per label, the union of each shard's HyperLogLogs (one slot per shard, so one PFCOUNT),
        summed over shards: an identity is only ever counted in one shard."""
        pipe = self.redis.pipeline(transaction=False)
        labels = []
        for label, per_shard in keys_by_label.items():
            for keys in per_shard:
                if keys:
                    pipe.pfcount(*keys)
                    labels.append(label)
        totals: dict[Any, int] = dict.fromkeys(keys_by_label, 0)
        for label, value in zip(labels, await pipe.execute(), strict=True):
            totals[label] += int(value)
        return totals

    def check_window(self, start_ms: int, end_ms: int) -> None:
        """Raise QueryTooLarge for a window that would read too many keys."""
        self._buckets(start_ms, end_ms)

    def _buckets(self, start_ms: int, end_ms: int) -> list[str]:
        buckets = plan_buckets(start_ms, end_ms, self.bucket_ms)
        if len(buckets) * self.shards > MAX_KEYS_PER_QUERY:
            raise QueryTooLarge(f"that window needs {len(buckets) * self.shards} keys; narrow it")
        return buckets

    def _keys(self, name: str, start_ms: int, end_ms: int) -> list[str]:
        return [
            self.prefix(shard) + name.format(b=b)
            for b in self._buckets(start_ms, end_ms)
            for shard in range(self.shards)
        ]

    def _keys_by_shard(self, name: str, start_ms: int, end_ms: int) -> list[list[str]]:
        buckets = self._buckets(start_ms, end_ms)
        return [[self.prefix(shard) + name.format(b=b) for b in buckets] for shard in range(self.shards)]

    async def funnel_report(
        self, funnel: CompiledFunnel, start_ms: int, end_ms: int, by: str | None = None
    ) -> FunnelReport:
        fields = await self._sum(self._keys(f"f:{funnel.name}:{{b}}", start_ms, end_ms))
        uniques = await self._count_unique(
            {
                k: self._keys_by_shard(f"u:{funnel.name}:{k}:{{b}}", start_ms, end_ms)
                for k in range(len(funnel.steps))
            }
        )
        names = [s.name for s in funnel.steps]
        report = FunnelReport(funnel.name, start_ms, end_ms, step_reports(names, fields, uniques), by=by)
        if by is not None:
            for value in breakdown_values(fields, by):
                report.breakdown[value] = step_reports(names, fields, {}, suffix=f"|{by}={value}")
        return report

    async def goals_report(self, goals: list[str], start_ms: int, end_ms: int) -> dict[str, Any]:
        fields = await self._sum(self._keys("g:{b}", start_ms, end_ms))
        uniques = await self._count_unique(
            {g: self._keys_by_shard(f"ug:{g}:{{b}}", start_ms, end_ms) for g in goals}
        )
        sessions = await self._sum(self._keys("s:{b}", start_ms, end_ms))
        macro_total = sum(int(fields.get(f"n:{g}", 0)) for g in goals)
        micro_total = int(fields.get("mi", 0))
        report: dict[str, Any] = {
            "start_ms": start_ms,
            "end_ms": end_ms,
            "goals": {},
            "microconversions": micro_total,
            "micro_macro_ratio": micro_total / macro_total if macro_total else None,
        }
        for goal in goals:
            count = int(fields.get(f"n:{goal}", 0))
            report["goals"][goal] = {
                "count": count,
                "unique_users": uniques[goal],
                "value": fields.get(f"v:{goal}", 0.0),
                "avg_decision_time_ms": fields.get(f"dt:{goal}", 0) / count if count else None,
                "decision_time_histogram_min": {
                    key.rsplit(":", 1)[1]: int(v)
                    for key, v in fields.items()
                    if key.startswith(f"dth:{goal}:")
                },
                "by": {
                    dim_value: int(v)
                    for key, v in fields.items()
                    if key.startswith(f"n:{goal}|")
                    for dim_value in [key.split("|", 1)[1]]
                },
            }
        report["secondary"] = {
            key[2:]: int(v) for key, v in fields.items() if key.startswith("m:") and "|" not in key
        }
        report["sessions"] = {
            "count": int(sessions.get("n", 0)),
            "page_views": int(sessions.get("pv", 0)),
            "duration_ms": int(sessions.get("dur", 0)),
            "by": {key.split("|", 1)[1]: int(v) for key, v in sessions.items() if key.startswith("n|")},
        }
        return report


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
