"""Many journeys at once: a state store, per-partition watermarks and a deadline index.

This is what both the Kafka worker and offline mode drive. Events of one identity always
land in the same partition (`partition_for`). Each partition keeps a heap of its journeys'
next deadlines, so timeouts fire for journeys that receive no new event without scanning
them all, and a watermark aligned over its sources: every source (a partition of an input
topic) reports how far its event time has got, and the partition's watermark is the
slowest source's, less the late tolerance. A fast source therefore cannot fire a deadline
before a slow source has delivered the event that would have kept it open, which makes
the outputs independent of how Kafka interleaves the sources.

With identity stitching (`core.identity`) an event is first handled on its *home* partition (its
anonymous id's), which applies it to the anonymous journey or hands it to the person's partition
as an item. There items are held until the partition's hold watermark passes them, then applied
in event-time order. On Kafka, items for other partitions wait in `outbox` for the worker to
send them, and every partition's progress through its own input reaches the others as the
watermark of a *forwarder* source (`journeys/N`), which the hold and deadline watermarks wait
for like any other source. Offline, items are held on their partition at once.

On Kafka a person's held items need not wait for every partition: only the partitions an
earlier item of theirs can still come from (the homes of their linked anonymous ids, of the ids
their held items carry, and of the ids ingest's link notices named, `core.journeys.notices`)
must have passed them, besides the partition's own sources (`_person_until`). After a restart or
a rebalance the notices seen before are gone, and every partition is waited for again until the
hold watermark passes what the sources had reached (`notices_lost_until`).

A run's journeys are decoded once and written once: `load` keeps each journey it reads (and every
journey saved) in a cache of live objects, and `flush` writes the ones that changed to the store,
each once, in the order they were first changed, then empties the cache. The Kafka agent flushes
after each run of messages, before the table's changelog is written; offline mode every chunk of
lines. Between two flushes the store is behind: read it only after a flush.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from heapq import heappop, heappush, heapreplace
from typing import Any, Final
from zlib import crc32

from streams.core.config.matching import CompiledConfig
from streams.core.config.versions import Definition
from streams.core.input.deadletter import placed
from streams.core.input.event import ClickEvent
from streams.core.journeys.identity import (
    Forwarded,
    IdentityRules,
    Item,
    Merge,
    Source,
    Step,
    decide_ids,
    decode_item,
    forwarder_source,
    home_key,
    is_forwarder,
    release_order,
)
from streams.core.journeys.journey import Journey, JourneyMachine, Outputs
from streams.core.journeys.merge import MAX_MERGED_IDS, merge_journeys, merged_first_touch
from streams.core.journeys.notices import Notice, decode_notice
from streams.core.records.ids import output_id, short_hash
from streams.core.records.outputs import DeadLetter, IdentityLink
from streams.core.records.trusted import assemble, given

_LINKED_SET: Final = given(IdentityLink, "type", "reason", "linked_user_id")
"""The fields set of a `linked` identity output (`_linked`): all but those left at their default."""


def _refused_any(outputs: Outputs) -> bool:
    """Whether an item's outputs hold a dead letter (an event refused when it was released)."""
    for output in outputs:  # noqa: SIM110 (a loop: compiled, any() builds a generator per call)
        if isinstance(output, DeadLetter):
            return True
    return False


def _ts_ms(read: dict[str, Any], event: ClickEvent) -> int:
    """`event.ts_ms` from the fields read: validation (`fields.settled`) keeps it among them."""
    known = read.get("ts_ms")
    return known if known is not None else event.ts_ms


NO_TIME: Final = -(1 << 62)
"""A partition's floor before any: a native int (the least mypyc keeps unboxed), not None."""


def partition_for(identity: str, partitions: int) -> int:
    """The partition that owns an identity's journey; stable across processes and restarts."""
    return crc32(identity.encode()) % partitions


@dataclass(slots=True)
class _PartitionClock:
    sources: dict[str, int] = field(default_factory=dict)
    waiting_for: set[str] = field(default_factory=set)
    """Expected sources not heard from yet: until each reports (or idles), no deadline fires."""
    floor_at: int = NO_TIME
    """The watermark reached so far (NO_TIME: none yet): it never goes back, even when every
    source goes idle."""
    idle_reached: int | None = None
    """How far the sources that went idle had got: once no source is active, event time gets
    there, since nothing earlier is coming (whichever order they went idle in)."""
    heap: list[tuple[int, str]] = field(default_factory=list)
    scheduled: dict[str, int] = field(default_factory=dict)
    hold_floor: int | None = None
    holds: list[tuple[int, str]] = field(default_factory=list)
    """(earliest held item's time, person): journeys with items waiting for the hold watermark."""
    held_at: dict[str, int] = field(default_factory=dict)
    # Link notices and the restart bound (Kafka only; never in a state file: offline has none).
    notices: dict[str, dict[str, int]] = field(default_factory=dict)
    """person -> {forwarder source: latest noticed time}: items that source may still send them."""
    noticed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """forwarder source -> heap of (noticed time, person): what its watermark settles."""
    parked: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """forwarder source -> heap of (earliest held time, person): holds the early rule found
    waiting for that source, looked at again only once it has passed them."""
    notices_lost_until: int | None = None
    """Notices up to this time may have been seen before a restart: until the hold watermark
    passes it, held items wait for every partition."""

    def to_state(self) -> dict[str, Any]:
        """Plain data for a state file (the heaps as they are: the order deadlines fire in within
        one advance of event time depends on them)."""
        return {
            "sources": dict(self.sources),
            "waiting_for": sorted(self.waiting_for),
            "floor": None if self.floor_at == NO_TIME else self.floor_at,
            "idle_reached": self.idle_reached,
            "heap": [list(x) for x in self.heap],
            "scheduled": dict(self.scheduled),
            "hold_floor": self.hold_floor,
            "holds": [list(x) for x in self.holds],
            "held_at": dict(self.held_at),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> _PartitionClock:
        def optional(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(
            sources={str(k): int(v) for k, v in data["sources"].items()},
            waiting_for={str(x) for x in data["waiting_for"]},
            floor_at=NO_TIME if data["floor"] is None else int(data["floor"]),
            idle_reached=optional(data["idle_reached"]),
            heap=[(int(t), str(i)) for t, i in data["heap"]],
            scheduled={str(k): int(v) for k, v in data["scheduled"].items()},
            hold_floor=optional(data["hold_floor"]),
            holds=[(int(t), str(i)) for t, i in data["holds"]],
            held_at={str(k): int(v) for k, v in data["held_at"].items()},
        )


class Engine:
    def __init__(
        self,
        config: CompiledConfig,
        store: MutableMapping[str, bytes],
        partitions: int,
        expected_sources: Iterable[str] = (),
        forwarding: bool = False,
        known: Iterable[Definition] = (),
        early_release: bool = False,
    ) -> None:
        """`known`: the funnel versions state may have been written under (the store's registry,
        `config.versions`), so attempts written under them are settled by their rules.
        `early_release` (with forwarding): link notices sent and read, and a stitched person's
        held items released once their own conflicting partitions have passed them; only safe
        once every worker's ingest sends notices (`Settings.early_release`)."""
        self.machine = JourneyMachine(config, known)
        self.config = config
        self.store = store
        self.partitions = partitions
        self.expected_sources = frozenset(expected_sources)
        self.rules = IdentityRules.from_config(config.source.identity)
        self.forwarding = forwarding and self.rules.stitch and partitions > 1
        """Items for other partitions go to `outbox` (Kafka), not straight to their holds."""
        self.early_release = early_release and self.forwarding
        self._late: Final = config.late_tolerance
        self.outbox: list[tuple[int, Item]] = []
        self._clocks: dict[int, _PartitionClock] = {}
        self._every: list[_PartitionClock] = []
        """Every partition's clock by partition, once `observe_all` has made them all (emptied
        whenever `_clocks` changes): read by index, where `_clocks` boxes the partition to look it up."""
        self._cache: dict[str, Journey | None] = {}
        """Journeys read or saved since the last flush (None: known to be absent)."""
        self._dirty: dict[str, None] = {}
        """The identities to write (or delete) at the flush, in the order first changed."""
        self._clicks: dict[int, tuple[dict[str, Any], ClickEvent]] = {}
        """Held item bodies of this run (by id, the body kept alive with it) and their event,
        validated already: applying them needs no second validation."""
        self._handed: dict[int, tuple[dict[str, Any], Journey]] = {}
        """Held merge bodies of this run (by id, kept alive with it) and the anonymous journey
        itself, which nothing changes after it is handed over: merging it needs no decoding."""

    def clocks_state(self) -> dict[str, Any]:
        """Each partition's clock and deadline index as plain data (offline `--state`)."""
        return {str(partition): clock.to_state() for partition, clock in self._clocks.items()}

    def restore_clocks(self, data: Mapping[str, Any], source: str) -> None:
        """The clocks `clocks_state` saved, with `source` in place of the sources they heard
        from (a resumed offline run reads another file)."""
        clocks: dict[int, _PartitionClock] = {}
        for partition, saved in data.items():
            clock = _PartitionClock.from_state(saved)
            clock.sources = {source: max(clock.sources.values())} if clock.sources else {}
            clock.waiting_for = {source} if clock.waiting_for else set()
            self._floor(clock)  # what every read of the floor does first (`observe` relies on it)
            clocks[int(partition)] = clock
        self._clocks = clocks
        self._every = []

    def _clock(self, partition: int) -> _PartitionClock:
        every = self._every
        if 0 <= partition < len(every):
            return every[partition]
        clock = self._clocks.get(partition)
        if clock is None:
            self._every = []
            expected = set(self.expected_sources)
            if self.forwarding:
                expected |= {forwarder_source(p) for p in range(self.partitions) if p != partition}
            clock = self._clocks[partition] = _PartitionClock(waiting_for=expected)
        return clock

    def partition_of(self, identity: str) -> int:
        return partition_for(identity, self.partitions)

    def home_partition(self, event: ClickEvent) -> int:
        """The partition that first handles an event: its anonymous id's when stitching."""
        return partition_for(self.rules.home(event), self.partitions)

    def notice_for(self, event: ClickEvent) -> tuple[int, Notice] | None:
        """The user's partition and the link notice ingest sends it beside an event that carries
        both ids and goes to another (its anonymous id's) home; None when there is none to send."""
        user, anonymous = event.user_id, event.anonymous_id
        if not self.early_release or user is None or anonymous is None:
            return None
        target = partition_for(user, self.partitions)
        if target == partition_for(anonymous, self.partitions):
            return None
        return target, Notice(user, anonymous, event.ts_ms)

    def notice(self, partition: int, body: object) -> None:
        """A link notice ingest sent this partition (`core.journeys.notices`): until the
        anonymous id's home has passed its time, the user's held items wait for that home too.
        Without the early release (a worker whose peers already send notices) it is checked and
        ignored."""
        notice = decode_notice(body)
        if not self.early_release:
            return
        home = self.partition_of(notice.anonymous_id)
        if home == partition:
            return
        clock = self._clock(partition)
        source = forwarder_source(home)
        reached = None if source in clock.waiting_for else clock.sources.get(source)
        if reached is not None and reached > notice.ts:
            return  # its item, if any, is here already (at its own time, it may not be yet)
        noticed = clock.notices.setdefault(notice.user, {})
        if notice.ts > noticed.get(source, notice.ts - 1):
            noticed[source] = notice.ts
            heappush(clock.noticed.setdefault(source, []), (notice.ts, notice.user))

    def notices_lost_until(self, partition: int, at: int | None) -> None:
        """After a restart or a rebalance: the notices this partition was sent up to `at` (how
        far its sources had got, by its applied markers) are not known here, so until the hold
        watermark passes `at` its held items wait for every partition."""
        if at is None or not self.early_release:
            return
        clock = self._clock(partition)
        if clock.notices_lost_until is None or at > clock.notices_lost_until:
            clock.notices_lost_until = at

    @staticmethod
    def _reached(clock: _PartitionClock, forwarders: bool = True) -> int | None:
        """The slowest source's event time (None while an expected source is not heard from)."""
        if forwarders:
            if clock.waiting_for:
                return None
            sources = clock.sources
            if not sources:
                return clock.idle_reached
            lowest = -NO_TIME  # min(), a loop of native int compares (no boxing)
            for at in sources.values():
                lowest = min(lowest, at)
            return lowest
        if any(not is_forwarder(source) for source in clock.waiting_for):
            return None
        own = [at for source, at in clock.sources.items() if not is_forwarder(source)]
        return min(own) if own else clock.idle_reached

    def watermark(self, partition: int) -> int | None:
        """Deadlines before this event time fire: the slowest source, less the late tolerance."""
        clock = self._clocks.get(partition)
        return None if clock is None else self._floor(clock)

    def _floor(self, clock: _PartitionClock) -> int | None:
        reached = self._reached(clock)
        if reached is not None:
            current = reached - self._late
            clock.floor_at = max(clock.floor_at, current)
        floor = clock.floor_at
        return None if floor == NO_TIME else floor

    def hold_watermark(self, partition: int) -> int | None:
        """Held items up to this event time apply: nothing earlier can still be on its way."""
        clock = self._clocks.get(partition)
        return None if clock is None else self._hold_floor(clock)

    def _hold_floor(self, clock: _PartitionClock) -> int | None:
        reached = self._reached(clock)
        if reached is not None and (clock.hold_floor is None or reached > clock.hold_floor):
            clock.hold_floor = reached
        return clock.hold_floor

    def progress(self, partition: int) -> int | None:
        """How far this partition has got through its own input (not what others forwarded):
        what it announces to the others as its forwarder watermark, after what it forwarded."""
        clock = self._clocks.get(partition)
        return None if clock is None else self._reached(clock, forwarders=False)

    def load(self, identity: str) -> Journey | None:
        """The journey (a live object: the cache's until the next flush), or None."""
        cache = self._cache
        journey = cache.get(identity)
        if journey is not None or identity in cache:  # one lookup for a journey in the cache
            return journey
        raw = self.store.get(identity)
        loaded = Journey.loads(raw) if raw is not None else None
        cache[identity] = loaded
        return loaded

    def _read(self, identity: str) -> Journey | None:
        """The journey without keeping it (recovery reads every journey once)."""
        if identity in self._cache:
            return self._cache[identity]
        raw = self.store.get(identity)
        return Journey.loads(raw) if raw is not None else None

    def _put(self, journey: Journey) -> None:
        identity = journey.identity
        self._cache[identity] = journey
        self._dirty[identity] = None

    def _delete(self, identity: str) -> None:
        self._cache[identity] = None
        self._dirty[identity] = None

    @property
    def cached(self) -> int:
        """Journeys held decoded since the last flush."""
        return len(self._cache)

    def flush(self) -> int:
        """Write every journey changed since the last flush to the store, once each, and forget
        the cache; the number written. Call it before the store is read or persisted."""
        store, cache = self.store, self._cache
        for identity in self._dirty:
            journey = cache[identity]
            if journey is not None:
                if journey.held:
                    self._fill_held(journey)
                store[identity] = journey.dumps()
            elif identity in store:
                del store[identity]
        written = len(self._dirty)
        self._dirty = {}
        self._cache = {}
        self._clicks = {}
        self._handed = {}
        return written

    def process(
        self, event: ClickEvent, partition: int | None = None, source: Source | None = None
    ) -> Outputs:
        """Apply one event on its home partition. Deadlines fire in `observe`, when sources move on.
        `source`, where the event was read, travels with it when it is held or forwarded."""
        # the model's fields as the dict they are kept in: compiled, each is then a dict lookup
        # rather than a generic attribute lookup on the model
        read = event.__dict__
        user: str | None = read["user_id"]
        anonymous: str | None = read["anonymous_id"]
        if not self.rules.stitch:
            identity = home_key(False, user, anonymous)  # `ClickEvent.identity`
            if partition is None:
                partition = self.partition_of(identity)
            clock = self._clock(partition)
            applied, out = self.machine.apply(self.load(identity), event)
            self._save(clock, applied)
            return out
        home = home_key(True, user, anonymous)
        if partition is None:
            partition = self.partition_of(home)
        clock = self._clock(partition)
        ts = _ts_ms(read, event)
        if anonymous is None:  # the person's own event: held with what is forwarded to it
            return self._send(partition, Forwarded(home, self._event_dict(event), ts, source=source), event)
        journey = self.load(home)
        linked_to = journey.linked_to if journey is not None else None
        decision, person = decide_ids(self.rules, linked_to, user, anonymous, read["event"])
        if decision == "local":
            applied, out = self.machine.apply(journey, event)
            self._save(clock, applied)
            return out
        out = []
        if decision == "link":
            state = None
            stub = Journey(None, home, linked_to=person, last_ts=ts)
            if journey is not None:
                out += self.machine.advance(journey, ts)
                if journey.held:
                    self._fill_held(journey)
                state = journey.dumps()
                stub.last_ts = max(stub.last_ts, journey.last_ts)
                # the events the anonymous journey applied travel in it: the stub remembers
                # them, so a copy delivered again (a redone run) is not forwarded a second time
                stub.seen, stub.seen_at = list(journey.seen), list(journey.seen_at)
            self._save(clock, stub)
            # its event's JSON form as a forwarded event's (`_event_dict`): offline, only if read
            merge = Merge(person, home, state, self._event_dict(event), ts, source=source)
            return out + self._send(partition, merge, event, journey)
        else:
            if journey is not None and linked_to is not None and short_hash(read["event_id"]) in journey.seen:
                return []  # applied by the anonymous journey before it was merged
            if decision == "refuse":
                assert journey is not None and linked_to is not None
                out.append(self._refused(event, linked_to))
            if journey is not None and linked_to is not None and ts > journey.last_ts:
                journey.last_ts = ts  # the link lives on while its anonymous id is seen
                self._save(clock, journey)
            item = Forwarded(person, self._event_dict(event), ts, source=source)
        return out + self._send(partition, item, event)

    def forget(self, identity: str) -> list[str]:
        """Erase a person (`conversions forget`, `streams.kafka.erasures`): their journey with its
        held items, and the link stubs of the anonymous ids merged into it; given an anonymous id
        linked to a user, the user's journey too, since the anonymous history lives in it now.
        The keys deleted (the flush writes their tombstones), none when nothing is known."""
        journey = self.load(identity)
        if journey is None:
            return []
        if journey.linked_to is not None:  # an anonymous id's stub: the person is the user
            person = self.load(journey.linked_to)
            deleted = [identity]
            self._delete(identity)
            return deleted + (self.forget(journey.linked_to) if person is not None else [])
        deleted = [identity]
        self._delete(identity)
        for anonymous in dict.fromkeys([journey.anonymous_id, *journey.merged]):
            if anonymous is None or anonymous == identity:
                continue
            stub = self.load(anonymous)
            if stub is not None and stub.linked_to == identity:
                self._delete(anonymous)
                deleted.append(anonymous)
        return deleted

    def accept(self, partition: int, body: object) -> Outputs:
        """An item another partition forwarded here (as `Item.encode` wrote it)."""
        return self._hold(partition, decode_item(body))

    def _send(
        self, partition: int, item: Item, event: ClickEvent, anonymous: Journey | None = None
    ) -> Outputs:
        """`anonymous`: a merge's anonymous journey (the live object `item.journey` was dumped from)."""
        target = self.partition_of(item.person)
        if self.forwarding and target != partition:
            self.outbox.append((target, item))
            return []
        return self._hold(target, item, event, anonymous)

    def _hold(
        self,
        partition: int,
        item: Item,
        event: ClickEvent | None = None,
        anonymous: Journey | None = None,
    ) -> Outputs:
        clock = self._clock(partition)
        journey = self.load(item.person) or Journey(item.person, None)
        body = item.encode()
        journey.held.append(body)
        if event is not None:
            self._clicks[id(body)] = (body, event)
        if anonymous is not None:
            self._handed[id(body)] = (body, anonymous)
        self._put(journey)
        self._schedule_hold(clock, journey)
        return self._release_due(partition, clock)

    def _event_dict(self, event: ClickEvent) -> dict[str, Any]:
        """A forwarded item's event: its JSON form, or without forwarding (offline) an empty dict
        that `_fill_held` fills in only if the journey holding it is written before the item is
        released (the flush), or its events are read (`release_order`, `_conflicts`): a held
        event released in its own run (most are) is applied from its `ClickEvent` (`_event_of`)
        and never needs the form, a `model_dump` of the whole event."""
        return event.to_json_dict() if self.forwarding else {}

    def _fill_held(self, journey: Journey) -> None:
        """The event of each held body `_event_dict` left empty, filled in from its `ClickEvent`
        (registered in `_clicks` with the body until it is released): the JSON form it stands for."""
        clicks = self._clicks
        for body in journey.held:
            event = body["event"]
            if not event:
                known = clicks.get(id(body))
                if known is not None and known[0] is body:
                    event.update(known[1].to_json_dict())

    def _event_of(self, item: Item, keep: bool = False) -> ClickEvent:
        """The item's event: the one validated when it was held in this run, else validated now."""
        clicks = self._clicks
        known = None
        if item.body is not None:
            known = clicks.get(id(item.body)) if keep else clicks.pop(id(item.body), None)
        if known is not None and known[0] is item.body:
            return known[1]
        return ClickEvent.model_validate(item.event)

    def _schedule_hold(self, clock: _PartitionClock, journey: Journey) -> None:
        if not journey.held:
            return
        earliest = min(body["ts"] for body in journey.held)
        known = clock.held_at.get(journey.identity)
        if known is None or earliest < known:
            clock.held_at[journey.identity] = earliest
            heappush(clock.holds, (earliest, journey.identity))

    def _release_due(self, partition: int, clock: _PartitionClock) -> Outputs:
        """Apply, in event-time order, the held items the hold watermark has passed, and (on
        Kafka) those of each person whose own conflicting partitions have (`_person_until`)."""
        out: Outputs = []
        if not clock.holds:
            return out
        until = self._hold_floor(clock)
        early = self._early_limit(clock, until) if self.early_release else None
        limit = until if early is None else early
        if limit is None:
            return out
        blocked: list[tuple[int, str]] | None = None  # (cap reached) looked at again next call
        while clock.holds and clock.holds[0][0] <= limit:
            earliest, person = heappop(clock.holds)
            if clock.held_at.get(person) != earliest:
                continue
            upto = until
            if until is None or earliest > until:  # only the early rule can release it
                journey = self.load(person)
                if journey is None:  # erased meanwhile: nothing held any more
                    del clock.held_at[person]
                    continue
                upto, blocker = self._person_until(partition, clock, journey, until)
                if upto is None or earliest > upto:
                    if blocker is None:
                        if blocked is None:
                            blocked = []
                        blocked.append((earliest, person))
                    else:  # looked at again once that source has passed it
                        heappush(clock.parked.setdefault(blocker, []), (earliest, person))
                    continue
            del clock.held_at[person]
            journey = self.load(person)
            if journey is None:
                continue
            assert upto is not None
            held = journey.held
            if len(held) == 1 and held[0]["ts"] <= upto:  # one item (most people): no filtering
                ready = [decode_item(held[0])]
                journey.held = []
            else:
                self._fill_held(journey)  # `release_order` reads the events
                ready = [decode_item(body) for body in held if body["ts"] <= upto]
                journey.held = [body for body in held if body["ts"] > upto]
            steps: list[tuple[Step, Item]]
            if len(ready) == 1 and isinstance(ready[0], Forwarded):  # one event: nothing to order
                steps = [("event", ready[0])]
            else:
                steps = release_order(ready)
            links: dict[int, dict[str, Any]] | None = None
            for step, item in steps:
                if step == "merge" and isinstance(item, Merge):
                    merged, link = self._merge(journey, item)
                    out += merged
                    if link is not None:
                        if links is None:
                            links = {}
                        links[id(item)] = link
                    continue
                journey, applied = self.machine.apply(journey, self._event_of(item))
                if item.source is not None and _refused_any(applied):  # where it was read
                    applied = placed(applied, *item.source)
                out += applied
                if links is not None:
                    link = links.pop(id(item), None)
                    if link is not None:  # what the merge kept, once its linking event has applied
                        out.append(self._linked(journey, link))
            self._save(clock, journey)
            self._schedule_hold(clock, journey)  # what is still held waits for a later watermark
        if blocked:
            for entry in blocked:
                heappush(clock.holds, entry)
        return out

    def _early_limit(self, clock: _PartitionClock, until: int | None) -> int | None:
        """How far the partition's own sources have got, when that is past the hold watermark
        and the early rule may apply (no notices lost); else None."""
        lost = clock.notices_lost_until
        if lost is not None:
            if until is None or until < lost:
                return None
            clock.notices_lost_until = None
        own = self._reached(clock, forwarders=False)
        if own is None or (until is not None and own <= until):
            return None
        return own

    def _person_until(
        self, partition: int, clock: _PartitionClock, journey: Journey, until: int | None
    ) -> tuple[int | None, str | None]:
        """Up to when the person's held items may apply: the slowest of the partition's own
        sources and of the forwarders an earlier item of theirs can still come from (taken as
        the hold watermark takes them); never less than the hold watermark `until`. A later
        event of theirs then never goes first: no other partition sends them anything this
        partition has not been noticed of. Also the forwarder that holds them back most (None:
        the own sources, or not known)."""
        bound = self._reached(clock, forwarders=False)
        if bound is None:
            return until, None
        conflicts = self._conflicts(partition, clock, journey)
        if conflicts is None:
            return until, None
        sources, waiting = clock.sources, clock.waiting_for
        slowest = None
        for source in conflicts:
            reached = None if source in waiting else sources.get(source)
            if reached is None:
                return until, source
            if reached < bound:
                bound, slowest = reached, source
        return (bound if until is None or bound > until else until), slowest

    def _conflicts(self, partition: int, clock: _PartitionClock, journey: Journey) -> set[str] | None:
        """The forwarder sources an item for this person can still come from: the homes of their
        linked anonymous ids, of those their held items carry, and of those noticed and not yet
        passed; None when not all are known (more linked ids than the journey keeps)."""
        merged = journey.merged
        if len(merged) >= MAX_MERGED_IDS:
            return None
        homes = {self.partition_of(anonymous) for anonymous in merged}
        if journey.anonymous_id is not None:
            homes.add(self.partition_of(journey.anonymous_id))
        self._fill_held(journey)
        for body in journey.held:
            anonymous = body.get("merge") or body["event"].get("anonymous_id")
            if isinstance(anonymous, str):
                homes.add(self.partition_of(anonymous))
        homes.discard(partition)
        found = {forwarder_source(home) for home in homes}
        noticed = clock.notices.get(journey.identity)
        if noticed:
            sources = clock.sources
            for source, at in noticed.items():
                reached = sources.get(source)
                if reached is None or reached <= at or source in clock.waiting_for:
                    found.add(source)
        return found

    @staticmethod
    def _unpark(clock: _PartitionClock, source: str) -> None:
        """The holds that waited for this forwarder and that it has now passed: back in the
        partition's holds, to be looked at again."""
        heap, reached = clock.parked[source], clock.sources.get(source)
        if reached is None:
            return
        while heap and heap[0][0] <= reached:
            heappush(clock.holds, heappop(heap))
        if not heap:
            del clock.parked[source]

    def _settle_notices(self, clock: _PartitionClock, source: str) -> None:
        """Forget the notices a forwarder's watermark has passed: their items are here."""
        heap = clock.noticed.get(source)
        reached = clock.sources.get(source)
        if not heap or reached is None:
            return
        notices = clock.notices
        while heap and heap[0][0] < reached:
            _, person = heappop(heap)
            noticed = notices.get(person)
            if noticed is not None and noticed.get(source, reached) < reached:
                del noticed[source]
                if not noticed:
                    del notices[person]

    def _merge(self, journey: Journey, item: Merge) -> tuple[Outputs, dict[str, Any] | None]:
        """The anonymous journey joins the person's (its linking event applies after, in its
        place among the held events); the identity output's fields, to complete and build once it
        has (`_linked`), or None when this merge was delivered before."""
        if item.anonymous_id in journey.merged:
            return [], None
        user_history = journey.last_ts > 0
        handed = self._handed.pop(id(item.body), None) if item.body is not None else None
        anonymous: Journey | None
        if handed is not None and handed[0] is item.body:
            anonymous = handed[1]
            anonymous.changed()  # as decoded: nothing cached of its next deadline or settling
        else:
            anonymous = Journey.loads(item.journey) if item.journey is not None else None
        ended: dict[str, int] = {}
        if anonymous is not None:
            out, ended = merge_journeys(self.machine, journey, anonymous, item.ts)
        else:
            out = self.machine.advance(journey, item.ts)
            journey.merged = [*journey.merged, item.anonymous_id][-MAX_MERGED_IDS:]
            if journey.anonymous_id is None:
                journey.anonymous_id = item.anonymous_id
        event = self._event_of(item, keep=True)  # its event applies later, as a step of its own
        read = event.__dict__  # (`process`)
        # every field of the output in the model's order (`assemble`); `_linked` sets the last three
        link: dict[str, Any] = {
            "id": output_id("identity", item.anonymous_id, item.person, read["event_id"]),
            "type": "identity",
            "user_id": item.person,
            "anonymous_id": item.anonymous_id,
            "session_id": read["session_id"],
            "timestamp": read["timestamp"],
            "action": "linked",
            "event": read["event"],
            "event_id": read["event_id"],
            "reason": None,
            "linked_user_id": None,
            "anonymous_history": anonymous is not None,
            "user_history": user_history,
            "first_touch": None,
            "attempts_kept": None,
            "attempts_merged": ended,
        }
        return out, link

    @staticmethod
    def _linked(journey: Journey, link: dict[str, Any]) -> IdentityLink:
        """The identity output `_merge` began, completed with what the merge kept and made once,
        unvalidated (`assemble`): every value is of its field's type already, every field given
        in the model's order, the fields set those `build` would record."""
        if journey.session is not None:
            link["session_id"] = journey.session.id
        link["first_touch"] = merged_first_touch(journey)
        link["attempts_kept"] = {key: attempt.reached for key, attempt in journey.attempts.items()}
        return assemble(IdentityLink, link, _LINKED_SET)

    @staticmethod
    def _refused(event: ClickEvent, linked_to: str) -> IdentityLink:
        return IdentityLink(
            id=output_id("identity-refused", event.anonymous_id, event.user_id, event.event_id),
            user_id=event.user_id,
            anonymous_id=event.anonymous_id,
            session_id=event.session_id,
            timestamp=event.timestamp,
            action="refused",
            event=event.event,
            event_id=event.event_id,
            reason=(
                "the anonymous id is linked to another user already; two users are never merged, "
                "so this event counts for its own user alone"
            ),
            linked_user_id=linked_to,
        )

    def observe(self, partition: int, source: str, event_time: int) -> Outputs:
        """A source has delivered everything up to `event_time`: apply and fire what that makes due."""
        clock = self._clocks.get(partition) or self._clock(partition)
        out: Outputs = []
        self._observed(partition, clock, source, event_time, out, event_time)
        return out

    def observe_all(self, source: str, event_time: int) -> Outputs:
        """`observe` on every partition in turn (offline mode: one source feeds them all)."""
        out: Outputs = []
        every = self._every
        if not every:
            every = [self._clock(partition) for partition in range(self.partitions)]
            self._every = every
        boxed: object = event_time  # one Python int for every partition's `sources`
        for partition in range(len(every)):
            self._observed(partition, every[partition], source, event_time, out, boxed)
        return out

    def _observed(
        self,
        partition: int,
        clock: _PartitionClock,
        source: str,
        event_time: int,
        out: Outputs,
        boxed: object,
    ) -> None:
        """`observe`, its outputs added to `out` (one list per call, however many partitions);
        `boxed`: `event_time` as the object `sources` keeps (compiled, a native int is boxed
        anew wherever it goes into a dict)."""
        waiting = clock.waiting_for
        moved = False
        if len(waiting) and source in waiting:  # len(): a native read of the set's size
            waiting.discard(source)
            moved = True
        sources = clock.sources
        prior = sources.get(source)
        if prior is None or event_time > prior:
            sources[source] = boxed  # type: ignore[assignment]
            reached = event_time
            moved = True
        else:
            reached = prior
        if moved:
            # the floor moves only with the sources: unchanged, it is still right
            if not len(waiting) and len(sources) == 1:  # offline's one source: `_floor` without the loop
                current = reached - self._late
                clock.floor_at = max(clock.floor_at, current)
            else:
                self._floor(clock)
            if clock.noticed and source in clock.noticed:
                self._settle_notices(clock, source)
            if clock.parked and source in clock.parked:
                self._unpark(clock, source)
        if clock.holds:
            out += self._release_due(partition, clock)
        # the floor is right here (see above), and applying held items does not move it
        heap = clock.heap
        if heap:
            floor = clock.floor_at
            if heap[0][0] < floor:  # never when there is no floor yet (NO_TIME)
                self._fire_due(partition, clock, floor, out)

    def forget_source(self, partition: int, source: str) -> Outputs:
        """Stop waiting for a source (gone idle, or moved to another worker)."""
        clock = self._clock(partition)
        was_waiting = source in clock.waiting_for
        clock.waiting_for.discard(source)
        reached = clock.sources.pop(source, None)
        if reached is not None:
            clock.idle_reached = max(reached, clock.idle_reached or reached)
        # the holds parked on it would wait for it to move: back with the others, to go as the
        # hold watermark (no longer waiting for it either) or their person's own rule lets them
        for entry in clock.parked.pop(source, ()):
            heappush(clock.holds, entry)
        if reached is None and not was_waiting:
            return []
        out = self._release_due(partition, clock)
        watermark = self._floor(clock)
        if watermark is not None:
            self._fire_due(partition, clock, watermark, out)
        return out

    def rebuild_deadlines(self, partition: int, identities: Iterable[str]) -> int:
        """Index the deadlines of journeys already in the store (after recovery or assignment)."""
        clock = self._clock(partition)
        count = 0
        for identity in identities:
            journey = self._read(identity)
            if journey is not None:
                self._schedule(clock, journey)
                self._schedule_hold(clock, journey)
                count += 1
        return count

    def release_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the deadlines and clocks of partitions another worker now owns."""
        self.flush()
        for partition in partitions:
            self._clocks.pop(partition, None)
        self._every = []

    def pending_deadlines(self, partition: int) -> int:
        clock = self._clocks.get(partition)
        return len(clock.scheduled) if clock else 0

    def _save(self, clock: _PartitionClock, journey: Journey) -> None:
        """`_put` and `_schedule`, the journey's identity read once."""
        identity = journey.identity
        self._cache[identity] = journey
        self._dirty[identity] = None
        deadline = self._next_deadline(journey)
        if deadline is None:
            return
        known = clock.scheduled.get(identity)
        if known is None or deadline < known:
            clock.scheduled[identity] = deadline
            heappush(clock.heap, (deadline, identity))

    def _next_deadline(self, journey: Journey) -> int | None:
        if journey.linked_to is not None:  # a stub: forgotten `ttl` after its id was last seen
            return journey.last_ts + self.rules.ttl
        return self.machine.next_deadline(journey)

    def _schedule(self, clock: _PartitionClock, journey: Journey) -> None:
        deadline = self._next_deadline(journey)
        if deadline is None:
            return
        identity = journey.identity
        known = clock.scheduled.get(identity)
        if known is None or deadline < known:
            clock.scheduled[identity] = deadline
            heappush(clock.heap, (deadline, identity))

    def _fire_due(self, partition: int, clock: _PartitionClock, watermark: int, out: Outputs) -> None:
        """The deadlines before `watermark` (the partition's floor, `_floor`, as it is now), their
        outputs added to `out`.

        A journey looked at is rescheduled in place of its entry (one `heapreplace`, not a pop
        and a push): nothing else touches the heap meanwhile, and its next deadline is past the
        watermark (`advance` fired everything before it), so it waits for a later call. The
        entries come off in the same order (the least first): the heap's layout never decides it."""
        heap, scheduled = clock.heap, clock.scheduled
        machine, ttl = self.machine, self.rules.ttl
        while heap:
            deadline, identity = heap[0]
            if deadline >= watermark:
                break
            known = scheduled.get(identity)
            if known is None or known != deadline:
                heappop(heap)
                continue
            del scheduled[identity]
            journey = self.load(identity)
            if journey is None:
                heappop(heap)
                continue
            if journey.linked_to is not None:
                if journey.last_ts + ttl < watermark:
                    heappop(heap)
                    self._delete(identity)  # the link expired: the id is anonymous again
                else:
                    self._reschedule_top(clock, journey, identity)
                continue
            fired = machine.advance(journey, watermark)
            if fired:
                out += fired
                self._cache[identity] = journey  # `_put`
                self._dirty[identity] = None
            self._reschedule_top(clock, journey, identity)

    def _reschedule_top(self, clock: _PartitionClock, journey: Journey, identity: str) -> None:
        """`_schedule` for the journey whose entry is the heap's top (and no longer scheduled):
        its next deadline replaces the entry, or the entry goes when it has none."""
        deadline = self._next_deadline(journey)
        if deadline is None:
            heappop(clock.heap)
            return
        clock.scheduled[identity] = deadline
        heapreplace(clock.heap, (deadline, identity))
