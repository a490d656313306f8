"""Independent references for funnel semantics, written apart from the engine (no import of
streams.core.journeys.journey): what a person reaches, computed by brute force over their whole history.

Each function takes one person's step events in arrival order, as `(timestamp_ms, step)` pairs
(`step` is the 0-based index of the one step the event matches), a `window` in ms (None: no
limit) and `within`, the per-step limit from the step before (index 0 unused; None: no limit).

- `furthest_sequential`: ClickHouse's `windowFunnel(window, 'strict_once')` and PostHog's ordered
  funnel. The furthest k such that distinct events e_0..e_k exist with e_i of step i, timestamps
  non-decreasing (events of one millisecond may be taken in any order: both systems sort a
  millisecond's events by step), every e_i within `window` of e_0 and within `within[i]` of
  e_{i-1}, bounds inclusive. Found by trying every step-1 event as e_0 and, from each, every
  continuation (memoized on (event, step), exhaustive: greedy "earliest next step" is not
  optimal once `within` bounds the gap between two steps).
- `furthest_strict`: PostHog's strict funnel over the funnel's own events: from a step-1 event,
  each following step event must be the next step (or repeat the current one, step 1 excepted,
  which starts a chain of its own); anything else breaks the chain. Best over every start.
- `any_attempts`: the `any` order as the README defines it, attempt by attempt.
- `first_attempts`: `entry: first`, the engine's behaviour before best chains, attempt by attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

StepEvent = tuple[int, int]


def _fits(window: int | None, limit: int | None, start: int, previous: int, at: int) -> bool:
    return (window is None or at - start <= window) and (limit is None or at - previous <= limit)


def furthest_sequential(
    events: Sequence[StepEvent], steps: int, window: int | None, within: Sequence[int | None]
) -> int:
    """The furthest step index reached (-1: step 1 never happened)."""
    best = -1
    for first, (start, step) in enumerate(events):
        if step != 0:
            continue

        @cache
        def longest(index: int, level: int, start: int = start) -> int:
            at = events[index][0]
            if level == steps - 1:
                return level
            reach = level
            for other, (later, step) in enumerate(events):
                if (
                    other != index
                    and step == level + 1
                    and later >= at
                    and _fits(window, within[level + 1], start, at, later)
                ):
                    reach = max(reach, longest(other, level + 1))
            return reach

        best = max(best, longest(first, 0))
        if best == steps - 1:
            break
    return best


def _latest_starts(
    events: Sequence[StepEvent], window: int | None, within: Sequence[int | None]
) -> dict[int, int]:
    """For each event (by index) that ends a chain at its step: the latest start of such a chain.

    Events are taken by time and, within a millisecond, by step, so a chain may use any events
    of one millisecond in step order, as windowFunnel's sort does."""
    order = sorted(range(len(events)), key=lambda i: events[i])
    starts: dict[int, int] = {}
    for position, index in enumerate(order):
        at, step = events[index]
        if step == 0:
            starts[index] = at
            continue
        candidates = [
            starts[earlier]
            for earlier in order[:position]
            if earlier in starts
            and events[earlier][1] == step - 1
            and _fits(window, within[step], starts[earlier], events[earlier][0], at)
        ]
        if candidates:
            starts[index] = max(candidates)
    return starts


Report = tuple[str, int, int, str]
"""("micro", step, 1 if it completed the attempt else 0, "") or ("dropoff", step, at_ms, reason)."""


def best_attempts(
    events: Sequence[StepEvent], steps: int, window: int | None, within: Sequence[int | None]
) -> list[Report]:
    """`entry: best` attempt by attempt, from `_latest_starts` over the attempt's events so far.

    An attempt opens at a step-1 event; it reports a step when some chain of its events first
    reaches it; it completes at the last step; it drops off at the latest moment one of its
    chains could still extend (the best chain per step: latest start, then latest last step),
    when an event comes after that moment or the history ends."""
    reports: list[Report] = []
    members: list[int] = []
    reached = -1
    free = 0  # events from here on served no attempt yet

    def end_of(chosen: list[int]) -> tuple[int, str] | None:
        part = [events[i] for i in chosen]
        best: dict[int, tuple[int, int]] = {}  # step -> (start, last) of its best chain
        for index, start in _latest_starts(part, window, within).items():
            at, step = part[index]
            if step < steps - 1:
                best[step] = max(best.get(step, (start, at)), (start, at))
        latest: tuple[int, int, str] | None = None
        for step, (start, last) in best.items():
            limit = within[step + 1]
            ends = []
            if window is not None:
                ends.append((start + window, 0, "window_expired"))  # a tie is the window's
            if limit is not None:
                ends.append((last + limit, 1, "step_timeout"))
            if not ends:
                return None
            at, _, reason = min(ends)
            if latest is None or (at, step) > latest[:2]:
                latest = (at, step, reason)
        return None if latest is None else (latest[0], latest[2])

    for index, (at, step) in enumerate(events):
        if members:
            end = end_of(members)
            if end is not None and at > end[0]:
                reports.append(("dropoff", reached, end[0], end[1]))
                members, reached, free = [], -1, index
        if not members and step != 0:
            continue
        if not members:  # events of this millisecond that came before the opening one count too
            members = [i for i in range(free, index) if events[i][0] == at]
        members.append(index)
        part = [events[i] for i in members]
        level = max(part[i][1] for i in _latest_starts(part, window, within))
        for k in range(reached + 1, level + 1):
            reports.append(("micro", k, int(k == steps - 1), ""))
        reached = max(reached, level)
        if reached == steps - 1:
            members, reached, free = [], -1, index + 1
    if members and (end := end_of(members)) is not None:
        reports.append(("dropoff", reached, end[0], end[1]))
    return reports


def furthest_strict(
    events: Sequence[StepEvent], steps: int, window: int | None, within: Sequence[int | None]
) -> int:
    best = -1
    for first, (start, step) in enumerate(events):
        if step != 0:
            continue
        level, previous = 0, start
        for at, later in events[first + 1 :]:
            if later == level + 1 and _fits(window, within[later], start, previous, at):
                level, previous = later, at
                if level == steps - 1:
                    break
            elif not (later == level and level > 0):
                break
        best = max(best, level)
    return best


def any_attempts(events: Sequence[StepEvent], steps: int, window: int | None) -> list[tuple[int, bool]]:
    """Every step reported, in order, as (step, whether it completed the attempt): an attempt
    opens at a step event, reports each step the first time it comes, completes when all have
    come, and ends unfinished once an event comes later than `window` after it opened."""
    reported: list[tuple[int, bool]] = []
    opened: int | None = None
    done: set[int] = set()
    for at, step in events:
        if opened is not None and window is not None and at > opened + window:
            opened, done = None, set()
        if opened is None:
            opened = at
        if step not in done:
            done.add(step)
            reported.append((step, len(done) == steps))
            if len(done) == steps:
                opened, done = None, set()
    return reported


def first_attempts(
    events: Sequence[StepEvent], steps: int, window: int | None, within: Sequence[int | None]
) -> list[tuple[int, bool]]:
    """`entry: first`: an attempt opens at a step-1 event and ignores every other until the next
    step comes within `window` of its opening and `within` of its last step."""
    reported: list[tuple[int, bool]] = []
    opened: int | None = None
    level = previous = 0
    for at, step in events:
        if opened is not None and not _fits(window, within[level + 1], opened, previous, at):
            opened = None
        if opened is None:
            if step == 0:
                opened, level, previous = at, 0, at
                reported.append((0, False))
            continue
        if step == level + 1:
            level, previous = step, at
            reported.append((step, level == steps - 1))
            if level == steps - 1:
                opened = None
    return reported
