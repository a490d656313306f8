"""The counters in memory: the same apply rules and the same answers as the Redis store, in dicts.

The test double shipped beside the adapter: it satisfies `ports.CounterReader` through the same
`CounterReads` as the Redis store, so the views and the report can be tested with no Redis,
and `tests/counters` checks that both stores answer alike for the same messages. It applies a
batch as the Lua script does (offsets per topic, output ids remembered for one to two
`dedupe_s` periods, the five kinds of increment); unique users are exact sets where Redis keeps
HyperLogLogs (estimates, though exact at the few hundred identities the tests count). Keys never
expire here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from streams.counters.base import CountedMessage, CounterReads


@dataclass
class MemoryCounterStore(CounterReads):
    app_id: str
    shards: int
    bucket_ms: int
    dedupe_s: int = 3_600
    hashes: dict[str, dict[bytes, bytes]] = field(default_factory=lambda: defaultdict(dict))
    uniques: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    lists: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    async def apply(self, shard: int, messages: Iterable[CountedMessage]) -> tuple[int, int]:
        """Apply a batch for one shard; returns (applied, skipped), as `CounterStore.apply`."""
        period = int(time.time()) // self.dedupe_s
        prefix = self.prefix(shard)
        seen_now, seen_before = self.seen[f"{prefix}{period}"], self.seen.get(f"{prefix}{period - 1}", set())
        offsets = self.hashes[self.offsets_key(shard)]
        applied = skipped = 0
        for message in messages:
            topic = message.topic.encode()
            fresh = message.offset > int(offsets.get(topic, b"-1"))
            if fresh:
                offsets[topic] = str(message.offset).encode()
                if message.output_id:
                    fresh = message.output_id not in seen_before and message.output_id not in seen_now
                    if message.output_id not in seen_before:
                        seen_now.add(message.output_id)
            if not fresh:
                skipped += 1
                continue
            for op in message.ops:
                key, name = prefix + op.key, op.field.encode()
                if op.kind == "h":
                    self.hashes[key][name] = str(
                        int(self.hashes[key].get(name, b"0")) + int(op.amount)
                    ).encode()
                elif op.kind == "f":
                    total = Decimal(self.hashes[key].get(name, b"0").decode()) + Decimal(str(op.amount))
                    self.hashes[key][name] = str(total).encode()
                elif op.kind == "p":
                    self.uniques[key].add(op.field)
                elif op.kind == "m":
                    if float(op.amount) > float(self.hashes[key].get(name, b"0")):
                        self.hashes[key][name] = str(op.amount).encode()
                elif op.kind == "l":
                    self.lists[key] = [op.field.encode(), *self.lists[key]][: int(op.amount)]
            applied += 1
        return applied, skipped

    async def _hget_each(self, keys: list[str], field: str) -> list[bytes | None]:
        return [self.hashes[key].get(field.encode()) if key in self.hashes else None for key in keys]

    async def _lrange_each(self, keys: list[str], count: int) -> list[list[bytes]]:
        return [list(self.lists.get(key, [])[:count]) for key in keys]

    async def _hgetall_each(self, keys: list[str]) -> list[Mapping[Any, bytes]]:
        return [dict(self.hashes.get(key, {})) for key in keys]

    async def _hmget_each(self, keys: list[str], fields: Sequence[str]) -> list[list[bytes | None]]:
        names = [f.encode() for f in fields]
        return [[self.hashes[key].get(n) if key in self.hashes else None for n in names] for key in keys]

    async def _pfcount_each(self, groups: list[list[str]]) -> list[int]:
        return [len(set().union(*(self.uniques.get(key, set()) for key in keys))) for keys in groups]
