"""The generations registry: one Redis hash per base application id, read by every worker, the
web server, the alerts and `conversions deploy` / `rollback`.

Redis rather than a compacted topic: the web server and the counters already depend on Redis; a
reader gets the current generation with one HGET (the web caches it for a second) instead of
replaying a topic to its end; and the cut-over is one Lua script on one key, a compare-and-set
that is atomic for every reader (Tansu, the local broker, does not compact topics either).

Fields of `conv:generations:{<app_id>}`: `current` (a number), `previous` (the generation a
rollback returns to), `numbered` (the highest number ever given: a deleted generation's number is
never given again, its consumer groups may still hold committed offsets), `g:<N>` (a generation's
record, JSON) and `progress:<N>` (its reprocessing progress, JSON, written by `deploy`).
Generation 0 is the plain worker's: the base application id, the live topics, the configuration
file it was started with; `deploy` records it the first time it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import orjson

from streams.errors import ConversionsError

State = Literal["reprocessing", "live", "retired"]


def registry_key(app_id: str) -> str:
    return f"conv:generations:{{{app_id}}}"


def generation_app_id(base: str, number: int) -> str:
    """Generation 0 is the base application id itself; generation N is `<base>-g<N>`."""
    return base if number == 0 else f"{base}-g{number}"


@dataclass(frozen=True)
class Generation:
    number: int
    app_id: str
    config: str
    """The configuration's YAML text, as deployed."""
    fingerprint: str
    state: State
    created_ms: int
    live_ms: int | None = None
    retired_ms: int | None = None
    pending: str | None = None
    """What must happen before its workers may start (`deploy --history`: the history's hand-off,
    "history"); None once they may."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Generation:
        return cls(**orjson.loads(raw))

    def summary(self) -> dict[str, Any]:
        """The record without the configuration text (what the web and the terminal show)."""
        data = asdict(self)
        data.pop("config")
        return data


LIVE = "live:"
REMEMBERED = "remembered"
NUMBERED = "numbered"


@dataclass(frozen=True)
class RelayCheckpoint:
    """Where a generation's relay had got (`generations.relay`); empty before its first batch."""

    own: dict[str, int]
    """`topic/partition` of the generation's own topics -> the next offset to relay."""
    live: dict[str, int]
    """`topic/partition` of a live topic -> the offset after the last record relayed to it."""
    remembered: list[Any] | None
    """The previous generation's last words (ids) not met yet; None before the first checkpoint."""


class RegistryError(ConversionsError, RuntimeError):
    """A registry operation that cannot be done as asked (the message says why)."""


# KEYS[1] the registry; ARGV: expected current, new current, the new current's record (state
# live), the old current's record (state retired), the field of the new current. The flip is one
# HSET after one HGET: every reader sees the old generation or the new one, never neither.
FLIP_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'current')
if current ~= ARGV[1] then return {0, current or ''} end
if redis.call('HEXISTS', KEYS[1], 'g:' .. ARGV[2]) == 0 then return {-1, ''} end
redis.call('HSET', KEYS[1], 'current', ARGV[2], 'previous', ARGV[1],
           'g:' .. ARGV[2], ARGV[3], 'g:' .. ARGV[1], ARGV[4])
return {1, ARGV[2]}
"""


# KEYS[1] the registry; ARGV: the field, the record read, the record to write in its place.
SWAP_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    """The registry of one base application id over a redis-py asyncio client (or cluster)."""

    def __init__(self, redis: Any, app_id: str) -> None:
        self.redis = redis
        self.app_id = app_id
        self.key = registry_key(app_id)

    async def current_number(self) -> int:
        """The current generation; 0 when nothing was ever deployed."""
        raw = await self.redis.hget(self.key, "current")
        return int(raw) if raw is not None else 0

    async def get(self, number: int) -> Generation | None:
        raw = await self.redis.hget(self.key, f"g:{number}")
        return Generation.from_json(raw) if raw is not None else None

    async def all(self) -> list[Generation]:
        fields = await self.redis.hgetall(self.key)
        found = [Generation.from_json(v) for k, v in fields.items() if _text(k).startswith("g:")]
        return sorted(found, key=lambda g: g.number)

    async def previous_number(self) -> int | None:
        raw = await self.redis.hget(self.key, "previous")
        return int(raw) if raw is not None else None

    async def ensure_first(self, config_text: str, fingerprint: str) -> Generation:
        """Record generation 0 (the plain worker's) if nothing is recorded yet; the current one."""
        first = Generation(0, self.app_id, config_text, fingerprint, "live", _now_ms(), _now_ms())
        await self.redis.hsetnx(self.key, "g:0", first.to_json())
        await self.redis.hsetnx(self.key, "current", "0")
        current = await self.get(await self.current_number())
        assert current is not None
        return current

    async def check_free(self) -> list[Generation]:
        """The generations recorded; RegistryError while one reprocesses (`create` refuses then)."""
        existing = await self.all()
        busy = [g.number for g in existing if g.state == "reprocessing"]
        if busy:
            raise RegistryError(
                f"generation {busy[0]} is still reprocessing: wait for its cut-over, or "
                f"`conversions generations --abandon {busy[0]}`"
            )
        return existing

    async def create(self, config_text: str, fingerprint: str, pending: str | None = None) -> Generation:
        """Record the next generation, reprocessing; refused while another one reprocesses.
        `pending`: its workers are refused until `ready` (`Generation.pending`). Numbers are never
        given twice (`numbered`; a registry recorded before it counts from its highest)."""
        existing = await self.check_free()
        await self.redis.hsetnx(self.key, NUMBERED, max((g.number for g in existing), default=0))
        number = int(await self.redis.hincrby(self.key, NUMBERED, 1))
        generation = Generation(
            number,
            generation_app_id(self.app_id, number),
            config_text,
            fingerprint,
            "reprocessing",
            _now_ms(),
            pending=pending,
        )
        if not await self.redis.hsetnx(self.key, f"g:{number}", generation.to_json()):
            raise RegistryError(f"generation {number} was recorded meanwhile by another deploy")
        return generation

    async def ready(self, number: int) -> Generation:
        """A generation whose workers may start now (what was `pending` is done)."""
        return await self._change(number, lambda g: replace(g, pending=None))

    async def abandon(self, number: int) -> Generation:
        """A reprocessing generation that will never go live: retired, its workers stop."""
        return await self._change(number, lambda g: replace(g, state="retired", retired_ms=_now_ms()))

    async def _change(self, number: int, change: Callable[[Generation], Generation]) -> Generation:
        """A reprocessing generation's record changed by a compare-and-set: an `abandon` that lands
        between `ready`'s read and write (or the other way round) is not overwritten."""
        raw = await self.redis.hget(self.key, f"g:{number}")
        generation = Generation.from_json(raw) if raw is not None else None
        if generation is None or generation.state != "reprocessing":
            raise RegistryError(f"generation {number} is not reprocessing")
        changed = change(generation)
        if not int(await self.redis.eval(SWAP_SCRIPT, 1, self.key, f"g:{number}", raw, changed.to_json())):
            raise RegistryError(
                f"generation {number} changed meanwhile (abandoned, or made ready): try again"
            )
        return changed

    async def flip(self, expected: int, to: int) -> bool:
        """Make `to` current if `expected` still is; False if another flip came first."""
        new, old = await self.get(to), await self.get(expected)
        if new is None or old is None:
            raise RegistryError(f"generation {to if new is None else expected} does not exist (any more)")
        now = _now_ms()
        result = await self.redis.eval(
            FLIP_SCRIPT,
            1,
            self.key,
            str(expected),
            str(to),
            replace(new, state="live", live_ms=now, retired_ms=None).to_json(),
            replace(old, state="retired", retired_ms=now).to_json(),
        )
        if int(result[0]) < 0:
            raise RegistryError(f"generation {to} was deleted meanwhile")
        return int(result[0]) == 1

    async def set_progress(self, number: int, progress: dict[str, Any]) -> None:
        await self.redis.hset(self.key, f"progress:{number}", orjson.dumps(progress))

    async def progress(self, number: int) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.key, f"progress:{number}")
        return dict(orjson.loads(raw)) if raw is not None else None

    async def set_seam(self, number: int, seam: dict[str, dict[str, int]]) -> None:
        """Where generation `number`'s relay starts (its topics' ends at the flip) and where the
        live topics were then (`relay`)."""
        await self.redis.hset(self.key, f"seam:{number}", orjson.dumps(seam))

    async def seam(self, number: int) -> dict[str, dict[str, int]] | None:
        raw = await self.redis.hget(self.key, f"seam:{number}")
        return dict(orjson.loads(raw)) if raw is not None else None

    async def set_relay_checkpoint(
        self,
        number: int,
        own: dict[str, int],
        live: dict[str, int],
        remembered: list[Any] | None = None,
    ) -> None:
        """The relay's position after a delivered batch, in one HSET: in generation `number`'s
        topics (`own`), in the live topics after what it sent (`live`), and, when it changed, the
        ids of the previous generation's last words it has not met yet (`remembered`)."""
        mapping: dict[str, Any] = {**own, **{LIVE + name: offset for name, offset in live.items()}}
        if remembered is not None:
            mapping[REMEMBERED] = orjson.dumps(remembered)
        if mapping:
            await self.redis.hset(f"{self.key}:relay:{number}", mapping=mapping)

    async def relay_checkpoint(self, number: int) -> RelayCheckpoint:
        raw = {_text(k): v for k, v in (await self.redis.hgetall(f"{self.key}:relay:{number}")).items()}
        remembered = raw.pop(REMEMBERED, None)
        own = {k: int(v) for k, v in raw.items() if not k.startswith(LIVE)}
        live = {k.removeprefix(LIVE): int(v) for k, v in raw.items() if k.startswith(LIVE)}
        return RelayCheckpoint(own, live, orjson.loads(remembered) if remembered is not None else None)

    async def set_judged(self, number: int, snapshot: bytes) -> None:
        """What generation `number`'s evaluators judged (`generations.judged`)."""
        await self.redis.set(f"{self.key}:judged:{number}", snapshot)

    async def judged(self, number: int) -> bytes | None:
        raw = await self.redis.get(f"{self.key}:judged:{number}")
        return raw.encode() if isinstance(raw, str) else raw

    async def beat(self, number: int, member: str) -> None:
        """A worker of generation `number` is alive (`alive_elsewhere`)."""
        await self.redis.zadd(f"{self.key}:alive", {f"{number}:{member}": _now_ms()})

    async def alive_elsewhere(self, number: int, within_ms: int = 3_000) -> list[int]:
        """The other generations with a worker that beat within `within_ms`."""
        key = f"{self.key}:alive"
        await self.redis.zremrangebyscore(key, 0, _now_ms() - 10 * within_ms)
        members = await self.redis.zrangebyscore(key, _now_ms() - within_ms, "+inf")
        found = {int(_text(m).split(":", 1)[0]) for m in members}
        return sorted(found - {number})

    async def forget(self, number: int) -> None:
        """Remove a retired generation's record (after its topics and keys are deleted)."""
        generation = await self.get(number)
        if generation is not None and generation.state != "retired":
            raise RegistryError(f"generation {number} is {generation.state}: only a retired one is forgotten")
        await self.redis.hdel(self.key, f"g:{number}", f"progress:{number}", f"seam:{number}")
        await self.redis.delete(f"{self.key}:relay:{number}", f"{self.key}:judged:{number}")
        if await self.previous_number() == number:
            await self.redis.hdel(self.key, "previous")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
