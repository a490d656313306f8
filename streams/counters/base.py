"""What every counters store shares: the message it counts, and what it answers over its keys
(funnel and goal reports, the latest event time counted, recent macroconversions: the
`ports.CounterReader` protocol).

The reports are computed here once; a store supplies four batched reads of its keys, so the
Redis store (`redis_store`) and the in-memory one (`memory_store`) answer alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core.config.matching import CompiledFunnel
from streams.core.measures.cardinality import BREAKDOWN_CAP, OTHER, fold_by_dimension, fold_fields, top_values
from streams.core.measures.counters import (
    RECENT_MACROS,
    FunnelReport,
    Op,
    breakdown_values,
    bucket_of,
    buckets_between,
    cohort_resolutions,
    counter_name,
    plan_buckets,
    resolutions,
    step_reports,
    sum_hashes,
)
from streams.core.measures.insights import Grid
from streams.errors import QueryTooLarge

MAX_KEYS_PER_QUERY = 50_000


@dataclass(slots=True)
class CountedMessage:
    """One output message to count: where it sits in Kafka, its id, and its increments (a list,
    `core.counters.Increments`, or `tally.Tallied` as the consumer makes them: folded again when
    a batch is refolded). Not frozen: one is made per message, and a frozen dataclass's
    `__init__` costs four times as much."""

    topic: str
    offset: int
    output_id: str
    ops: Iterable[Op]


class CounterReads:
    """The read side of a counters store; subclasses give `app_id`, `shards`, `bucket_ms` and the
    four reads below (each one batch, one round trip for Redis)."""

    app_id: str
    shards: int
    bucket_ms: int

    def prefix(self, shard: int) -> str:
        """Every key of a shard carries the Redis Cluster hash tag `{<app>:<shard>}`."""
        return f"conv:{{{self.app_id}:{shard}}}:"

    def offsets_key(self, shard: int) -> str:
        return self.prefix(shard) + "offsets"

    async def _hget_each(self, keys: list[str], field: str) -> list[bytes | None]:
        """One field of each hash."""
        raise NotImplementedError

    async def _lrange_each(self, keys: list[str], count: int) -> list[list[bytes]]:
        """The first `count` entries of each list."""
        raise NotImplementedError

    async def _hgetall_each(self, keys: list[str]) -> list[Mapping[Any, bytes]]:
        """Each hash whole (empty when missing)."""
        raise NotImplementedError

    async def _pfcount_each(self, groups: list[list[str]]) -> list[int]:
        """For each group of keys, the size of the union of their unique-user sets."""
        raise NotImplementedError

    async def _hmget_each(self, keys: list[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        """The given fields of each hash (None where missing)."""
        raise NotImplementedError

    async def funnel_versions(self, funnel: str) -> dict[str, int]:
        """The versions of `funnel` with counters kept, each with the latest event time counted
        under it (the newest is the current one; the others until their counters expire)."""
        hashes = await self._hgetall_each([self.prefix(shard) + "fv" for shard in range(self.shards)])
        versions: dict[str, int] = {}
        for fields in hashes:
            for raw, value in fields.items():
                name, _, version = (raw.decode() if isinstance(raw, bytes) else str(raw)).rpartition("@")
                if name == funnel:
                    versions[version] = max(versions.get(version, 0), int(float(value)))
        return dict(sorted(versions.items(), key=lambda item: -item[1]))

    async def latest_event_ms(self) -> int | None:
        latest = await self._hget_each(
            [self.prefix(shard) + "meta" for shard in range(self.shards)], "latest"
        )
        values = [int(v) for v in latest if v is not None]
        return max(values) if values else None

    async def recent_macros(self, limit: int = RECENT_MACROS) -> list[dict[str, Any]]:
        """The latest macroconversions over every shard, newest first."""
        per_shard = await self._lrange_each(
            [self.prefix(shard) + "recent" for shard in range(self.shards)], limit
        )
        entries = [orjson.loads(raw) for raws in per_shard for raw in raws]
        entries.sort(key=lambda e: str(e.get("timestamp")), reverse=True)
        return entries[:limit]

    async def _sum(self, keys: list[str]) -> dict[str, float]:
        return sum_hashes(await self._hgetall_each(keys))

    async def _count_unique(self, keys_by_label: dict[Any, list[list[str]]]) -> dict[Any, int]:
        """Per label, the union of each shard's HyperLogLogs (one slot per shard, so one PFCOUNT),
        summed over shards: an identity is only ever counted in one shard."""
        labels, groups = [], []
        for label, per_shard in keys_by_label.items():
            for keys in per_shard:
                if keys:
                    groups.append(keys)
                    labels.append(label)
        totals: dict[Any, int] = dict.fromkeys(keys_by_label, 0)
        for label, value in zip(labels, await self._pfcount_each(groups), strict=True):
            totals[label] += value
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
        self,
        funnel: CompiledFunnel,
        start_ms: int,
        end_ms: int,
        by: str | None = None,
        version: str | None = None,
        cap: int = BREAKDOWN_CAP,
    ) -> FunnelReport:
        """The funnel's counters of its current version, or of an earlier `version` (its steps
        then named by the current definition when it has as many, else `#k`)."""
        name = counter_name(funnel, version)
        fields = await self._sum(self._keys(f"f:{name}:{{b}}", start_ms, end_ms))
        names = [s.name for s in funnel.steps]
        if version is not None and version != funnel.version:
            indexes = [int(key.split(":")[1].split("|")[0]) for key in fields if key.count(":") >= 1]
            names = [f"#{k}" for k in range(max(indexes, default=-1) + 1)]
        uniques = await self._count_unique(
            {k: self._keys_by_shard(f"u:{name}:{k}:{{b}}", start_ms, end_ms) for k in range(len(names))}
        )
        report = FunnelReport(funnel.name, start_ms, end_ms, step_reports(names, fields, uniques), by=by)
        report.version = version or funnel.version
        report.versions = await self.funnel_versions(funnel.name)
        if by is not None:
            values = breakdown_values(fields, by)
            kept, folded = top_values({v: fields.get(f"e:0|{by}={v}", 0.0) for v in values}, cap)
            for value in kept:
                report.breakdown[value] = step_reports(names, fields, {}, suffix=f"|{by}={value}")
            if folded:
                other = fold_fields(fields, by, set(folded))
                report.breakdown[OTHER] = step_reports(names, other, {}, suffix=f"|{by}={OTHER}")
        return report

    async def funnel_buckets(
        self, funnel: CompiledFunnel, start_ms: int, end_ms: int
    ) -> dict[int, dict[str, float]]:
        """Per finest bucket starting in [start, end) that holds counts of the funnel, its fields
        summed over shards (`e:<k>`, `e:<k>|<breakdown>=<value>`, ...): for replays that need the
        order of the counts and not only their sum (an experiment's sequential test). The hour
        rollups say which hours hold anything, so only their buckets are read, in reads of at
        most MAX_KEYS_PER_QUERY keys (a report from the command line, not a web query)."""
        levels = resolutions(self.bucket_ms)
        coarse = levels[1] if len(levels) > 1 else None
        buckets = buckets_between(start_ms, end_ms, self.bucket_ms)
        if coarse is not None:
            hours = sorted({bucket_of(b, coarse) for b in buckets})
            held = await self._read_buckets(counter_name(funnel), coarse, hours)
            buckets = [b for b in buckets if bucket_of(b, coarse) in held]
        return await self._read_buckets(counter_name(funnel), self.bucket_ms, buckets)

    async def _read_buckets(self, funnel: str, size: int, buckets: list[int]) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        per_read = max(1, MAX_KEYS_PER_QUERY // self.shards)
        for i in range(0, len(buckets), per_read):
            chunk = buckets[i : i + per_read]
            keys = [
                self.prefix(shard) + f"f:{funnel}:{size // 1000}:{b}"
                for b in chunk
                for shard in range(self.shards)
            ]
            hashes = await self._hgetall_each(keys)
            for j, b in enumerate(chunk):
                fields = sum_hashes(hashes[j * self.shards : (j + 1) * self.shards])
                if fields:
                    out[b] = fields
        return out

    async def read_grids(
        self, family: str, fields: Sequence[str], grids: Sequence[Grid]
    ) -> list[list[list[float]]]:
        """Per grid (first bucket start, buckets, bucket size) and bucket, the sums of `fields` over
        the `family` hashes (a key with `{b}`, e.g. `f:checkout:{b}`) and the shards, in one batch:
        each bucket is read with the coarsest rollups that fit inside it (`plan_buckets`)."""
        plans = [
            [plan_buckets(first + i * size, first + (i + 1) * size, self.bucket_ms) for i in range(count)]
            for first, count, size in grids
        ]
        distinct = sorted({b for grid in plans for plan in grid for b in plan})
        if len(distinct) * self.shards > MAX_KEYS_PER_QUERY:
            raise QueryTooLarge(f"that query needs {len(distinct) * self.shards} keys; narrow it")
        keys = [self.prefix(shard) + family.format(b=b) for b in distinct for shard in range(self.shards)]
        values = await self._hmget_each(keys, fields) if keys else []
        width = len(fields)
        sums: dict[str, list[float]] = {}
        for i, b in enumerate(distinct):
            rows = values[i * self.shards : (i + 1) * self.shards]
            sums[b] = [sum(float(row[j] or 0) for row in rows) for j in range(width)]
        return [[[sum(sums[b][j] for b in plan) for j in range(width)] for plan in grid] for grid in plans]

    async def window_sums(self, family: str, start_ms: int, end_ms: int) -> dict[str, float]:
        """Every field of the `family` hashes (a key with `{b}`) summed over [start, end)."""
        return await self._sum(self._keys(family, start_ms, end_ms))

    async def cohorts(
        self, funnel: str, start_ms: int, end_ms: int, family: str = "a"
    ) -> tuple[int, dict[int, dict[str, float]]]:
        """The attempts of `funnel` that opened in [start, end) (`family` a; r: that reached
        each step then), per cohort bucket (the finest up to 6 hours, else the hour): (bucket
        size, start of bucket -> summed fields)."""
        levels = cohort_resolutions(self.bucket_ms)
        size = levels[0] if (end_ms - start_ms) <= 6 * 3_600_000 or len(levels) == 1 else levels[1]
        buckets = buckets_between(start_ms, end_ms, size)
        if len(buckets) * self.shards > MAX_KEYS_PER_QUERY:
            raise QueryTooLarge(f"that window needs {len(buckets) * self.shards} keys; narrow it")
        keys = [
            self.prefix(shard) + f"{family}:{funnel}:{size // 1000}:{b}"
            for b in buckets
            for shard in range(self.shards)
        ]
        hashes = await self._hgetall_each(keys) if keys else []
        out: dict[int, dict[str, float]] = {}
        for i, b in enumerate(buckets):
            fields = sum_hashes(hashes[i * self.shards : (i + 1) * self.shards])
            if fields:
                out[b] = fields
        return size, out

    async def goals_report(
        self, goals: list[str], start_ms: int, end_ms: int, cap: int = BREAKDOWN_CAP
    ) -> dict[str, Any]:
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
                "by": fold_by_dimension(
                    {
                        key.split("|", 1)[1]: int(v)
                        for key, v in fields.items()
                        if key.startswith(f"n:{goal}|")
                    },
                    cap,
                ),
            }
        report["secondary"] = {
            key[2:]: int(v) for key, v in fields.items() if key.startswith("m:") and "|" not in key
        }
        report["sessions"] = {
            "count": int(sessions.get("n", 0)),
            "page_views": int(sessions.get("pv", 0)),
            "duration_ms": int(sessions.get("dur", 0)),
            "by": fold_by_dimension(
                {key.split("|", 1)[1]: int(v) for key, v in sessions.items() if key.startswith("n|")}, cap
            ),
        }
        return report
