"""Funnel configuration compiled into matchers that test an event without re-reading YAML."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from streams.core.config.glob import Glob
from streams.core.config.model import FunnelConfig, Match
from streams.core.config.versions import Definition, definition
from streams.core.input.channel import DEFAULT_UNWANTED_REFERRALS
from streams.core.input.event import ClickEvent
from streams.core.input.fields import lookup, url_path

MAX_KNOWN_URLS = 4_096
"""Page URLs whose `url` test result a matcher keeps (a site has few; random ones must not grow it)."""


@dataclass(frozen=True, slots=True)
class Matcher:
    events: frozenset[str] | None
    url: Glob | None
    goal: str | None
    fields: tuple[tuple[tuple[str, ...], Any], ...]
    known_urls: dict[str | None, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """Not configuration: per page URL seen, whether its path passes `url` (the glob walks the
    path character by character, and most traffic repeats a few pages)."""

    @classmethod
    def compile(cls, match: Match) -> Matcher:
        events = None
        if match.event is not None:
            events = frozenset([match.event] if isinstance(match.event, str) else match.event)
        return cls(
            events=events,
            url=Glob(match.url) if match.url is not None else None,
            goal=match.goal,
            fields=tuple((tuple(path.split(".")), value) for path, value in match.fields.items()),
        )

    def matches(self, event: ClickEvent, goals_hit: Collection[str] = ()) -> bool:
        if self.events is not None and event.event not in self.events:
            return False
        if self.goal is not None and self.goal not in goals_hit:
            return False
        if self.url is not None:
            url = event.page.url if event.page is not None else None
            known = self.known_urls
            passes = known.get(url)
            if passes is None:
                path = url_path(url)
                passes = path is not None and self.url.matches(path)
                if len(known) >= MAX_KNOWN_URLS:
                    known.clear()
                known[url] = passes
            if not passes:
                return False
        return all(lookup(event, path) == value for path, value in self.fields)


@dataclass(frozen=True, slots=True)
class CompiledStep:
    name: str
    matcher: Matcher
    within: int | None


@dataclass(frozen=True, slots=True)
class CompiledFunnel:
    name: str
    scope: str
    order: str
    window: int | None
    stalled_after: int | None
    steps: tuple[CompiledStep, ...]
    exclusions: tuple[Matcher, ...]
    breakdowns: tuple[str, ...]
    entry: str = "best"
    hold: tuple[tuple[str, ...], ...] = ()
    """The `hold` field paths, split: an attempt's steps share these values."""
    max_held_attempts: int = 10
    attribution_step: int | None = None
    """The step whose event sets the attributed breakdowns (None: the attempt's first event)."""
    attributed: tuple[str, ...] = ()
    """The breakdowns read at `attribution_step`: the funnel's own, not an experiment's variant,
    which an attempt keeps from its start."""
    definition: Definition | None = None
    """What its version covers (`config.versions`); None only for funnels built by hand."""
    # derived once (the engine reads them for every event that reaches the funnel)
    version: str = field(init=False)
    last_index: int = field(init=False)
    best_chain: bool = field(init=False)
    """Ordered with `entry: best`: per-step chains (README "Funnel semantics")."""

    def __post_init__(self) -> None:
        derived = {
            "version": self.definition.version if self.definition is not None else "",
            "last_index": len(self.steps) - 1,
            "best_chain": self.order != "any" and self.entry == "best",
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class CompiledGoal:
    name: str
    matcher: Matcher
    value_path: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class CompiledMicro:
    name: str
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    source: FunnelConfig
    session_timeout: int
    late_tolerance: int
    page_view_events: frozenset[str]
    goals: tuple[CompiledGoal, ...]
    funnels: tuple[CompiledFunnel, ...]
    funnels_by_name: dict[str, CompiledFunnel]
    micro: tuple[CompiledMicro, ...]
    breakdowns: tuple[str, ...]
    """Every breakdown any funnel asks for, in first-seen order: what outputs carry."""
    unwanted_referrals: tuple[str, ...] = ()
    """Hosts whose referral leaves a session Direct (`input.channel`)."""


def compile_config(config: FunnelConfig) -> CompiledConfig:
    funnels = tuple(
        CompiledFunnel(
            name=f.name,
            scope=f.scope,
            order=f.order,
            window=f.window,
            stalled_after=f.stalled_after,
            steps=tuple(CompiledStep(s.name, Matcher.compile(s.match), s.within) for s in f.steps),
            exclusions=tuple(Matcher.compile(e.match) for e in f.exclusions),
            breakdowns=tuple(config.breakdowns_of(f)),  # with its experiments' variant fields
            entry=f.entry,
            hold=tuple(tuple(path.split(".")) for path in f.hold),
            max_held_attempts=f.max_held_attempts,
            attribution_step=f.step_index(f.attribution.step) if f.attribution else None,
            attributed=tuple(f.breakdowns) if f.attribution else (),
            definition=definition(config, f),
        )
        for f in config.funnels
    )
    breakdowns = tuple(dict.fromkeys(b for f in funnels for b in f.breakdowns))
    return CompiledConfig(
        source=config,
        session_timeout=config.session_timeout,
        late_tolerance=config.late_tolerance,
        page_view_events=frozenset(config.page_view_events),
        goals=tuple(
            CompiledGoal(g.name, Matcher.compile(g.match), tuple(g.value.split(".")) if g.value else None)
            for g in config.goals
        ),
        funnels=funnels,
        funnels_by_name={f.name: f for f in funnels},
        micro=tuple(CompiledMicro(m.name, Matcher.compile(m.match)) for m in config.micro),
        breakdowns=breakdowns,
        unwanted_referrals=tuple(
            dict.fromkeys(
                [
                    *(DEFAULT_UNWANTED_REFERRALS if config.channels.default_unwanted_referrals else ()),
                    *config.channels.unwanted_referrals,
                ]
            )
        ),
    )
