"""The engine's per-run cache: journeys decoded once, written once at `flush`, with the same
outputs and the same stored states as writing every journey after every event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.core.input.event import ClickEvent
from streams.core.journeys.engine import Engine
from streams.core.journeys.journey import Journey
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator

CONFIG = compile_config(parse_config(DEFAULT_FUNNELS.read_text()))


class Recording(MutableMapping[str, bytes]):
    """A store that remembers every write and delete, in order."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes: list[str] = []

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        self.data[key] = value
        self.writes.append(key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.writes.append(f"-{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class Handed(dict[int, Any]):
    """The engine's live anonymous journeys of held merges, counted; or, `forgetful`, none kept:
    each merge then decodes the journey it carries (as one held across a flush, or forwarded from
    another worker, does)."""

    def __init__(self, forgetful: bool) -> None:
        super().__init__()
        self.forgetful, self.kept = forgetful, 0

    def __setitem__(self, key: int, value: Any) -> None:
        if not self.forgetful:
            self.kept += 1
            super().__setitem__(key, value)


def replay(
    store: Recording,
    flush_every: int | None,
    handed: Handed | None = None,
    held_at_flush: list[dict[str, Any]] | None = None,
) -> list[bytes]:
    """The simulated shop through one engine, flushed every `flush_every` lines (None: at the end);
    with `held_at_flush`, flushed between each line's events and their observation instead (the
    held items of the line not released yet), the held bodies then written added to it."""
    engine = Engine(CONFIG, store, 2, expected_sources=["s"])
    out: list[bytes] = []
    latest = 0
    for n, line in enumerate(Simulator(seed=3, users=120, days=2).lines(), 1):
        for event in decode_message(line).events:
            latest = max(latest, event.ts_ms)
            if handed is not None and engine._handed is not handed:
                engine._handed = handed  # (the flush starts a new one)
            out += [o.to_json() for o in engine.process(event)]
        if held_at_flush is not None:
            written = [key for key in engine._dirty if engine._cache[key] is not None]
            engine.flush()
            for key in written:
                held_at_flush += Journey.loads(store[key]).held
        for partition in range(2):
            out += [o.to_json() for o in engine.observe(partition, "s", latest)]
        if flush_every is not None and n % flush_every == 0:
            engine.flush()
    engine.flush()
    for partition in range(2):  # time runs out: every session and attempt closes, links expire
        out += [o.to_json() for o in engine.observe(partition, "s", latest + 400 * 86_400_000)]
    engine.flush()
    return out


def test_flushing_once_a_run_gives_the_outputs_and_states_of_writing_after_every_line() -> None:
    every_line, once = Recording(), Recording()
    expected = replay(every_line, flush_every=1)
    assert replay(once, flush_every=None) == expected
    assert len(expected) > 1_000
    assert once.data == every_line.data
    # each journey is written once per flush, however many events changed it (three flushes here)
    assert max(Counter(once.writes).values()) <= 3 < max(Counter(every_line.writes).values())
    assert any(key.startswith("-") for key in once.writes), "expired links are deleted at the flush"


def test_a_merge_gives_the_same_outputs_and_states_with_the_live_or_the_decoded_anonymous_journey() -> None:
    live, decoded, kept = Recording(), Recording(), Handed(forgetful=False)
    expected = replay(decoded, flush_every=None, handed=Handed(forgetful=True))
    assert replay(live, flush_every=None, handed=kept) == expected
    assert live.data == decoded.data
    merges = sum(b'"action":"linked"' in line for line in expected)
    assert merges > 10 and kept.kept >= merges


def test_a_held_event_written_before_its_release_is_stored_whole_and_applies_the_same() -> None:
    """Without forwarding, a held event's JSON form (a forwarded event's or a merge's linking
    event's) is made only if its journey is written before the event is released
    (`Engine._event_dict`): flushed between the events and the observation that releases them, the
    held bodies carry each event's whole form, and the outputs and the final states are those of
    flushing once at the end."""
    held: list[dict[str, Any]] = []
    expected = replay(Recording(), flush_every=None)
    between = Recording()
    assert replay(between, flush_every=None, held_at_flush=held) == expected
    assert len(held) > 50
    assert sum("merge" in body for body in held) > 5
    for body in held:
        event = body["event"]
        assert event and ClickEvent.model_validate(event).to_json_dict() == event
    once = Recording()
    replay(once, flush_every=None)
    assert between.data == once.data


def test_the_store_is_untouched_until_the_flush_and_then_sees_each_change_once() -> None:
    store = Recording()
    engine = Engine(CONFIG, store, 1, expected_sources=["s"])
    lines = list(Simulator(seed=5, users=20, days=1).lines())[:200]
    for line in lines:
        for event in decode_message(line).events:
            engine.process(event)
    assert not store.writes and engine.cached > 0
    written = engine.flush()
    assert written == len(store.writes) == len(set(store.writes)) > 0
    assert engine.cached == 0
    assert all(engine.load(key) is not None for key in store.data)
