"""Folding an anonymous journey into its user's at the moment they are linked.

The rules, each chosen so that the merged journey says what one identity would have said:

- both journeys first fire their own deadlines up to the link's time (what happened before the
  link happened to them apart);
- first touch, first landing page and first channel come from the journey touched first; page
  views and sessions add up; the micro path is the earlier journey's followed by the later's;
  remembered event ids are united, so an event delivered again after the merge is still a
  duplicate;
- two open sessions become one: the one that started first keeps its id, landing page and
  channel, and takes the other's counts;
- per funnel, when both hold an attempt, the merged journey continues the more advanced one
  (then the one that started first, then the anonymous one); the other ends with a drop-off of
  reason `merged`, so entered = completed + dropped + open still holds in the counters;
- sessions and attempts of the anonymous journey are renumbered after the user's, so the ids
  of outputs still to come never repeat one the user's journey already emitted.
"""

from __future__ import annotations

from streams.core.input.event import from_epoch_ms
from streams.core.journeys.journey import (
    MAX_PATH,
    MAX_REMEMBERED_IDS,
    Attempt,
    Journey,
    JourneyMachine,
    Outputs,
    funnel_of,
    tie_attempt_key,
    version_index,
)
from streams.core.records.outputs import FirstTouch
from streams.core.records.trusted import build

MAX_MERGED_IDS = 8


def _keeps_first(a: Attempt, b: Attempt) -> bool:
    """Whether attempt `a` wins over `b` (b being the anonymous journey's)."""
    return (a.reached, -a.start) > (b.reached, -b.start)


def merge_journeys(
    machine: JourneyMachine, person: Journey, anonymous: Journey, at: int
) -> tuple[Outputs, dict[str, int]]:
    """Merge `anonymous` into `person` in place at event time `at`.

    Returns the outputs (deadlines fired and `merged` drop-offs), and per attempt that ended as
    `merged` (the funnel's name, with `hold` its held values) the step index it had reached."""
    out = machine.advance(person, at)
    out += machine.advance(anonymous, at)
    ended: dict[str, int] = {}
    for key in sorted(set(person.attempts) & set(anonymous.attempts)):
        funnel = machine.config.funnels_by_name[funnel_of(key)]
        ours, theirs = person.attempts[key], anonymous.attempts[key]
        loser = anonymous if _keeps_first(ours, theirs) else person
        ended[key] = loser.attempts[key].reached
        machine.drop(loser, funnel, "merged", at, out, key=key)
    offset = person.sequence
    for attempt in anonymous.attempts.values():
        attempt.number += offset
    if anonymous.session is not None:
        anonymous.session.number += offset
    person.sequence += anonymous.sequence
    for key, attempt in anonymous.attempts.items():
        # both were settled under the current versions by `advance`: the index moves tables
        attempt.version = version_index(person, anonymous.versions[attempt.version])
        person.attempts[key] = attempt
    for tie, bits in anonymous.ties.items():
        if tie_attempt_key(tie) in anonymous.attempts:
            person.ties[tie] = bits

    # at equal times the anonymous journey's history is the one with the pages (a device's),
    # where the user's may hold only a backend's events
    anonymous_first = anonymous.first_touch is not None and (
        person.first_touch is None or anonymous.first_touch <= person.first_touch
    )
    if anonymous_first:
        person.first_touch = anonymous.first_touch
        person.first_landing = anonymous.first_landing
        person.first_channel = anonymous.first_channel
        person.path = (anonymous.path + person.path)[-MAX_PATH:]
    else:
        person.path = (person.path + anonymous.path)[-MAX_PATH:]
    person.page_views += anonymous.page_views
    person.sessions += anonymous.sessions
    _merge_sessions(person, anonymous)
    _merge_seen(person, anonymous)
    person.last_ts = max(person.last_ts, anonymous.last_ts)
    if person.anonymous_id is None:
        person.anonymous_id = anonymous.anonymous_id
    if anonymous.anonymous_id is not None:
        person.merged = [*person.merged, anonymous.anonymous_id][-MAX_MERGED_IDS:]
    person.changed()
    anonymous.changed()
    return out, ended


def _merge_sessions(person: Journey, anonymous: Journey) -> None:
    ours, theirs = person.session, anonymous.session
    if theirs is None:
        return
    if ours is None:
        person.session = theirs
        return
    # the one that started first; at equal starts the anonymous one (a device's session, with its
    # landing page and channel), unless only the user's has a landing page
    anonymous_first = theirs.start < ours.start or (
        theirs.start == ours.start and (theirs.landing is not None or ours.landing is None)
    )
    first, second = (theirs, ours) if anonymous_first else (ours, theirs)
    first.start = min(first.start, second.start)
    first.last = max(first.last, second.last)
    first.page_views += second.page_views
    first.events += second.events
    first.micros += second.micros
    first.goals = first.goals + second.goals
    for attempt in person.attempts.values():
        if attempt.session_id == second.id:
            attempt.session_id = first.id
    person.session = first
    person.sessions -= 1  # the two open sessions are one from now on


def _merge_seen(person: Journey, anonymous: Journey) -> None:
    pairs = sorted(
        {*zip(person.seen_at, person.seen, strict=True), *zip(anonymous.seen_at, anonymous.seen, strict=True)}
    )[-MAX_REMEMBERED_IDS:]
    person.seen = [fingerprint for _, fingerprint in pairs]
    person.seen_at = [at for at, _ in pairs]


def merged_first_touch(journey: Journey) -> FirstTouch | None:
    if journey.first_touch is None:
        return None
    # unvalidated (`build`): a datetime and two optional strings, its fields' types
    return build(
        FirstTouch,
        timestamp=from_epoch_ms(journey.first_touch),
        landing_page=journey.first_landing,
        channel=journey.first_channel,
    )
