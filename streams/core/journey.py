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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from streams.core.channel import classify_channel
from streams.core.durations import format_duration_ms
from streams.core.events import ClickEvent, from_epoch_ms, url_path
from streams.core.ids import output_id, short_hash
from streams.core.matching import CompiledConfig, CompiledFunnel
from streams.core.outputs import (
    DeadLetter,
    Dropoff,
    DropoffReason,
    FirstTouch,
    MacroConversion,
    MicroConversion,
    OutputEvent,
    SessionSummary,
    Stalled,
)

STATE_VERSION = 2
MAX_REMEMBERED_IDS = 256
MAX_PATH = 50
MAX_BREAKDOWN_VALUE = 100


def _pack(record: Any) -> list[Any]:
    """A dataclass's values in field order: the compact positional form journeys are stored in."""
    return [getattr(record, f.name) for f in fields(record)]


@dataclass(slots=True)
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


@dataclass(slots=True)
class Attempt:
    """One try at a funnel: when it started, its progress, and the breakdowns it entered with."""

    number: int
    start: int
    last: int
    reached: int
    done_mask: int
    session_id: str | None
    breakdowns: dict[str, str | None]
    stalled: bool = False


@dataclass(slots=True)
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

    @property
    def identity(self) -> str:
        return self.user_id if self.user_id is not None else self.anonymous_id  # type: ignore[return-value]

    def dumps(self) -> bytes:
        values = _pack(self)
        values[_SESSION_AT] = _pack(self.session) if self.session else None
        values[_ATTEMPTS_AT] = {name: _pack(a) for name, a in self.attempts.items()}
        # the remembered ids are most of a busy user's state: fingerprints as packed bytes
        # (11 characters each, not 20 digits) and their times as ages in seconds
        values[_SEEN_AT] = base64.b64encode(struct.pack(f"<{len(self.seen)}Q", *self.seen)).decode()
        now_s = self.last_ts // 1000
        values[_SEEN_TIMES_AT] = [now_s - at for at in self.seen_at]
        # orjson's result keeps the buffer it grew while encoding (about 8 KiB for a 1.5 KB
        # state); the table holds one per user, so it keeps an exact-size copy instead
        return bytes(memoryview(orjson.dumps([STATE_VERSION, *values])))

    @classmethod
    def loads(cls, raw: bytes) -> Journey:
        version, *values = orjson.loads(raw)
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unknown journey state version {version}")
        journey = cls(*values)
        if version >= 2:
            packed = base64.b64decode(journey.seen)  # type: ignore[arg-type]
            journey.seen = list(struct.unpack(f"<{len(packed) // 8}Q", packed))
            now_s = journey.last_ts // 1000
            journey.seen_at = [now_s - age for age in journey.seen_at]
        if journey.session is not None:
            journey.session = Session(*journey.session)  # type: ignore[misc]
        journey.attempts = {name: Attempt(*a) for name, a in journey.attempts.items()}  # type: ignore[misc]
        return journey


_JOURNEY_FIELDS = [f.name for f in fields(Journey)]
_SESSION_AT = _JOURNEY_FIELDS.index("session")
_ATTEMPTS_AT = _JOURNEY_FIELDS.index("attempts")
_SEEN_AT = _JOURNEY_FIELDS.index("seen")
_SEEN_TIMES_AT = _JOURNEY_FIELDS.index("seen_at")

Outputs = list[OutputEvent]


@dataclass(frozen=True, slots=True)
class _Due:
    at: int
    order: int
    funnel: str
    action: Callable[[], None]


class JourneyMachine:
    """Applies events and the passing of event time to journeys, for one compiled configuration."""

    def __init__(self, config: CompiledConfig) -> None:
        self.config = config

    # ---- time -------------------------------------------------------------------------

    def next_deadline(self, journey: Journey) -> int | None:
        """The earliest event time at which `advance` would change this journey."""
        due = self._due(journey, [])
        return min((d.at for d in due), default=None)

    def advance(self, journey: Journey, now: int) -> Outputs:
        """Fire every deadline strictly before `now`, earliest first."""
        out: Outputs = []
        for name in [n for n in journey.attempts if n not in self.config.funnels_by_name]:
            del journey.attempts[name]  # the funnel left the configuration
        while True:
            due = [d for d in self._due(journey, out) if d.at < now]
            if not due:
                return out
            min(due, key=lambda d: (d.at, d.order, d.funnel)).action()

    def _due(self, journey: Journey, out: Outputs) -> list[_Due]:
        due: list[_Due] = []
        session = journey.session
        if session is not None:
            end = session.last + self.config.session_timeout
            due.append(_Due(end, 0, "", lambda: self._close_session(journey, end, out)))
        for name, attempt in journey.attempts.items():
            funnel = self.config.funnels_by_name[name]
            due.extend(self._attempt_deadlines(journey, funnel, attempt, out))
        return due

    def _attempt_deadlines(
        self, journey: Journey, funnel: CompiledFunnel, attempt: Attempt, out: Outputs
    ) -> list[_Due]:
        due: list[_Due] = []
        if funnel.window is not None:
            at = attempt.start + funnel.window
            due.append(
                _Due(
                    at,
                    2,
                    funnel.name,
                    lambda: self._drop(journey, funnel, "window_expired", at, out),
                )
            )
        if funnel.order != "any":
            within = funnel.steps[attempt.reached + 1].within
            if within is not None:
                at = attempt.last + within
                due.append(
                    _Due(
                        at,
                        3,
                        funnel.name,
                        lambda: self._drop(journey, funnel, "step_timeout", at, out),
                    )
                )
        if funnel.stalled_after is not None and not attempt.stalled:
            at = attempt.last + funnel.stalled_after
            due.append(_Due(at, 4, funnel.name, lambda: self._stall(journey, funnel, at, out)))
        return due

    # ---- events -----------------------------------------------------------------------

    def apply(self, journey: Journey | None, event: ClickEvent) -> tuple[Journey, Outputs]:
        if journey is None:
            journey = Journey(event.user_id, event.anonymous_id)
        fingerprint = short_hash(event.event_id)
        if fingerprint in journey.seen:
            return journey, []
        if journey.last_ts - event.ts_ms > self.config.late_tolerance:
            return journey, [self._late(journey, event)]
        self._remember(journey, fingerprint, event.ts_ms)

        now = max(event.ts_ms, journey.last_ts)
        out = self.advance(journey, now)
        session = self._session_for(journey, event, now, out)
        if event.event in self.config.page_view_events:
            session.page_views += 1
            journey.page_views += 1
        if session.landing is None and event.page is not None:
            session.landing = url_path(event.page.url)
        session.events += 1
        session.last = now
        journey.last_ts = now

        goals_hit = [g for g in self.config.goals if g.matcher.matches(event)]
        goal_names = [g.name for g in goals_hit]
        dimensions = self._breakdowns(self.config.breakdowns, event, session)
        for micro in self.config.micro:
            if micro.matcher.matches(event, goal_names):
                self._record_micro(journey, session, micro.name)
                out.append(self._micro(journey, event, session, micro.name, dimensions))
        for funnel in self.config.funnels:
            self._step_funnel(journey, funnel, event, now, goal_names, out)
        for goal in goals_hit:
            out.append(self._macro(journey, event, session, goal.name, goal.value_path, dimensions))
            session.goals.append(goal.name)
            journey.path = []
        return journey, out

    def _remember(self, journey: Journey, fingerprint: int, ts_ms: int) -> None:
        """Keep the ids a duplicate could still arrive for: one older than the tolerance is late."""
        journey.seen.append(fingerprint)
        journey.seen_at.append(ts_ms // 1000)
        horizon_s = (max(journey.last_ts, ts_ms) - self.config.late_tolerance) // 1000 - 1
        keep = [i for i, at in enumerate(journey.seen_at) if at >= horizon_s][-MAX_REMEMBERED_IDS:]
        if len(keep) < len(journey.seen):
            journey.seen = [journey.seen[i] for i in keep]
            journey.seen_at = [journey.seen_at[i] for i in keep]

    def _session_for(self, journey: Journey, event: ClickEvent, now: int, out: Outputs) -> Session:
        """The open session, or a new one on a new session id or campaign.

        An event older than the journey's latest (late, but within the tolerance) joins the open
        session whatever it carries: reopening the past would depend on arrival order.
        """
        current = journey.session
        campaign = list(event.campaign.key()) if event.campaign is not None else None
        if current is not None:
            same_id = event.session_id is None or event.session_id == current.id
            same_campaign = campaign is None or campaign == current.campaign
            if (same_id and same_campaign) or event.ts_ms < journey.last_ts:
                return current
            self._close_session(journey, now, out)
        page_url = event.page.url if event.page is not None else None
        referrer = event.page.referrer if event.page is not None else None
        channel = classify_channel(event.campaign, referrer, page_url)
        landing = url_path(page_url)
        journey.sequence += 1
        session_id = event.session_id or "s-" + output_id(journey.identity, journey.sequence)[:16]
        session = Session(journey.sequence, session_id, now, now, landing, channel, campaign)
        journey.session = session
        journey.sessions += 1
        if journey.first_touch is None:
            journey.first_touch = now
            journey.first_landing = landing
            journey.first_channel = channel
        return session

    def _close_session(self, journey: Journey, at: int, out: Outputs) -> None:
        session = journey.session
        if session is None:
            return
        for name in [n for n, a in journey.attempts.items() if a.session_id == session.id]:
            funnel = self.config.funnels_by_name[name]
            if funnel.scope == "session":
                self._drop(journey, funnel, "session_ended", at, out)
        campaign = session.campaign
        out.append(
            SessionSummary(
                id=output_id("session", journey.identity, session.number),
                user_id=journey.user_id,
                anonymous_id=journey.anonymous_id,
                session_id=session.id,
                timestamp=from_epoch_ms(session.last),
                started_at=from_epoch_ms(session.start),
                ended_at=from_epoch_ms(session.last),
                duration_ms=session.last - session.start,
                landing_page=session.landing,
                channel=session.channel,
                campaign=dict(zip(("source", "medium", "name"), campaign, strict=True)) if campaign else None,
                page_views=session.page_views,
                events=session.events,
                microconversions=session.micros,
                conversions=list(session.goals),
            )
        )
        journey.session = None

    # ---- funnels ----------------------------------------------------------------------

    def _step_funnel(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        event: ClickEvent,
        now: int,
        goal_names: list[str],
        out: Outputs,
    ) -> None:
        attempt = journey.attempts.get(funnel.name)
        if attempt is not None and any(m.matches(event, goal_names) for m in funnel.exclusions):
            self._drop(journey, funnel, "excluded", now, out)
            return
        matched = [i for i, s in enumerate(funnel.steps) if s.matcher.matches(event, goal_names)]
        if not matched:
            return
        session = journey.session
        assert session is not None
        if attempt is None:
            first = 0 if funnel.order != "any" else matched[0]
            if first not in matched:
                return
            journey.sequence += 1
            attempt = Attempt(
                journey.sequence,
                now,
                now,
                first,
                1 << first,
                session.id,
                self._breakdowns(funnel.breakdowns, event, session),
            )
            journey.attempts[funnel.name] = attempt
            self._reach(journey, funnel, attempt, first, event, now, out)
            return
        if funnel.order == "any":
            todo = [i for i in matched if not attempt.done_mask >> i & 1]
            if todo:
                self._reach(journey, funnel, attempt, todo[0], event, now, out)
            return
        expected = attempt.reached + 1
        if expected in matched:
            self._reach(journey, funnel, attempt, expected, event, now, out)
        elif funnel.order == "strict" and any(i != attempt.reached for i in matched):
            self._drop(journey, funnel, "out_of_order", now, out)
            if 0 in matched:
                self._step_funnel(journey, funnel, event, now, goal_names, out)

    def _reach(
        self,
        journey: Journey,
        funnel: CompiledFunnel,
        attempt: Attempt,
        index: int,
        event: ClickEvent,
        now: int,
        out: Outputs,
    ) -> None:
        attempt.done_mask |= 1 << index
        attempt.reached = max(attempt.reached, index) if funnel.order == "any" else index
        attempt.last = now
        attempt.stalled = False
        complete = attempt.done_mask == (1 << len(funnel.steps)) - 1
        step = funnel.steps[index]
        session = journey.session
        assert session is not None
        self._record_micro(journey, session, step.name)
        out.append(
            MicroConversion(
                id=output_id("micro", journey.identity, event.event_id, funnel.name, step.name),
                user_id=journey.user_id,
                anonymous_id=journey.anonymous_id,
                session_id=session.id,
                timestamp=event.timestamp,
                kind="milestone",
                name=step.name,
                funnel=funnel.name,
                step=step.name,
                step_index=index,
                final=complete,
                event=event.event,
                event_id=event.event_id,
                landing_page=session.landing,
                channel=session.channel,
                breakdowns=attempt.breakdowns,
            )
        )
        if complete:
            del journey.attempts[funnel.name]

    def _drop(
        self, journey: Journey, funnel: CompiledFunnel, reason: DropoffReason, at: int, out: Outputs
    ) -> None:
        attempt = journey.attempts.pop(funnel.name)
        out.append(
            Dropoff(
                id=output_id("dropoff", journey.identity, funnel.name, attempt.number),
                reason=reason,
                time_in_funnel_ms=attempt.last - attempt.start,
                **self._attempt_fields(journey, funnel, attempt, at),
            )
        )

    def _stall(self, journey: Journey, funnel: CompiledFunnel, at: int, out: Outputs) -> None:
        attempt = journey.attempts[funnel.name]
        attempt.stalled = True
        out.append(
            Stalled(
                id=output_id("stalled", journey.identity, funnel.name, attempt.number, attempt.last),
                idle_ms=at - attempt.last,
                **self._attempt_fields(journey, funnel, attempt, at),
            )
        )

    @staticmethod
    def _attempt_fields(
        journey: Journey, funnel: CompiledFunnel, attempt: Attempt, at: int
    ) -> dict[str, Any]:
        """What a drop-off and a stall say of the attempt they end or flag."""
        return {
            "user_id": journey.user_id,
            "anonymous_id": journey.anonymous_id,
            "session_id": attempt.session_id,
            "timestamp": from_epoch_ms(at),
            "funnel": funnel.name,
            "step": funnel.steps[attempt.reached].name,
            "step_index": attempt.reached,
            "started_at": from_epoch_ms(attempt.start),
            "breakdowns": attempt.breakdowns,
        }

    # ---- conversions ------------------------------------------------------------------

    @staticmethod
    def _record_micro(journey: Journey, session: Session, name: str) -> None:
        session.micros += 1
        journey.path.append(name)
        del journey.path[:-MAX_PATH]

    @staticmethod
    def _micro(
        journey: Journey,
        event: ClickEvent,
        session: Session,
        name: str,
        dimensions: dict[str, str | None],
    ) -> MicroConversion:
        return MicroConversion(
            id=output_id("micro", journey.identity, event.event_id, "", name),
            user_id=journey.user_id,
            anonymous_id=journey.anonymous_id,
            session_id=session.id,
            timestamp=event.timestamp,
            kind="secondary",
            name=name,
            event=event.event,
            event_id=event.event_id,
            landing_page=session.landing,
            channel=session.channel,
            breakdowns=dimensions,
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
        raw_value = event.lookup(value_path) if value_path else None
        value = (
            float(raw_value)
            if isinstance(raw_value, int | float) and not isinstance(raw_value, bool)
            else None
        )
        currency = event.properties.get("currency")
        first_touch = journey.first_touch if journey.first_touch is not None else event.ts_ms
        return MacroConversion(
            id=output_id("macro", journey.identity, event.event_id, goal),
            user_id=journey.user_id,
            anonymous_id=journey.anonymous_id,
            session_id=session.id,
            timestamp=event.timestamp,
            goal=goal,
            value=value,
            currency=currency if isinstance(currency, str) else None,
            decision_time_ms=max(0, event.ts_ms - first_touch),
            micro_path=list(journey.path),
            landing_page=session.landing,
            channel=session.channel,
            first_touch=FirstTouch(
                timestamp=from_epoch_ms(first_touch),
                landing_page=journey.first_landing,
                channel=journey.first_channel,
            ),
            page_views=journey.page_views,
            sessions=journey.sessions,
            event=event.event,
            event_id=event.event_id,
            breakdowns=dimensions,
        )

    @staticmethod
    def _breakdowns(paths: tuple[str, ...], event: ClickEvent, session: Session) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for path in paths:
            if path == "landing_page":
                value: Any = session.landing
            elif path == "channel":
                value = session.channel
            else:
                value = event.lookup(tuple(path.split(".")))
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
