"""The journey state machine: (journey, event) -> (journey, outputs), deterministic, in event time.

A journey is one identity's history as far as funnels care: first touch, the open session,
one attempt per funnel, the microconversions since the last macroconversion and the
fingerprints of recent event ids. Deadlines (session timeout, funnel window, step `within`,
`stalled_after`) fire in chronological order whatever the jumps in time between calls, so
the outputs depend only on the events, never on when a timer happened to run.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from binascii import a2b_base64, b2a_base64
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final, Literal

import orjson

from streams.core.config.durations import format_duration_ms
from streams.core.config.matching import CompiledConfig, CompiledFunnel, CompiledGoal, CompiledMicro, Matcher
from streams.core.config.versions import Definition, continues, shared_steps
from streams.core.input.channel import Traffic, classify_traffic
from streams.core.input.event import Audience, Campaign, ClickEvent, Page, from_epoch_ms, url_path
from streams.core.input.fields import lookup, text_values
from streams.core.records.ids import output_id, short_hash
from streams.core.records.outputs import (
    Carried,
    DeadLetter,
    Dropoff,
    DropoffReason,
    FirstTouch,
    MacroConversion,
    MicroConversion,
    OutputEvent,
    SessionSummary,
    Stalled,
    build,
)
from streams.core.records.trusted import assemble, given

STATE_VERSION = 5
"""3: attempts keep their chains, journeys their same-millisecond ties and identity stitching's
stub, held items and merged ids (trailing fields: versions 1 and 2 load with their defaults, and
a reader of version 2 refuses a version 3 state rather than misread it). 4: each attempt names
the funnel version it was written under, as an index into its journey's table of versions
(`Journey.versions`); attempts of versions 1 to 3 load with no version (`Attempt.version` -1).
5: the same fields, smaller (`Journey.dumps`, `_expand`): times as milliseconds before `last_ts`, well-known
breakdown names as numbers, trailing empty fields left out."""
LOADABLE_VERSIONS = frozenset({1, 2, 3, 4, STATE_VERSION})
WRITABLE_VERSIONS = (4, STATE_VERSION)
"""What `Journey.dumps` can write: 4 while workers of a release that reads no further share the
changelog (`CONVERSIONS_JOURNEY_STATE_VERSION`, a rolling upgrade), else the current one."""
BREAKDOWN_NAMES = (
    "landing_page",
    "channel",
    "visitor_type",
    "context.platform",
    "campaign.source",
    "campaign.name",
    "campaign.medium",
    "properties.variant",
)
"""Breakdown names a version 5 state writes as their index here (the derived ones and the common
field paths); any other name as itself. Append-only would still need a new version: a reader
must know every index a writer may use."""
_BREAKDOWN_CODES: Final = {name: i for i, name in enumerate(BREAKDOWN_NAMES)}
# the fields sets of the outputs made with `assemble` (each call site's dict lists every field in
# the model's order; these are the ones it sets rather than leaves at their default)
_DROPOFF_SET: Final = given(Dropoff, "type")
_STALLED_SET: Final = given(Stalled, "type")
_MILESTONE_SET: Final = given(MicroConversion, "type")
_SECONDARY_SET: Final = given(
    MicroConversion,
    "type",
    "funnel",
    "step",
    "step_index",
    "final",
    "started_at",
    "previous_at",
    "funnel_version",
)
_MACRO_SET: Final = given(MacroConversion, "type")
_FIRST_TOUCH_SET: Final = given(FirstTouch)
_SESSION_SET: Final = given(SessionSummary, "type")
MAX_REMEMBERED_IDS = 256
MAX_PATH = 50
MAX_BREAKDOWN_VALUE = 100

_SESSION_DUE, _VERSION_DUE, _DROP_DUE, _STALL_DUE = 0, 1, 2, 4
Due = tuple[int, int, str, DropoffReason | None]
"""A deadline: (event time, kind, the attempt's key (empty for the session), a drop-off's reason).
Simultaneous deadlines fire in this order: the session, then drop-offs, then stalls, by key."""


def _stored(cls: type) -> list[str]:
    """A dataclass's stored fields, in order (a field with `compare=False` is a cache, not state)."""
    return [f.name for f in fields(cls) if f.compare]


@dataclass(slots=True, init=False)
class Session:
    number: int
    id: str
    start: int
    last: int
    landing: str | None
    channel: str
    campaign: list[str | None] | None
    page_views: int = 0
    events: int = 0
    micros: int = 0
    goals: list[str] = field(default_factory=list)
    returning: bool = False
    """Not the person's first session (`visitor_type: returning`), as known when it opened."""
    audience: dict[str, str] | None = None
    """Who the visitor is (`ClickEvent.audience`, its set fields), as the session's first event
    said: read once, when the session opens."""
    source: str | None = None
    medium: str | None = None
    term: str | None = None
    """The source, medium and search term the channel was derived from (`input.channel`)."""

    # Written out rather than generated by `dataclass` (here and in `Attempt` and `Journey`):
    # mypyc compiles a class's own `__init__`, where the generated one runs interpreted.
    def __init__(
        self,
        number: int,
        id: str,
        start: int,
        last: int,
        landing: str | None,
        channel: str,
        campaign: list[str | None] | None,
        page_views: int = 0,
        events: int = 0,
        micros: int = 0,
        goals: list[str] | None = None,
        returning: bool = False,
        audience: dict[str, str] | None = None,
        source: str | None = None,
        medium: str | None = None,
        term: str | None = None,
    ) -> None:
        self.number = number
        self.id = id
        self.start = start
        self.last = last
        self.landing = landing
        self.channel = channel
        self.campaign = campaign
        self.page_views = page_views
        self.events = events
        self.micros = micros
        self.goals = [] if goals is None else goals
        self.returning = returning
        self.audience = audience
        self.source = source
        self.medium = medium
        self.term = term

    def values_before(self, last_ts: int) -> list[Any]:
        """`values` as version 5 stores them: the start and last as milliseconds before `last_ts`."""
        values = self.values()
        values[_S_START] = last_ts - self.start
        values[_S_LAST] = last_ts - self.last
        return values

    def values(self) -> list[Any]:
        """The stored fields in order: the positional form journeys are stored in."""
        return [
            self.number,
            self.id,
            self.start,
            self.last,
            self.landing,
            self.channel,
            self.campaign,
            self.page_views,
            self.events,
            self.micros,
            self.goals,
            self.returning,
            self.audience,
            self.source,
            self.medium,
            self.term,
        ]


@dataclass(slots=True, init=False)
class Attempt:
    """One try at a funnel, from the event that opens it until it completes or drops off.

    Stored positionally (`values`): a new field goes last, with a default, so older states load.

    - `number`: the journey's sequence when it opened (output ids stay unique); `start`: the
      event time of the event that opened it; `last`: the event time of its latest progress.
    - `reached`: the furthest step reached; `done_mask`: a bit per step reported.
    - `session_id`, `breakdowns`: as read when it opened (the breakdowns of `attribution:` at that
      step); `stalled`: a stall was reported since the last progress.
    - `chains` (ordered funnels with `entry: best`): per step k below the last, the chain that
      reached k and started latest, as two integers, its start and its last step, each an offset
      from `start`; `None, None` where no chain is at k; trailing gaps cut (`chain_slots` reads
      it). Empty otherwise: `start`, `last` and `reached` are the one chain.

    Two attempts of the same funnel (and held value) can be merged step by step: at each step
    the chain that started later dominates the other (later start, later last step).
    """

    number: int
    start: int
    last: int
    reached: int
    done_mask: int
    session_id: str | None
    breakdowns: dict[str, str | None]
    stalled: bool = False
    chains: list[int | None] = field(default_factory=list)
    version: int = -1
    """The funnel version it was written under: an index into `Journey.versions` (-1: written
    before versions existed, STATE_VERSION 3 or earlier)."""

    def __init__(
        self,
        number: int,
        start: int,
        last: int,
        reached: int,
        done_mask: int,
        session_id: str | None,
        breakdowns: dict[str, str | None],
        stalled: bool = False,
        chains: list[int | None] | None = None,
        version: int = -1,
    ) -> None:
        self.number = number
        self.start = start
        self.last = last
        self.reached = reached
        self.done_mask = done_mask
        self.session_id = session_id
        self.breakdowns = breakdowns
        self.stalled = stalled
        self.chains = [] if chains is None else chains
        self.version = version

    def values(self) -> list[Any]:
        """The stored fields in order (`Session.values`)."""
        return [
            self.number,
            self.start,
            self.last,
            self.reached,
            self.done_mask,
            self.session_id,
            self.breakdowns,
            self.stalled,
            self.chains,
            self.version,
        ]


@dataclass(slots=True, init=False)
class Journey:
    user_id: str | None
    anonymous_id: str | None
    first_touch: int | None = None
    first_landing: str | None = None
    first_channel: str | None = None
    last_ts: int = 0
    sequence: int = 0
    """Numbers sessions and attempts, so ids stay unique when two start in the same millisecond."""
    sessions: int = 0
    page_views: int = 0
    session: Session | None = None
    attempts: dict[str, Attempt] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    """Fingerprints of the event ids applied within `late_tolerance` of the latest event..."""
    seen_at: list[int] = field(default_factory=list)
    """...and their event times (epoch seconds): older ones are refused as late anyway."""
    linked_to: str | None = None
    """Identity stitching: this anonymous id was linked to this user, whose journey holds its
    history now; this record is only the stub that forwards its events (`core.identity`)."""
    held: list[dict[str, Any]] = field(default_factory=list)
    """Items for this person waiting for the hold watermark (`core.identity`)."""
    merged: list[str] = field(default_factory=list)
    """The anonymous ids merged into this journey (the latest few)."""
    ties: dict[str, int] = field(default_factory=dict)
    """Per funnel version and attempt key (`tie_key`), the steps (bits; step 1 never needs it)
    matched by the events already applied at the journey's latest event time: a later event of
    the same millisecond is taken as if in step order (README "Funnel semantics"). Emptied when
    event time moves on. Bits are step indexes of one version: a tie written under another is
    never read (keys of states before this, without the version, are never read either)."""
    versions: list[str] = field(default_factory=list)
    """The funnel versions its attempts were written under (`config.versions`): each attempt
    holds an index into it, a few bytes instead of a version string per attempt."""
    due: Due | Literal[False] | None = field(default=False, compare=False, repr=False)
    """Not stored: the next deadline (`JourneyMachine._earliest`) as last computed, False when not
    known. Whatever changes the session or the attempts outside `JourneyMachine` calls `changed`."""
    attempts_due: Due | Literal[False] | None = field(default=False, compare=False, repr=False)
    """Not stored: the attempts' next deadline alone, False when not known. An event that no
    funnel can match changes only the session's deadline: this part stays."""
    settled: JourneyMachine | None = field(default=None, compare=False, repr=False)
    """Not stored: the machine that settled its attempts (`JourneyMachine._reconcile`): none of
    them is written under another definition than that machine's, until `changed`."""
    seen_floor: int = field(default=0, compare=False, repr=False)
    """Not stored: the least of `seen_at` when `seen_of` is that very list (`_remember`, which
    alone appends to it in place; whatever replaces the list leaves `seen_of` behind)."""
    seen_of: list[int] | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        user_id: str | None,
        anonymous_id: str | None,
        first_touch: int | None = None,
        first_landing: str | None = None,
        first_channel: str | None = None,
        last_ts: int = 0,
        sequence: int = 0,
        sessions: int = 0,
        page_views: int = 0,
        session: Session | None = None,
        attempts: dict[str, Attempt] | None = None,
        path: list[str] | None = None,
        seen: list[int] | None = None,
        seen_at: list[int] | None = None,
        linked_to: str | None = None,
        held: list[dict[str, Any]] | None = None,
        merged: list[str] | None = None,
        ties: dict[str, int] | None = None,
        versions: list[str] | None = None,
    ) -> None:
        self.user_id = user_id
        self.anonymous_id = anonymous_id
        self.first_touch = first_touch
        self.first_landing = first_landing
        self.first_channel = first_channel
        self.last_ts = last_ts
        self.sequence = sequence
        self.sessions = sessions
        self.page_views = page_views
        self.session = session
        self.attempts = {} if attempts is None else attempts
        self.path = [] if path is None else path
        self.seen = [] if seen is None else seen
        self.seen_at = [] if seen_at is None else seen_at
        self.linked_to = linked_to
        self.held = [] if held is None else held
        self.merged = [] if merged is None else merged
        self.ties = {} if ties is None else ties
        self.versions = [] if versions is None else versions
        self.due = False
        self.attempts_due = False
        self.settled = None
        self.seen_floor = 0
        self.seen_of = None

    def changed(self) -> None:
        """Forget the cached next deadline (the session, the attempts or `last_ts` changed) and
        that the attempts were settled."""
        self.due = False
        self.attempts_due = False
        self.settled = None

    @property
    def identity(self) -> str:
        return self.user_id if self.user_id is not None else self.anonymous_id  # type: ignore[return-value]

    def dumps(self) -> bytes:
        if _WRITING[0] != STATE_VERSION:
            return self._dumps_v4()
        # version 5 written directly (`_expand` says what it is against version 4's layout): no
        # version 4 lists built first and rewritten in place
        last_ts, session, first_touch = self.last_ts, self.session, self.first_touch
        codes = _BREAKDOWN_CODES
        attempts: dict[str, list[Any]] = {}
        for name, a in self.attempts.items():
            flat: list[Any] = []
            for label, value in a.breakdowns.items():
                flat.append(codes.get(label, label))
                flat.append(value)
            stored = a.values()
            stored[_A_START] = last_ts - a.start
            stored[_A_LAST] = last_ts - a.last
            stored[_A_BREAKDOWNS] = flat
            attempts[name] = stored
        values: list[Any] = [
            STATE_VERSION,
            self.user_id,
            self.anonymous_id,
            last_ts - first_touch if first_touch is not None else None,
            self.first_landing,
            self.first_channel,
            last_ts,
            self.sequence,
            self.sessions,
            self.page_views,
            session.values_before(last_ts) if session is not None else None,
            attempts,
            self.path,
            _packed_ids(self.seen),
            self._seen_ages(),
        ]
        # the trailing fields while empty are left out (they load with their defaults)
        linked_to, held, merged = self.linked_to, self.held, self.merged
        ties, versions = self.ties, self.versions
        if versions:
            values += [linked_to, held, merged, ties, versions]
        elif ties:
            values += [linked_to, held, merged, ties]
        elif merged:
            values += [linked_to, held, merged]
        elif held:
            values += [linked_to, held]
        elif linked_to is not None:
            values.append(linked_to)
        # orjson's result keeps the buffer it grew while encoding (about 8 KiB for a 1.5 KB
        # state); the table holds one per user, so it keeps an exact-size copy instead
        return bytes(memoryview(orjson.dumps(values)))

    def _seen_ages(self) -> list[int]:
        now_s = self.last_ts // 1000
        return [now_s - at for at in self.seen_at]

    def _dumps_v4(self) -> bytes:
        """Version 4 (`write_state_version`, a rolling upgrade): the stored fields in order
        (`_stored`), after the version."""
        session = self.session
        values = [
            4,
            self.user_id,
            self.anonymous_id,
            self.first_touch,
            self.first_landing,
            self.first_channel,
            self.last_ts,
            self.sequence,
            self.sessions,
            self.page_views,
            session.values() if session is not None else None,
            {name: a.values() for name, a in self.attempts.items()},
            self.path,
            _packed_ids(self.seen),
            self._seen_ages(),
            self.linked_to,
            self.held,
            self.merged,
            self.ties,
            self.versions,
        ]
        return bytes(memoryview(orjson.dumps(values)))

    @classmethod
    def loads(cls, raw: bytes) -> Journey:
        values = orjson.loads(raw)
        version = values[0]
        if version not in LOADABLE_VERSIONS:
            raise ValueError(f"unknown journey state version {version}")
        if version >= 5:
            _expand(values)
        del values[0]
        # the nested records and the packed ids are converted before the constructor sees them:
        # compiled (mypyc), a Journey checks its fields' types when it is built; each is called
        # with its arguments spelled out where it can be (a call with `*` takes the generic path)
        stored = values[_SESSION_AT]
        if stored is not None:
            values[_SESSION_AT] = _session(stored)
        values[_ATTEMPTS_AT] = {name: _attempt(a) for name, a in values[_ATTEMPTS_AT].items()}
        if version >= 2:
            packed = a2b_base64(values[_SEEN_AT])  # what `base64.b64decode` calls
            values[_SEEN_AT] = list(struct.unpack(f"<{len(packed) // 8}Q", packed))
        if len(values) < _V_LINKED - 1:
            journey = cls(*values)
        else:
            values += [None] * (len(_JOURNEY_FIELDS) - len(values))  # the trailing fields' defaults
            v = values
            journey = Journey(
                v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9],
                v[10], v[11], v[12], v[13], v[14], v[15], v[16], v[17], v[18],
            )  # fmt: skip
        if version >= 2:
            now_s = journey.last_ts // 1000
            journey.seen_at = [now_s - age for age in journey.seen_at]
        return journey


_WRITING: Final = [STATE_VERSION]
"""The version `Journey.dumps` writes (`write_state_version`)."""


def write_state_version(version: int) -> None:
    """Make `Journey.dumps` write this version (one of `WRITABLE_VERSIONS`) from now on."""
    if version not in WRITABLE_VERSIONS:
        raise ValueError(f"journey state version {version} cannot be written (one of {WRITABLE_VERSIONS})")
    _WRITING[0] = version


def _session(v: list[Any]) -> Session:
    if len(v) != _SESSION_FIELDS:
        return Session(*v)
    return Session(
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]
    )  # fmt: skip


def _attempt(v: list[Any]) -> Attempt:
    if len(v) != _ATTEMPT_FIELDS:
        return Attempt(*v)
    return Attempt(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9])


def _packed_ids(seen: list[int]) -> str:
    """The remembered ids are most of a busy user's state: their fingerprints as packed bytes
    (11 characters each, not 20 digits), in base64 (`binascii`'s, which `base64.b64encode` calls)."""
    return b2a_base64(struct.pack(f"<{len(seen)}Q", *seen), newline=False).decode()


def _expand(values: list[Any]) -> None:
    """A version 5 layout as version 4's, in place: the times against `last_ts` back as epoch
    milliseconds (`_times_against_last`), the breakdowns, a flat list of name (or
    `BREAKDOWN_NAMES` index) and value, as a dict. The trailing fields version 5 leaves out while
    empty (from `linked_to` on) load with their defaults."""
    _times_against_last(values)
    for stored in values[_V_ATTEMPTS].values():
        flat = stored[_A_BREAKDOWNS]
        stored[_A_BREAKDOWNS] = {
            BREAKDOWN_NAMES[name] if type(name) is int else name: value
            for name, value in zip(flat[::2], flat[1::2], strict=True)
        }


def _times_against_last(values: list[Any]) -> None:
    """First touch, the session's and the attempts' start and last replaced by `last_ts` less
    them, in place: epoch milliseconds become milliseconds before `last_ts` (about 9 digits, not
    13), and back (`Journey.dumps` writes the same directly)."""
    last_ts: int = values[_V_LAST_TS]
    first_touch = values[_V_FIRST_TOUCH]
    if first_touch is not None:
        values[_V_FIRST_TOUCH] = last_ts - first_touch
    session = values[_V_SESSION]
    if session is not None:
        session[_S_START] = last_ts - session[_S_START]
        session[_S_LAST] = last_ts - session[_S_LAST]
    for stored in values[_V_ATTEMPTS].values():
        stored[_A_START] = last_ts - stored[_A_START]
        stored[_A_LAST] = last_ts - stored[_A_LAST]


_JOURNEY_FIELDS = _stored(Journey)
_SESSION_AT = _JOURNEY_FIELDS.index("session")
_ATTEMPTS_AT = _JOURNEY_FIELDS.index("attempts")
_SEEN_AT = _JOURNEY_FIELDS.index("seen")
# positions in a stored journey, counting its version at 0 (`Journey.dumps`), and in a stored
# session and attempt (`Session.values`, `Attempt.values`), for `_expand`
# (Final: compiled, read as constants rather than looked up in the module per call)
_V_FIRST_TOUCH: Final = _JOURNEY_FIELDS.index("first_touch") + 1
_V_LAST_TS: Final = _JOURNEY_FIELDS.index("last_ts") + 1
_V_SESSION: Final = _SESSION_AT + 1
_V_ATTEMPTS: Final = _ATTEMPTS_AT + 1
_V_LINKED: Final = _JOURNEY_FIELDS.index("linked_to") + 1
_SESSION_FIELDS: Final = len(_stored(Session))
_ATTEMPT_FIELDS: Final = len(_stored(Attempt))
_S_START: Final = _stored(Session).index("start")
_S_LAST: Final = _stored(Session).index("last")
_A_START: Final = _stored(Attempt).index("start")
_A_LAST: Final = _stored(Attempt).index("last")
_A_BREAKDOWNS: Final = _stored(Attempt).index("breakdowns")

Outputs = list[OutputEvent]

_MOMENTS: Final[dict[object, datetime]] = {}
"""By event time (keys `object`: `moment` boxes its int once, for both lookups)."""
MAX_MOMENTS: Final = 4_096
"""Event times whose datetime `moment` keeps (bounded: emptied when full)."""


def moment(ms: int) -> datetime:
    """`from_epoch_ms`, remembered: an attempt's start, a session's start and end recur in several
    outputs (each step reached, its drop-off or stall), and a datetime costs some thirty times a
    dictionary lookup to build. The same object for the same millisecond (datetimes are
    immutable), so the outputs are the same."""
    key: object = ms
    known = _MOMENTS.get(key)
    if known is None:
        if len(_MOMENTS) >= MAX_MOMENTS:
            _MOMENTS.clear()
        known = _MOMENTS[key] = from_epoch_ms(ms)
    return known


Chain = tuple[int, int]
"""A chain: the event time of its step-1 event and that of its latest step."""


def attempt_key(funnel: CompiledFunnel, held: tuple[str, ...] | None) -> str:
    """Where a journey keeps an attempt: the funnel's name, and with `hold`, the held values."""
    if held is None:
        return funnel.name
    return f"{funnel.name}#{orjson.dumps(list(held)).decode()}"  # names cannot contain '#'


def tie_key(version: str, key: str) -> str:
    """Where a journey keeps the same-millisecond ties of an attempt key under a funnel version."""
    return f"{version}:{key}"


def _keep_ties(journey: Journey, key: str, old: Definition, new: Definition) -> None:
    """What came at the journey's latest millisecond under `old` still counts under `new` for
    the steps the two versions share (a carried attempt's ties, or those of a key with none)."""
    tied = journey.ties.pop(tie_key(old.version, key), 0) & ((1 << shared_steps(old, new)) - 1)
    if tied:
        current = tie_key(new.version, key)
        journey.ties[current] = journey.ties.get(current, 0) | tied


def tie_attempt_key(tie: str) -> str:
    return tie.partition(":")[2]


def version_index(journey: Journey, version: str) -> int:
    """The index of a funnel version in the journey's table, added when new."""
    versions = journey.versions
    for i, known in enumerate(versions):
        if known == version:
            return i
    versions.append(version)
    return len(versions) - 1


def funnel_of(key: str) -> str:
    return key.split("#", 1)[0]


def held_values(funnel: CompiledFunnel, event: ClickEvent) -> tuple[str, ...] | None:
    """The event's values of the funnel's `hold` paths; None without `hold` or when one is missing
    (such an event cannot share a value with the other steps, so it counts for no attempt)."""
    values: list[str] = []
    for path in funnel.hold:
        value = lookup(event, path)
        if value is None:
            return None
        values.append(str(value)[:MAX_BREAKDOWN_VALUE])
    return tuple(values) if values else None


def chain_slots(attempt: Attempt, funnel: CompiledFunnel) -> list[Chain | None]:
    """The attempt's best chain per step 0..n-2 (None where no chain is at that step).

    An attempt stored before best chains existed (or kept with `entry: first`) has one chain, from
    its start to its last step: it continues as that chain."""
    size = funnel.last_index
    slots: list[Chain | None] = [None] * size
    flat = attempt.chains
    if not flat:
        if attempt.reached < size:
            slots[attempt.reached] = (attempt.start, attempt.last)
        return slots
    for k in range(min(size, len(flat) // 2)):
        start, last = flat[2 * k], flat[2 * k + 1]
        if start is not None and last is not None:
            slots[k] = (attempt.start + start, attempt.start + last)
    return slots


def store_chain_slots(attempt: Attempt, slots: list[Chain | None]) -> None:
    """Pack the chains as offsets from the attempt's start (short numbers), trailing gaps cut."""
    end = len(slots)
    while end and slots[end - 1] is None:
        end -= 1
    flat: list[int | None] = []
    start = attempt.start
    for k in range(end):
        slot = slots[k]
        if slot is None:
            flat.append(None)
            flat.append(None)
        else:
            flat.append(slot[0] - start)
            flat.append(slot[1] - start)
    attempt.chains = flat


def chain_end(funnel: CompiledFunnel, index: int, chain: Chain) -> tuple[int, DropoffReason] | None:
    """The last moment a chain at step `index` can still extend, and why it cannot after it."""
    start, last = chain
    window_end = start + funnel.window if funnel.window is not None else None
    within = funnel.steps[index + 1].within
    step_end = last + within if within is not None else None
    if step_end is None or (window_end is not None and window_end <= step_end):
        return None if window_end is None else (window_end, "window_expired")
    return step_end, "step_timeout"


def attempt_end(funnel: CompiledFunnel, attempt: Attempt) -> tuple[int, DropoffReason] | None:
    """When the attempt drops off if nothing happens: once no chain can extend (None: never)."""
    if funnel.order == "any":
        return None if funnel.window is None else (attempt.start + funnel.window, "window_expired")
    if not funnel.best_chain:
        return chain_end(funnel, attempt.reached, (attempt.start, attempt.last))
    flat = attempt.chains
    if not flat:  # stored before best chains, or one chain so far: from its start to its last step
        if attempt.reached >= funnel.last_index:
            return None
        return chain_end(funnel, attempt.reached, (attempt.start, attempt.last))
    # chain_end over the packed chains (chain_slots' offsets), without building the slots
    start, window, steps = attempt.start, funnel.window, funnel.steps
    latest_at = latest_index = -1
    latest_reason: DropoffReason = "window_expired"
    reason: DropoffReason
    for index in range(min(funnel.last_index, len(flat) // 2)):
        first, last = flat[2 * index], flat[2 * index + 1]
        if first is None or last is None:
            continue
        window_end = start + first + window if window is not None else None
        within = steps[index + 1].within
        step_end = start + last + within if within is not None else None
        if step_end is None or (window_end is not None and window_end <= step_end):
            if window_end is None:
                return None
            at, reason = window_end, "window_expired"
        else:
            at, reason = step_end, "step_timeout"
        if at >= latest_at:  # (at, index) >= (latest_at, latest_index): index only grows
            latest_at, latest_index, latest_reason = at, index, reason
    return None if latest_index < 0 else (latest_at, latest_reason)


def _fits(attempt: Attempt, funnel: CompiledFunnel) -> bool:
    """Whether an attempt's step indexes can be those of `funnel` (one of an unknown version)."""
    steps = len(funnel.steps)
    return (
        attempt.reached < steps
        and attempt.done_mask < (1 << steps) - 1
        and len(attempt.chains) <= 2 * funnel.last_index
    )


def _stale(attempt: Attempt, funnel: CompiledFunnel, versions: list[str]) -> bool:
    """Written under another version of `funnel` than the current one. An attempt written before
    versions existed counts as the current version's when its indexes fit (`_settle`)."""
    if attempt.version < 0:
        return not _fits(attempt, funnel)
    return attempt.version >= len(versions) or versions[attempt.version] != funnel.version


def _compact_versions(journey: Journey) -> None:
    """Keep only the versions its attempts refer to."""
    used = sorted({a.version for a in journey.attempts.values() if a.version >= 0})
    if len(used) == len(journey.versions):
        return
    remap = {old: new for new, old in enumerate(used)}
    journey.versions = [journey.versions[i] for i in used]
    for attempt in journey.attempts.values():
        if attempt.version >= 0:
            attempt.version = remap[attempt.version]


def _attempt_due(funnel: CompiledFunnel, key: str, attempt: Attempt) -> Due | None:
    """A settled attempt's next deadline: its drop-off or its stall, whichever comes first."""
    due: Due | None = None
    end = attempt_end(funnel, attempt)
    if end is not None:
        due = (end[0], _DROP_DUE, key, end[1])
    if funnel.stalled_after is not None and not attempt.stalled:
        stall_at = attempt.last + funnel.stalled_after
        # a stall at the same moment as the drop-off comes after it (_STALL_DUE > _DROP_DUE)
        if due is None or stall_at < due[0]:
            due = (stall_at, _STALL_DUE, key, None)
    return due


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an event name can match: the goals and micro actions, and per funnel the steps and
    exclusions, whose matchers name no event or name this one (in configuration order). A funnel
    none of whose steps or exclusions it can match is left out: the event changes nothing there.

    Each comes with what is left to test of its matcher once the name has passed (`_rest`): None
    when the name is all it asks (most steps), so such a step costs no call per event."""

    goals: tuple[tuple[CompiledGoal, Matcher | None], ...]
    micro: tuple[tuple[CompiledMicro, Matcher | None], ...]
    funnels: tuple[tuple[CompiledFunnel, _Steps, _Exclusions, list[int] | None], ...]
    """Per funnel, the steps and exclusions, and the step indexes when the name settles every
    step (each one's `rest` None): those are the steps matched, with nothing to test (never
    written to)."""
    page_view: bool
    """The name is one of `page_view_events`."""


_Steps = tuple[tuple[int, "Matcher | None"], ...]
"""A funnel's steps an event name can match: (index, what is left to test, or None)."""
_Exclusions = tuple["Matcher | None", ...]


_NO_GOALS: list[str] = []
"""The goals an event reached when its name can reach none (never written to)."""

MAX_PLANS = 4_096
"""Event names whose plan is kept (a stream of random names must not grow the cache)."""


def _may_match(matcher: Matcher, name: str, goals: frozenset[str] = frozenset()) -> bool:
    """Whether an event named `name` can match: by its event filter, and when it needs a goal,
    one of `goals` (those the same name can reach)."""
    return (matcher.events is None or name in matcher.events) and (
        matcher.goal is None or matcher.goal in goals
    )


def _rest(matcher: Matcher) -> Matcher | None:
    """What is left to test of a matcher for an event whose name passed its event filter (None:
    nothing, the name is enough)."""
    if matcher.goal is None and matcher.url is None and not matcher.fields:
        return None
    # the URL answers shared with the original: one cache per configured matcher, not one per
    # event name's plan (names are as many as producers send)
    return Matcher(None, matcher.url, matcher.goal, matcher.fields, matcher.known_urls)


class JourneyMachine:
    """Applies events and the passing of event time to journeys, for one compiled configuration."""

    def __init__(self, config: CompiledConfig, known: Iterable[Definition] = ()) -> None:
        self.config = config
        self._plans: dict[str, _Plan] = {}
        self._ties = {f.name: tie_key(f.version, f.name) for f in config.funnels}
        """Per funnel, the tie key of its attempt without `hold` (the one most events reach)."""
        self._session_scoped = any(f.scope == "session" for f in config.funnels)
        self._split: dict[str, tuple[str, ...]] = {}
        """Breakdown paths, split (the configuration's: a few)."""
        self._traffic: dict[tuple[str | None, ...], Traffic] = {}
        """A new session's traffic by what `classify_traffic` reads (bounded by `MAX_PLANS`)."""
        self.known: dict[str, Definition] = {}
        """Definitions of funnel versions state may have been written under, by version."""
        self.remember([f.definition for f in config.funnels if f.definition is not None])
        self.remember(known)

    def remember(self, definitions: Iterable[Definition]) -> None:
        """Funnel versions that earlier runs wrote state under (the store's registry)."""
        for definition in definitions:
            self.known[definition.version] = definition

    def _plan(self, name: str) -> _Plan:
        plan = self._plans.get(name)
        if plan is not None:
            return plan
        config = self.config
        goals = tuple((g, _rest(g.matcher)) for g in config.goals if _may_match(g.matcher, name))
        reach = frozenset(g.name for g, _ in goals)
        funnels = []
        for funnel in config.funnels:
            steps = tuple(
                (i, _rest(step.matcher))
                for i, step in enumerate(funnel.steps)
                if _may_match(step.matcher, name, reach)
            )
            exclusions = tuple(_rest(m) for m in funnel.exclusions if _may_match(m, name, reach))
            plain = [i for i, rest in steps] if all(rest is None for _, rest in steps) else None
            if steps or exclusions:
                funnels.append((funnel, steps, exclusions, plain))
        micro = tuple((m, _rest(m.matcher)) for m in config.micro if _may_match(m.matcher, name, reach))
        plan = _Plan(goals, micro, tuple(funnels), name in config.page_view_events)
        if len(self._plans) < MAX_PLANS:
            self._plans[name] = plan
        return plan

    # ---- time -------------------------------------------------------------------------

    def next_deadline(self, journey: Journey) -> int | None:
        """The earliest event time at which `advance` would change this journey."""
        due = journey.due
        if due is False:
            due = journey.due = self._next_due(journey)
        return None if due is None else due[0]

    def advance(self, journey: Journey, now: int) -> Outputs:
        """Fire every deadline strictly before `now`, earliest first.

        The next deadline is computed once per change of the journey (`Journey.due`), not once
        per call: most calls find nothing due and change nothing. The attempts are settled
        (`_reconcile`) once per machine, not once per call (`Journey.settled`)."""
        out: Outputs = []
        if journey.ties and journey.settled is not self:
            self._retie(journey)
        attempts = journey.attempts
        if attempts:
            if journey.settled is not self:
                if self._reconcile(journey, out):
                    journey.due = journey.attempts_due = False
                journey.settled = self
            elif len(journey.versions) > len(attempts):
                _compact_versions(journey)
        else:
            if journey.versions:
                journey.versions = []
            journey.settled = self  # no attempt to settle: those opened next are this machine's
        while True:
            due = journey.due
            if due is False:
                due = journey.due = self._next_due(journey)
            if due is None or due[0] >= now:
                return out
            journey.due = False  # whatever fires changes the journey
            at, kind, key, reason = due
            if kind == _SESSION_DUE:
                self._close_session(journey, at, out)
                continue
            if kind == _VERSION_DUE:  # not reached: `_reconcile` ran above
                continue
            funnel = self.config.funnels_by_name[funnel_of(key)]
            if kind == _DROP_DUE:
                assert reason is not None
                self.drop(journey, funnel, reason, at, out, key)
            else:
                self._stall(journey, funnel, attempts[key], at, out)

    def _next_due(self, journey: Journey) -> Due | None:
        """`_earliest`, with the attempts' part kept (`Journey.attempts_due`) once they are
        settled: an event no funnel can match recomputes only the session's deadline."""
        if journey.settled is not self:
            return self._earliest(journey)
        due = journey.attempts_due
        if due is False:
            due = journey.attempts_due = self._attempts_earliest(journey)
        session = journey.session
        if session is None:
            return due
        closing_at = session.last + self.config.session_timeout
        # the session goes first at the same moment (_SESSION_DUE is the least kind): the
        # tuples need comparing only when it does
        if due is None or closing_at <= due[0]:
            return (closing_at, _SESSION_DUE, "", None)
        return due

    def _attempts_earliest(self, journey: Journey) -> Due | None:
        """The settled attempts' next deadline (`_earliest` without the session's)."""
        earliest: Due | None = None
        funnels = self.config.funnels_by_name
        for key, attempt in journey.attempts.items():
            due = _attempt_due(funnels.get(key) or funnels[funnel_of(key)], key, attempt)
            if due is not None and (
                earliest is None or due[0] < earliest[0] or (due[0] == earliest[0] and due < earliest)
            ):
                earliest = due
        return earliest

    def _earliest(self, journey: Journey) -> Due | None:
        """The journey's next deadline computed afresh, as plain values (no closures to build and
        discard): the reference `_next_due` keeps parts of."""
        earliest: Due | None = None
        session = journey.session
        if session is not None:
            earliest = (session.last + self.config.session_timeout, _SESSION_DUE, "", None)
        funnels = self.config.funnels_by_name
        versions = journey.versions
        for key, attempt in journey.attempts.items():
            funnel = funnels.get(key) or funnels.get(funnel_of(key))
            if funnel is None or _stale(attempt, funnel, versions):
                # written under another definition: `advance` settles it first, at the journey's time
                due: Due | None = (journey.last_ts, _VERSION_DUE, key, None)
            else:
                due = _attempt_due(funnel, key, attempt)
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest

    # ---- definition versions ----------------------------------------------------------
    #
    # docs/howto/changing-funnels.md is the specification. An attempt written under another
    # version of its funnel than the current one (or under a funnel gone from the configuration)
    # is settled before anything else happens to its journey, at the journey's latest event time
    # (so the outcome depends on the events alone, never on when the restart happened): it is
    # carried over when `versions.continues` says the change cannot alter its course, else it
    # ends with a `definition_changed` drop-off in its own version's terms.

    def _reconcile(self, journey: Journey, out: Outputs) -> bool:
        """Settle the attempts written under other versions; whether there were any."""
        funnels = self.config.funnels_by_name
        versions = journey.versions
        stale: list[str] = []
        for key, attempt in journey.attempts.items():
            funnel = funnels.get(key) or funnels.get(funnel_of(key))
            if funnel is None or attempt.version < 0 or _stale(attempt, funnel, versions):
                stale.append(key)
        if stale:
            for key in stale:
                self._settle(journey, key, out)
        if len(versions) > len(journey.attempts) or stale:
            _compact_versions(journey)
        return bool(stale)

    def _retie(self, journey: Journey) -> None:
        """The same-millisecond ties of a key with no attempt, written under another version of
        its funnel (the definition changed within their millisecond): kept for the steps the two
        versions share when nothing else of the funnel changed (exclusions, order, window...: what
        `continues` asks of a carried attempt), as `_carry` keeps an attempt's; else dropped, as
        when the old version is unknown."""
        attempts = journey.attempts
        for tie in list(journey.ties):
            key = tie_attempt_key(tie)
            if key in attempts:
                continue  # settled with its attempt (`_settle`)
            funnel = self.config.funnels_by_name.get(funnel_of(key))
            if funnel is not None and tie == tie_key(funnel.version, key):
                continue
            old = self.known.get(tie.partition(":")[0])
            new = funnel.definition if funnel is not None else None
            if old is not None and new is not None and old.rest == new.rest:
                _keep_ties(journey, key, old, new)
            else:
                del journey.ties[tie]

    def _settle(self, journey: Journey, key: str, out: Outputs) -> None:
        attempt = journey.attempts[key]
        funnel = self.config.funnels_by_name.get(funnel_of(key))
        versions = journey.versions
        written = versions[attempt.version] if 0 <= attempt.version < len(versions) else None
        old = self.known.get(written) if written is not None else None
        if (
            written is None
            and funnel is not None
            and funnel.definition is not None
            and _fits(attempt, funnel)
        ):
            # written before versions existed: taken as written under the current definition
            attempt.version = version_index(journey, funnel.version)
            return
        new = funnel.definition if funnel is not None else None
        if old is not None and new is not None and continues(old, new, attempt.reached, attempt.done_mask):
            self._carry(journey, funnel, key, attempt, old, new, out)  # type: ignore[arg-type]
            return
        self._end_changed(journey, funnel_of(key), key, attempt, old, written, out)

    def _carry(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        key: str,
        attempt: Attempt,
        old: Definition,
        new: Definition,
        out: Outputs,
    ) -> None:
        at = journey.last_ts
        attempt.version = version_index(journey, funnel.version)
        _keep_ties(journey, key, old, new)
        out.append(
            build(
                Carried,
                id=output_id("carried", journey.identity, funnel.name, attempt.number, funnel.version),
                previous_version=old.version,
                previous_step=old.step_names[attempt.reached],
                previous_step_index=attempt.reached,
                reached=[k for k in range(len(funnel.steps)) if attempt.done_mask >> k & 1],
                **self._attempt_fields(journey, funnel, attempt, at),
            )
        )

    @staticmethod
    def _end_changed(
        journey: Journey,
        name: str,
        key: str,
        attempt: Attempt,
        old: Definition | None,
        written: str | None,
        out: Outputs,
    ) -> None:
        """The `definition_changed` drop-off, in the terms of the version the attempt was written
        under (a step name of the form #k when that definition is not known)."""
        del journey.attempts[key]
        if written is not None:
            journey.ties.pop(tie_key(written, key), None)
        k = attempt.reached
        step = old.step_names[k] if old is not None and k < len(old.step_names) else f"#{k}"
        out.append(
            build(
                Dropoff,
                id=output_id("dropoff", journey.identity, name, attempt.number),
                reason="definition_changed",
                time_in_funnel_ms=attempt.last - attempt.start,
                user_id=journey.user_id,
                anonymous_id=journey.anonymous_id,
                session_id=attempt.session_id,
                timestamp=moment(journey.last_ts),
                funnel=name,
                step=step,
                step_index=k,
                started_at=moment(attempt.start),
                breakdowns=attempt.breakdowns,
                funnel_version=written,
            )
        )

    # ---- events -----------------------------------------------------------------------

    def apply(self, journey: Journey | None, event: ClickEvent) -> tuple[Journey, Outputs]:
        # the model's fields as the dict they are kept in: compiled, each is then a dict lookup
        # rather than a generic attribute lookup (about a quarter of its instructions)
        read = event.__dict__
        if journey is None:
            journey = Journey(read["user_id"], read["anonymous_id"])
        fingerprint = short_hash(read["event_id"])
        if fingerprint in journey.seen:
            return journey, []
        given_ts = read.get("ts_ms")  # set by validation (`fields.settled`)
        ts: int = given_ts if given_ts is not None else event.ts_ms
        last_ts = journey.last_ts
        if last_ts - ts > self.config.late_tolerance:
            return journey, [self._late(journey, event)]
        self._remember(journey, fingerprint, ts)

        if ts > last_ts:
            now = ts
            if journey.ties:
                journey.ties = {}
        else:
            now = last_ts
        out = self.advance(journey, now)
        journey.due = False  # the event changes the session at least
        name: str = read["event"]
        plan = self._plans.get(name) or self._plan(name)
        session = self._session_for(journey, read, ts, now, out)
        if plan.page_view:
            session.page_views += 1
            journey.page_views += 1
        if session.landing is None:
            page = read["page"]
            if page is not None:
                session.landing = url_path(page.url)
        session.events += 1
        session.last = now
        journey.last_ts = now

        if not plan.goals and not plan.micro:
            for funnel, steps, exclusions, plain in plan.funnels:
                self._step_funnel(journey, funnel, event, now, _NO_GOALS, out, steps, exclusions, plain)
            return journey, out
        goals_hit = [g for g, rest in plan.goals if rest is None or rest.matches(event)]
        goal_names = [g.name for g in goals_hit]
        micros = [m for m, rest in plan.micro if rest is None or rest.matches(event, goal_names)]
        dimensions = self._breakdowns(self.config.breakdowns, event, session) if micros or goals_hit else {}
        for micro in micros:
            self._record_micro(journey, session, micro.name)
            out.append(self._micro(journey, event, session, micro.name, dimensions))
        for funnel, steps, exclusions, plain in plan.funnels:
            self._step_funnel(journey, funnel, event, now, goal_names, out, steps, exclusions, plain)
        for goal in goals_hit:
            out.append(self._macro(journey, event, session, goal.name, goal.value_path, dimensions))
            session.goals.append(goal.name)
            journey.path = []
        return journey, out

    def _remember(self, journey: Journey, fingerprint: int, ts_ms: int) -> None:
        """Keep the ids a duplicate could still arrive for: one older than the tolerance is late."""
        seen_at = journey.seen_at
        at = ts_ms // 1000
        journey.seen.append(fingerprint)
        seen_at.append(at)
        horizon_s = (max(journey.last_ts, ts_ms) - self.config.late_tolerance) // 1000 - 1
        if journey.seen_of is seen_at:  # its least time known: no scan of the list
            journey.seen_floor = min(journey.seen_floor, at)
        else:
            journey.seen_floor = min(seen_at)
            journey.seen_of = seen_at
        if len(seen_at) <= MAX_REMEMBERED_IDS and journey.seen_floor >= horizon_s:
            return  # nothing to forget (most events)
        keep = [i for i, at in enumerate(journey.seen_at) if at >= horizon_s][-MAX_REMEMBERED_IDS:]
        if len(keep) < len(journey.seen):
            journey.seen = [journey.seen[i] for i in keep]
            journey.seen_at = [journey.seen_at[i] for i in keep]

    def _session_for(
        self, journey: Journey, read: dict[str, Any], ts: int, now: int, out: Outputs
    ) -> Session:
        """The open session, or a new one on a new session id or campaign.

        `read`: the event's fields (`apply`). An event older than the journey's latest (late, but
        within the tolerance) joins the open session whatever it carries: reopening the past
        would depend on arrival order.
        """
        current = journey.session
        given: Campaign | None = read["campaign"]
        event_session: str | None = read["session_id"]
        campaign: list[str | None] | None = None
        named: dict[str, Any] | None = None
        if given is not None:  # its fields, not `Campaign.key`: a method the interpreter runs
            named = given.__dict__
            campaign = [named["source"], named["medium"], named["name"]]
        if current is not None:
            same_id = event_session is None or event_session == current.id
            same_campaign = campaign is None or campaign == current.campaign
            if (same_id and same_campaign) or ts < journey.last_ts:
                return current
            self._close_session(journey, now, out)
        page: Page | None = read["page"]
        page_url: str | None = None
        referrer: str | None = None
        if page is not None:  # its fields from its dict, as the event's (`apply`)
            page_fields = page.__dict__
            page_url, referrer = page_fields["url"], page_fields["referrer"]
        if named is not None:
            seen: tuple[str | None, ...] = (referrer, page_url, named["source"], named["medium"])
            seen += (named["name"], named["term"])
        else:
            seen = (referrer, page_url)
        traffic = self._traffic.get(seen)
        if traffic is None:
            traffic = classify_traffic(given, referrer, page_url, self.config.unwanted_referrals)
            if len(self._traffic) >= MAX_PLANS:
                self._traffic.clear()
            self._traffic[seen] = traffic
        channel = traffic.channel
        landing = url_path(page_url)
        journey.sequence += 1
        session_id = event_session or "s-" + output_id(journey.identity, journey.sequence)[:16]
        session = Session(journey.sequence, session_id, now, now, landing, channel, campaign)
        audience: Audience | None = read["audience"]
        session.audience = text_values(audience.__dict__) if audience is not None else None  # `values`
        session.source, session.medium, session.term = traffic.source, traffic.medium, traffic.term
        journey.session = session
        journey.sessions += 1
        session.returning = journey.sessions > 1
        if journey.first_touch is None:
            journey.first_touch = now
            journey.first_landing = landing
            journey.first_channel = channel
        return session

    def _close_session(self, journey: Journey, at: int, out: Outputs) -> None:
        session = journey.session
        if session is None:
            return
        if self._session_scoped and journey.attempts:
            for key in [k for k, a in journey.attempts.items() if a.session_id == session.id]:
                funnel = self.config.funnels_by_name[funnel_of(key)]
                if funnel.scope == "session":
                    self.drop(journey, funnel, "session_ended", at, out, key)
        campaign = session.campaign
        ended = moment(session.last)
        out.append(
            assemble(
                SessionSummary,
                {
                    "id": output_id("session", journey.identity, session.number),
                    "type": "session",
                    "user_id": journey.user_id,
                    "anonymous_id": journey.anonymous_id,
                    "session_id": session.id,
                    "timestamp": ended,
                    "started_at": moment(session.start),
                    "ended_at": ended,
                    "duration_ms": session.last - session.start,
                    "landing_page": session.landing,
                    "channel": session.channel,
                    "campaign": (
                        {"source": campaign[0], "medium": campaign[1], "name": campaign[2]}
                        if campaign
                        else None
                    ),
                    "page_views": session.page_views,
                    "events": session.events,
                    "microconversions": session.micros,
                    "conversions": list(session.goals),
                    "visitor_type": "returning" if session.returning else "new",
                    "audience": session.audience,
                    "source": session.source,
                    "medium": session.medium,
                    "search_term": session.term,
                },
                _SESSION_SET,
            )
        )
        journey.session = None

    # ---- funnels ----------------------------------------------------------------------
    #
    # README "Funnel semantics" is the specification; the shape of an attempt is documented on
    # `Attempt`. In short, for an ordered funnel with `entry: best` (the default), every step-1
    # event anchors a new chain and a step-k event extends the chain that reached step k-1 (the
    # one that started latest: it dominates every other, having both the latest start and the
    # latest last step) when it lies within `window` of that chain's start and within the step's
    # `within` of its last step. The attempt reports a step the first time any of its chains
    # reaches it, completes at the last step, and drops off only once no chain can extend.

    def _step_funnel(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        event: ClickEvent,
        now: int,
        goal_names: list[str],
        out: Outputs,
        steps: _Steps,
        exclusions: _Exclusions,
        plain: list[int] | None = None,
    ) -> None:
        """`steps` and `exclusions`: those the event's name can match (`_plan`); `plain`: the
        steps' indexes when its name is all they test."""
        held = held_values(funnel, event) if funnel.hold else None
        if exclusions and any(m is None or m.matches(event, goal_names) for m in exclusions):
            # an exclusion ends the attempt of its held value; one without the value ends them all
            ended = [
                key
                for key in journey.attempts
                if funnel_of(key) == funnel.name and (held is None or key == attempt_key(funnel, held))
            ]
            for key in ended:
                self.drop(journey, funnel, "excluded", now, out, key)
            if ended:
                return
        if plain is not None:
            matched = plain
        else:
            matched = [i for i, rest in steps if rest is None or rest.matches(event, goal_names)]
        if not matched or (funnel.hold and held is None):
            return
        key = attempt_key(funnel, held) if held is not None else funnel.name
        earlier = 0
        if funnel.best_chain and funnel.order == "sequential":
            tie = tie_key(funnel.version, key) if held is not None else self._ties[key]
            earlier = journey.ties.get(tie, 0)
            mine = 0
            for i in matched:  # distinct steps: their bits, step 1's left out (never re-ordered)
                mine |= 1 << i
            mine &= ~1
            if mine & ~earlier:
                journey.ties[tie] = earlier | mine
        attempt = journey.attempts.get(key)
        fresh = attempt is None
        if attempt is None:
            first = matched[0] if funnel.order == "any" else 0
            if first not in matched:
                return
            journey.attempts_due = False  # the attempts change (`drop` says so itself)
            attempt = self._open(journey, funnel, key, event, now, out)
            if not funnel.best_chain:
                previous_at = attempt.last if first else None
                self._reach(journey, funnel, key, attempt, first, event, now, out, previous_at)
                return
        journey.attempts_due = False
        if funnel.best_chain:
            self._extend_chains(journey, funnel, key, attempt, matched, earlier, fresh, event, now, out)
        elif funnel.order == "any":
            todo = [i for i in matched if not attempt.done_mask >> i & 1]
            if todo:
                index, previous_at = todo[0], attempt.last if todo[0] else None
                self._reach(journey, funnel, key, attempt, index, event, now, out, previous_at)
        else:  # entry: first, one chain from the attempt's first step-1 event
            expected = attempt.reached + 1
            if expected in matched:
                self._reach(journey, funnel, key, attempt, expected, event, now, out, attempt.last)
            elif funnel.order == "strict" and any(i != attempt.reached for i in matched):
                self.drop(journey, funnel, "out_of_order", now, out, key)
                if 0 in matched:
                    self._step_funnel(journey, funnel, event, now, goal_names, out, steps, exclusions, plain)

    def _open(
        self, journey: Journey, funnel: CompiledFunnel, key: str, event: ClickEvent, now: int, out: Outputs
    ) -> Attempt:
        session = journey.session
        assert session is not None
        if funnel.hold:
            held = sorted(
                (k for k in journey.attempts if funnel_of(k) == funnel.name),
                key=lambda k: journey.attempts[k].number,
            )
            # more than one over the bound only after a merge of two journeys' attempts
            for oldest in held[: max(0, len(held) - funnel.max_held_attempts + 1)]:
                self.drop(journey, funnel, "evicted", now, out, oldest)
        journey.sequence += 1
        breakdowns = self._breakdowns(funnel.breakdowns, event, session)
        if funnel.attribution_step:
            breakdowns.update(dict.fromkeys(funnel.attributed))  # unknown until that step
        if not journey.attempts:
            journey.versions = []  # no attempt refers to the table any more
        attempt = Attempt(journey.sequence, now, now, 0, 0, session.id, breakdowns)
        attempt.version = version_index(journey, funnel.version)
        journey.attempts[key] = attempt
        return attempt

    def _extend_chains(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        key: str,
        attempt: Attempt,
        matched: list[int],
        earlier: int,
        fresh: bool,
        event: ClickEvent,
        now: int,
        out: Outputs,
    ) -> None:
        """One event against the best chains of an ordered funnel with `entry: best`.

        The event extends the chains as they were before it (`before`), so it never serves as
        two steps of one chain. `earlier` holds the steps matched by
        events of the same millisecond that arrived before: they count as if they came after
        this event's lower steps (ClickHouse and PostHog sort a millisecond's events by step).
        `strict` keeps only the chains this event extends, starts, or repeats the last step of.
        """
        size = funnel.last_index
        before: list[Chain | None] = [None] * size if fresh else chain_slots(attempt, funnel)
        strict = funnel.order == "strict"
        after: list[Chain | None] = [None] * size if strict else list(before)
        extended = 0  # a bit per step some chain reached with this event
        came_at: dict[int, int] = {}  # per step reached, when its chain had reached the step before
        window, steps = funnel.window, funnel.steps
        for k in matched if len(matched) == 1 else sorted(matched, reverse=True):
            if k == 0:
                chain = (now, now)
            else:
                previous = before[k - 1]
                # the event extends the chain when within `window` of its start and the step's
                # `within` of its last step (both inclusive, as windowFunnel's)
                within = steps[k].within
                if (
                    previous is None
                    or (window is not None and now > previous[0] + window)
                    or (within is not None and now > previous[1] + within)
                ):
                    if strict and k < size and before[k] is not None:
                        after[k] = before[k]  # a repeat of a chain's last step keeps the chain
                    continue
                chain = (previous[0], now)
                came_at[k] = previous[1]
            extended |= 1 << k
            if k < size:
                after[k] = chain
        if earlier:
            for k in range(1, size + 1):
                below = after[k - 1]
                if earlier >> k & 1 and extended >> (k - 1) & 1 and below is not None:
                    extended |= 1 << k
                    came_at[k] = now
                    if k < size:
                        after[k] = (below[0], now)
        top = extended.bit_length() - 1  # the furthest step reached, -1 for none
        if top >= 0:
            attempt.last = now
            attempt.stalled = False
        for k, kept in enumerate(after):  # a chain that can no longer extend is forgotten
            if kept is None:
                continue
            # chain_end's moment, inline (this runs for every chain of every matching event)
            within = steps[k + 1].within
            window_end = kept[0] + window if window is not None else None
            step_end = kept[1] + within if within is not None else None
            if step_end is None or (window_end is not None and window_end <= step_end):
                step_end = window_end
            if step_end is not None and step_end < now:
                after[k] = None
        store_chain_slots(attempt, after)
        for k in range(top + 1):
            if not attempt.done_mask >> k & 1:
                at = came_at.get(k)
                if at is None and k:  # reached by a chain this event did not extend
                    below = after[k - 1]
                    at = below[1] if below is not None else None
                self._reach(journey, funnel, key, attempt, k, event, now, out, at)
        if top < size and after.count(None) == size:
            self.drop(journey, funnel, "out_of_order", now, out, key)  # strict: every chain broken

    def _reach(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        key: str,
        attempt: Attempt,
        index: int,
        event: ClickEvent,
        now: int,
        out: Outputs,
        previous_at: int | None,
    ) -> None:
        """`previous_at`: when the attempt reached the step before `index` (the step-to-step time
        of issue 18's projections), which the caller knows: with best chains, the last step of
        the chain at that step; otherwise the attempt's latest progress before this one. None for
        the first step or when unknown."""
        attempt.done_mask |= 1 << index
        attempt.reached = max(attempt.reached, index)
        attempt.last = now
        attempt.stalled = False
        complete = attempt.done_mask == (1 << len(funnel.steps)) - 1
        step = funnel.steps[index]
        session = journey.session
        assert session is not None
        if funnel.attribution_step and index == funnel.attribution_step:
            attempt.breakdowns = {
                **attempt.breakdowns,
                **self._breakdowns(funnel.attributed, event, session),
            }
        self._record_micro(journey, session, step.name)
        read = event.__dict__  # (`apply`)
        event_id = read["event_id"]
        out.append(
            assemble(
                MicroConversion,
                {
                    "id": output_id("micro", journey.identity, event_id, funnel.name, step.name),
                    "type": "micro",
                    "user_id": journey.user_id,
                    "anonymous_id": journey.anonymous_id,
                    "session_id": session.id,
                    "timestamp": read["timestamp"],
                    "kind": "milestone",
                    "name": step.name,
                    "funnel": funnel.name,
                    "step": step.name,
                    "step_index": index,
                    "final": complete,
                    "event": read["event"],
                    "event_id": event_id,
                    "started_at": moment(attempt.start),
                    "previous_at": moment(previous_at) if previous_at is not None else None,
                    "landing_page": session.landing,
                    "channel": session.channel,
                    "breakdowns": attempt.breakdowns,
                    "funnel_version": funnel.version,
                },
                _MILESTONE_SET,
            )
        )
        if complete:
            del journey.attempts[key]
            journey.ties.pop(tie_key(funnel.version, key), None)  # events that served it serve no other

    def drop(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        reason: DropoffReason,
        at: int,
        out: Outputs,
        key: str | None = None,
    ) -> None:
        """End the journey's attempt at `funnel` (the one under `key`, with `hold`) with a drop-off."""
        key = funnel.name if key is None else key
        attempt = journey.attempts.pop(key)
        journey.attempts_due = False
        journey.ties.pop(tie_key(funnel.version, key), None)
        # the fields spelled out (as `_attempt_fields` gives them), in the model's order (`assemble`)
        out.append(
            assemble(
                Dropoff,
                {
                    "id": output_id("dropoff", journey.identity, funnel.name, attempt.number),
                    "type": "dropoff",
                    "user_id": journey.user_id,
                    "anonymous_id": journey.anonymous_id,
                    "session_id": attempt.session_id,
                    "timestamp": moment(at),
                    "funnel": funnel.name,
                    "step": funnel.steps[attempt.reached].name,
                    "step_index": attempt.reached,
                    "breakdowns": attempt.breakdowns,
                    "funnel_version": funnel.version,
                    "reason": reason,
                    "started_at": moment(attempt.start),
                    "time_in_funnel_ms": attempt.last - attempt.start,
                },
                _DROPOFF_SET,
            )
        )

    def _stall(
        self, journey: Journey, funnel: CompiledFunnel, attempt: Attempt, at: int, out: Outputs
    ) -> None:
        attempt.stalled = True
        journey.attempts_due = False
        out.append(
            assemble(
                Stalled,
                {
                    "id": output_id("stalled", journey.identity, funnel.name, attempt.number, attempt.last),
                    "type": "stalled",
                    "user_id": journey.user_id,
                    "anonymous_id": journey.anonymous_id,
                    "session_id": attempt.session_id,
                    "timestamp": moment(at),
                    "funnel": funnel.name,
                    "step": funnel.steps[attempt.reached].name,
                    "step_index": attempt.reached,
                    "breakdowns": attempt.breakdowns,
                    "funnel_version": funnel.version,
                    "started_at": moment(attempt.start),
                    "idle_ms": at - attempt.last,
                },
                _STALLED_SET,
            )
        )

    @staticmethod
    def _attempt_fields(
        journey: Journey, funnel: CompiledFunnel, attempt: Attempt, at: int
    ) -> dict[str, Any]:
        """What a carried attempt's output says of it (`drop` and `_stall` spell the same out)."""
        return {
            "user_id": journey.user_id,
            "anonymous_id": journey.anonymous_id,
            "session_id": attempt.session_id,
            "timestamp": moment(at),
            "funnel": funnel.name,
            "step": funnel.steps[attempt.reached].name,
            "step_index": attempt.reached,
            "started_at": moment(attempt.start),
            "breakdowns": attempt.breakdowns,
            "funnel_version": funnel.version,
        }

    # ---- conversions ------------------------------------------------------------------

    @staticmethod
    def _record_micro(journey: Journey, session: Session, name: str) -> None:
        session.micros += 1
        path = journey.path
        path.append(name)
        if len(path) > MAX_PATH:  # (a slice deleted only then: a generic operation)
            del path[:-MAX_PATH]

    @staticmethod
    def _micro(
        journey: Journey,
        event: ClickEvent,
        session: Session,
        name: str,
        dimensions: dict[str, str | None],
    ) -> MicroConversion:
        return assemble(
            MicroConversion,
            {
                "id": output_id("micro", journey.identity, event.event_id, "", name),
                "type": "micro",
                "user_id": journey.user_id,
                "anonymous_id": journey.anonymous_id,
                "session_id": session.id,
                "timestamp": event.timestamp,
                "kind": "secondary",
                "name": name,
                "funnel": None,
                "step": None,
                "step_index": None,
                "final": False,
                "event": event.event,
                "event_id": event.event_id,
                "started_at": None,
                "previous_at": None,
                "landing_page": session.landing,
                "channel": session.channel,
                "breakdowns": dimensions,
                "funnel_version": None,
            },
            _SECONDARY_SET,
        )

    @staticmethod
    def _macro(
        journey: Journey,
        event: ClickEvent,
        session: Session,
        goal: str,
        value_path: tuple[str, ...] | None,
        dimensions: dict[str, str | None],
    ) -> MacroConversion:
        raw_value = lookup(event, value_path) if value_path else None
        value = (
            float(raw_value)
            if isinstance(raw_value, int | float) and not isinstance(raw_value, bool)
            else None
        )
        currency = event.properties.get("currency")
        first_touch = journey.first_touch if journey.first_touch is not None else event.ts_ms
        return assemble(
            MacroConversion,
            {
                "id": output_id("macro", journey.identity, event.event_id, goal),
                "type": "macro",
                "user_id": journey.user_id,
                "anonymous_id": journey.anonymous_id,
                "session_id": session.id,
                "timestamp": event.timestamp,
                "goal": goal,
                "value": value,
                "currency": currency if isinstance(currency, str) else None,
                "decision_time_ms": max(0, event.ts_ms - first_touch),
                "micro_path": list(journey.path),
                "landing_page": session.landing,
                "channel": session.channel,
                "first_touch": assemble(
                    FirstTouch,
                    {
                        "timestamp": moment(first_touch),
                        "landing_page": journey.first_landing,
                        "channel": journey.first_channel,
                    },
                    _FIRST_TOUCH_SET,
                ),
                "page_views": journey.page_views,
                "sessions": journey.sessions,
                "event": event.event,
                "event_id": event.event_id,
                "breakdowns": dimensions,
                "audience": session.audience,
            },
            _MACRO_SET,
        )

    def _breakdowns(
        self, paths: tuple[str, ...], event: ClickEvent, session: Session
    ) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        split = self._split
        read: dict[str, Any] | None = None
        for path in paths:
            if path == "landing_page":
                value: Any = session.landing
            elif path == "channel":
                value = session.channel
            elif path == "visitor_type":
                value = "returning" if session.returning else "new"
            elif path.startswith("audience.") and session.audience is not None:
                value = session.audience.get(path[9:])
            else:
                parts = split.get(path)
                if parts is None:
                    parts = split[path] = tuple(path.split("."))  # the configuration's paths
                if read is None:
                    read = event.__dict__
                # a field's value from the event's dict (`apply`), as `getattr` on the model gives
                # it without the generic attribute lookup; anything else from the model
                value = lookup(read, parts) if parts[0] in read else lookup(event, parts)
            values[path] = None if value is None else str(value)[:MAX_BREAKDOWN_VALUE]
        return values

    def _late(self, journey: Journey, event: ClickEvent) -> DeadLetter:
        """Its content depends on the event alone, so a redelivered copy repeats it exactly."""
        original = orjson.dumps(event.to_json_dict())
        return DeadLetter(
            id=output_id("late", journey.identity, event.event_id),
            user_id=journey.user_id,
            anonymous_id=journey.anonymous_id,
            session_id=event.session_id,
            timestamp=event.timestamp,
            reason="late_event",
            detail=(
                "older than its journey's latest event by more than the late tolerance "
                f"({format_duration_ms(self.config.late_tolerance)})"
            ),
            original_b64=base64.b64encode(original).decode(),
            original_size=len(original),
            original_sha256=hashlib.sha256(original).hexdigest(),
        )
