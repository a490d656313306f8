"""Identity stitching: which journey an event belongs to, and how the hand-over travels.

A person is one journey whatever ids their events carry. The hard part is that the two ids of
a link usually hash to different partitions, maybe different workers, and Kafka orders records
within a partition only. The design keeps every ordering decision on one partition:

- An event's *home* is its anonymous id when it has one (stitching on), else its user id. The
  home partition of an anonymous id holds that id's anonymous journey and, once linked, a small
  stub that remembers the user it was linked to. Only that partition ever decides anything about
  the anonymous id, in the order its events arrive there.
- An anonymous id that is not linked keeps its journey at home: its events apply at once.
- The first event that carries both ids (restricted to `identity.link_on` when configured) links
  them: the home partition fires the anonymous journey's deadlines up to the link's time, replaces
  the journey by a stub, and sends the journey, with the linking event, to the user's partition
  as one `Merge` item. Later events of that anonymous id are forwarded there as `Forwarded`
  items, after the merge, on the same partition-to-partition path (so in order).
- On the user's partition, everything that belongs to a person (forwarded items, merges, and the
  person's own user-only events) is *held* until the partition's hold watermark passes its event
  time, then applied in event-time order. The hold watermark is the slowest of every partition's
  progress through its own input, announced after the items it forwarded: once it passes t, no
  merge or forwarded event with a time before t can still be on its way. A server-side purchase
  with the user id alone therefore waits until the browser's sign-in before it has been merged,
  whichever of them Kafka delivers first. With the early release (`Engine(early_release=True)`,
  `core/journeys/notices.py`) a person's items go sooner: once the partition's own sources and
  the partitions that can still send that person something have passed them.
- Two user ids are never merged. An anonymous id belongs to the first user it was linked to
  (first link wins, as in Mixpanel's and PostHog's identity merge). A later event that pairs it
  with another user id goes to that other user's journey alone, and an `identity` output says it
  was refused, and why.

Nothing here reads a clock: links expire `ttl` after the anonymous id was last seen, in event
time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from streams.core.config.model import Identity
from streams.core.input.event import ClickEvent

FORWARDER_PREFIX = "journeys/"


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """The configuration's `identity` section, compiled."""

    stitch: bool = True
    link_on: frozenset[str] | None = None
    """Only these event names link ids; None: any event that carries both."""
    ttl: int = 90 * 86_400_000

    @classmethod
    def from_config(cls, section: Identity) -> IdentityRules:
        link_on = frozenset(section.link_on) if section.link_on is not None else None
        return cls(section.stitch, link_on, section.ttl)

    def home(self, event: ClickEvent) -> str:
        """The key whose partition decides for this event (see the module docstring)."""
        read = event.__dict__
        return home_key(self.stitch, read["user_id"], read["anonymous_id"])


def home_key(stitch: bool, user: str | None, anonymous: str | None) -> str:
    """`IdentityRules.home` from the event's ids (`Engine.process` has read them already)."""
    if stitch and anonymous is not None:
        return anonymous
    return user if user is not None else anonymous  # type: ignore[return-value]


Decision = Literal["local", "forward", "link", "refuse"]


def decide_ids(
    rules: IdentityRules, linked_to: str | None, user: str | None, anonymous: str | None, name: str
) -> tuple[Decision, str]:
    """What the home partition does with an event (its ids and name), given the user its anonymous
    id is linked to.

    Returns the decision and the person (journey key) the event belongs to:
    - `local`: the anonymous id's own journey, here;
    - `forward`: another person's journey (the linked user, or the event's own user);
    - `link`: link the anonymous id to the event's user (an event carrying both ids, named in
      `identity.link_on` when that is set), then the user's journey;
    - `refuse`: the anonymous id belongs to another user; the event goes to its own user alone.
    """
    if not rules.stitch or anonymous is None:
        return "local", user if user is not None else anonymous  # type: ignore[return-value]
    if linked_to is not None:
        if user is None or user == linked_to:
            return "forward", linked_to
        return "refuse", user
    if user is None:
        return "local", anonymous
    if rules.link_on is None or name in rules.link_on:
        return "link", user
    return "forward", user


def forwarder_source(partition: int) -> str:
    """The source name a journeys partition speaks under when it forwards to another."""
    return f"{FORWARDER_PREFIX}{partition}"


def is_forwarder(source: str) -> bool:
    return source.startswith(FORWARDER_PREFIX)


Source = tuple[str, int | None, int | None]
"""Where an event was read: topic, partition and offset (offline: the file and its line). A held
event carries it, so that a dead letter made when it is released says where it came from."""


@dataclass(slots=True, init=False)
class Forwarded:
    """An event for a person whose journey lives on another partition (never changed once built:
    not `frozen`, so that mypyc compiles the `__init__` written here, one per forwarded event and
    per release; the one `dataclass` generates runs interpreted)."""

    person: str
    event: dict[str, Any]
    ts: int
    body: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The held body this item was decoded from (the engine knows its event by it)."""
    source: Source | None = field(default=None, compare=False)

    def __init__(
        self,
        person: str,
        event: dict[str, Any],
        ts: int,
        body: dict[str, Any] | None = None,
        source: Source | None = None,
    ) -> None:
        self.person = person
        self.event = event
        self.ts = ts
        self.body = body
        self.source = source

    def encode(self) -> dict[str, Any]:
        body = {"person": self.person, "ts": self.ts, "event": self.event}
        if self.source is not None:
            body["src"] = list(self.source)
        return body


@dataclass(slots=True, init=False)
class Merge:
    """An anonymous journey handed over to its user at the linking event (never changed once
    built; its own `__init__` as `Forwarded`'s)."""

    person: str
    anonymous_id: str
    journey: bytes | None
    """The anonymous journey's stored form, or None when the id had no journey yet."""
    event: dict[str, Any]
    ts: int
    body: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    source: Source | None = field(default=None, compare=False)

    def __init__(
        self,
        person: str,
        anonymous_id: str,
        journey: bytes | None,
        event: dict[str, Any],
        ts: int,
        body: dict[str, Any] | None = None,
        source: Source | None = None,
    ) -> None:
        self.person = person
        self.anonymous_id = anonymous_id
        self.journey = journey
        self.event = event
        self.ts = ts
        self.body = body
        self.source = source

    def encode(self) -> dict[str, Any]:
        body = {
            "person": self.person,
            "ts": self.ts,
            "merge": self.anonymous_id,
            "journey": self.journey.decode() if self.journey is not None else None,
            "event": self.event,
        }
        if self.source is not None:
            body["src"] = list(self.source)
        return body


Item = Forwarded | Merge


def decode_item(body: Any) -> Item:
    """A forwarded item as `encode` wrote it."""
    if not isinstance(body, dict):
        raise ValueError("a forwarded item must be an object")
    person, ts, event = body.get("person"), body.get("ts"), body.get("event")
    if not isinstance(person, str) or not isinstance(event, dict) or not isinstance(ts, int):
        raise ValueError("a forwarded item needs a person, a time and an event")
    source = _source(body.get("src"))
    if "merge" not in body:
        return Forwarded(person, event, ts, body, source)
    anonymous_id = body["merge"]
    journey = body.get("journey")
    if not isinstance(anonymous_id, str) or not (journey is None or isinstance(journey, str)):
        raise ValueError("a merge needs the anonymous id and the journey's stored form")
    return Merge(
        person, anonymous_id, journey.encode() if journey is not None else None, event, ts, body, source
    )


def _source(value: Any) -> Source | None:
    """An item's `src` as `encode` wrote it; None when absent (items written before it) or odd."""
    if not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], str):
        return None
    partition, offset = value[1], value[2]
    if not all(v is None or isinstance(v, int) for v in (partition, offset)):
        return None
    return (value[0], partition, offset)


Step = Literal["merge", "event"]


def release_order(items: list[Item]) -> list[tuple[Step, Item]]:
    """What held items do, in the order they do it: in event time, so the order never depends
    on which path delivered what first. A merge is two steps: the journeys join, then its
    linking event applies among the others. At equal times: the merges first, then a device's
    events with a page (they carry its anonymous id), its other events, then the person's own (a
    backend's, with the user id alone), then by event id: a tracker that stamps a whole visit
    with one millisecond still gets its landing page and channel before its order."""
    steps: list[tuple[tuple[int, int, str], Step, Item]] = []
    for item in items:
        event_id = str(item.event.get("event_id", ""))
        if isinstance(item, Merge):
            steps.append(((item.ts, 0, event_id), "merge", item))
        device, page = item.event.get("anonymous_id") is not None, bool(item.event.get("page"))
        rank = (1 if page else 2) if device else 3
        steps.append(((item.ts, rank, event_id), "event", item))
    steps.sort(key=lambda step: step[0])
    return [(kind, item) for _, kind, item in steps]
