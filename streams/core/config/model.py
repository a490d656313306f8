"""The funnel configuration (CONTRACT section 2) as pydantic models, validated as a whole."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from streams.core.config.durations import parse_duration_ms, parse_optional_duration_ms
from streams.core.config.glob import Glob
from streams.errors import ConversionsError

DUMPED = "dumped"
"""Validation context key: the data is a `model_dump(mode="json")` of a configuration, whose
durations are integer milliseconds (a file's bare numbers are seconds)."""


def _duration(value: Any, info: ValidationInfo) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and (info.context or {}).get(DUMPED):
        return value
    return parse_duration_ms(value)


def _optional_duration(value: Any, info: ValidationInfo) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and (info.context or {}).get(DUMPED):
        return value
    return parse_optional_duration_ms(value)


_DURATION_SCHEMA = {
    "type": "string",
    "pattern": r"^\s*(\d+\s*(ms|s|m|h|d|w)\s*)+$",
    "description": "a duration such as 90s, 15m, 1h30m, 7d",
}
Duration = Annotated[
    int,
    BeforeValidator(_duration),
    WithJsonSchema(
        {"anyOf": [_DURATION_SCHEMA, {"type": "integer", "minimum": 1, "description": "seconds"}]}
    ),
]
OptionalDuration = Annotated[
    int | None,
    BeforeValidator(_optional_duration),
    WithJsonSchema(
        {
            "anyOf": [_DURATION_SCHEMA, {"type": "integer", "minimum": 1}, {"enum": ["none", None]}],
            "description": "a duration, or none for unlimited",
        }
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]

FIELD_ROOTS = frozenset(
    {
        "event",
        "event_id",
        "user_id",
        "anonymous_id",
        "session_id",
        "page",
        "campaign",
        "context",
        "properties",
        "audience",
    }
)
DERIVED_BREAKDOWNS = frozenset({"landing_page", "channel", "visitor_type"})
MAX_FIELD_PATH_DEPTH = 8


def check_field_path(path: str) -> str:
    parts = path.split(".")
    if parts[0] not in FIELD_ROOTS or any(not p for p in parts) or len(parts) > MAX_FIELD_PATH_DEPTH:
        raise ValueError(
            f"unknown field path {path!r}: it must start with one of {', '.join(sorted(FIELD_ROOTS))}"
        )
    return path


class LocatedError(ConversionsError, ValueError):
    """A whole-file check that knows where in the file the problem is."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(BaseModel):
    """A conjunction: event name(s), a glob on the URL path, a goal, equality on field paths."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str | list[str] | None = None
    url: str | None = None
    goal: str | None = None

    @field_validator("url")
    @classmethod
    def _valid_glob(cls, value: str | None) -> str | None:
        if value is not None:
            Glob(value)
        return value

    @field_validator("event")
    @classmethod
    def _names(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not value:
            raise ValueError("event list must not be empty")
        return value

    @model_validator(mode="after")
    def _known_keys(self) -> Match:
        for key, value in (self.model_extra or {}).items():
            if "." not in key:
                raise ValueError(
                    f"unknown match key {key!r}: use event, url, goal or a dotted field path "
                    "such as properties.category"
                )
            check_field_path(key)
            if isinstance(value, dict | list):
                raise ValueError(f"{key}: only equality on a scalar value is supported")
        if self.event is None and self.url is None and self.goal is None and not self.model_extra:
            raise ValueError("a match needs at least one condition")
        return self

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Goal(_Strict):
    name: Name
    match: Match
    value: str | None = None

    @field_validator("value")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else check_field_path(value)


class Step(_Strict):
    name: Name
    match: Match
    within: OptionalDuration = None


class Exclusion(_Strict):
    match: Match


class Attribution(_Strict):
    """Where an attempt's breakdown values are read (README "Funnel semantics")."""

    step: Name
    """Read at the event that first brings the attempt to this step. Outputs of the attempt
    before that carry no value for the funnel's breakdowns, so every count stays exact."""


class Funnel(_Strict):
    name: Name
    scope: Literal["user", "session"] = "user"
    order: Literal["sequential", "strict", "any"] = "sequential"
    entry: Literal["best", "first"] = "best"
    """Ordered funnels: `best` re-anchors at every step-1 event and keeps, per step, the chain
    that started latest (ClickHouse windowFunnel); `first` keeps one chain from the attempt's
    first step-1 event (the engine before issue 15, Mixpanel's default)."""
    window: OptionalDuration = 7 * 86_400_000
    stalled_after: OptionalDuration = None
    steps: list[Step] = Field(min_length=2, max_length=50)
    exclusions: list[Exclusion] = Field(default_factory=list)
    breakdowns: list[str] = Field(default_factory=list, max_length=10)
    attribution: Attribution | None = None
    """Default: the breakdowns are read at the event that opens the attempt (its first step)."""
    hold: list[str] = Field(default_factory=list, max_length=3)
    """Field paths whose values the steps of one attempt share: one attempt per held value."""
    max_held_attempts: int = Field(default=10, ge=1, le=100)
    """With `hold`: open attempts per person and funnel; opening one more evicts the oldest."""

    @field_validator("breakdowns")
    @classmethod
    def _breakdown_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if path not in DERIVED_BREAKDOWNS:
                check_field_path(path)
        return value

    @field_validator("hold")
    @classmethod
    def _held_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            check_field_path(path)
        if len(set(value)) < len(value):
            raise ValueError("hold lists a field path twice")
        return value

    @model_validator(mode="after")
    def _unique_steps(self) -> Funnel:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate step names: {', '.join(dupes)}")
        if self.steps[0].within is not None:
            raise ValueError("the first step cannot have `within` (there is no step before it)")
        if self.order == "any" and any(s.within is not None for s in self.steps):
            raise ValueError("`within` has no meaning in an `order: any` funnel (its steps have no order)")
        if self.attribution is not None and self.attribution.step not in names:
            raise ValueError(f"attribution: funnel {self.name} has no step {self.attribution.step!r}")
        return self

    def step_index(self, name: str) -> int:
        return [s.name for s in self.steps].index(name)


class Micro(_Strict):
    name: Name
    match: Match


class AlertRule(_Strict):
    funnel: Name
    step: Name
    window: Duration
    baseline: Duration
    min_entered: int = Field(default=50, ge=1)
    relative_drop: float | None = Field(default=None, gt=0, lt=1)
    drop_below: float | None = Field(default=None, gt=0, le=1)
    by: list[str] = Field(default_factory=list, max_length=5)
    confidence: float | None = Field(default=None, ge=0.5, lt=1)
    """Break only when a one-sided exact test says the window's rate is below the baseline's
    at this confidence (README "Alerts")."""
    seasonality: Literal["weekly"] | None = None
    """weekly: the baseline is `baseline` of event time around the window's time of week, in each
    of the `seasons` previous weeks."""
    seasons: int = Field(default=4, ge=1, le=8)
    method: Literal["window", "cusum"] = "window"
    """window: judge the window's rate against the baseline's every minute; cusum: accumulate
    the evidence of every attempt in a Bernoulli CUSUM (README "Alerts"); both resolve when the
    window's rate is back above the resolve threshold."""
    false_alarm_every: OptionalDuration = None
    """cusum: false alarms on steady traffic at most this often (default 90d)."""
    resolve_after: OptionalDuration = None
    """cusum: an attempt that has not reached the step this long after the step before counts
    as a failure (default: the 90th percentile of the step's observed times to convert)."""

    @model_validator(mode="after")
    def _threshold(self) -> AlertRule:
        if self.relative_drop is None and self.drop_below is None:
            raise ValueError("an alert needs relative_drop, drop_below or both")
        if self.method == "cusum":
            if self.relative_drop is None:
                raise ValueError("method: cusum needs relative_drop (the fall it is tuned to detect)")
            if self.confidence is not None:
                raise ValueError(
                    "confidence belongs to method: window; a cusum rule's false alarms are set by "
                    "false_alarm_every"
                )
            if self.false_alarm_every is not None and self.false_alarm_every < 86_400_000:
                raise ValueError("false_alarm_every must be at least 1d")
            if self.resolve_after is not None and self.resolve_after % 60_000:
                raise ValueError("resolve_after must be whole minutes (alerts judge minute by minute)")
        elif self.false_alarm_every is not None or self.resolve_after is not None:
            raise ValueError("false_alarm_every and resolve_after apply to method: cusum only")
        if self.baseline <= self.window:
            raise ValueError("baseline must be longer than window")
        if self.window % 60_000 or self.baseline % 60_000:
            raise ValueError("window and baseline must be whole minutes (alerts judge minute by minute)")
        if self.seasonality == "weekly" and self.baseline > 86_400_000:
            raise ValueError(
                "with seasonality: weekly, baseline is the span around the same time of week: at most 1d"
            )
        return self


class Experiment(_Strict):
    """A live A/B comparison of a funnel's attempts by the variant they started with."""

    name: Name
    funnel: Name
    variant: str
    """The field path read at the attempt's start, e.g. properties.variant or context.experiment."""
    control: str = Field(min_length=1, max_length=100)
    """Breakdown values are cut at 100 characters, so a longer control could never match."""
    step: Name | None = None
    """The step whose conversion from entry decides (default: the funnel's last)."""
    alpha: float = Field(default=0.05, gt=0, le=0.2)
    mixing_sd: float = Field(default=0.02, gt=0, le=1)
    """tau of the mSPRT's normal mixture over the difference of rates (README "Experiments")."""
    min_entered: int = Field(default=30, ge=1)
    """No decision before every compared variant has this many attempts."""

    @field_validator("variant")
    @classmethod
    def _variant_path(cls, value: str) -> str:
        return check_field_path(value)


class Identity(_Strict):
    """Identity stitching: an event carrying both ids links the anonymous id to the user."""

    stitch: bool = True
    link_on: list[Name] | None = Field(default=None, min_length=1)
    """Only these events link ids (e.g. login, signup, identify); default: any event with both."""
    ttl: Duration = 90 * 86_400_000
    """A link is forgotten this long after its anonymous id was last seen (event time)."""


class Channels(_Strict):
    """How sessions get their channel (GA4's default channel grouping, `input.channel`)."""

    unwanted_referrals: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=1000
    )
    """Hosts whose referral is ignored (the session is Direct), each with its subdomains, on top
    of the payment providers and 3-D Secure pages of `input.channel.DEFAULT_UNWANTED_REFERRALS`."""
    default_unwanted_referrals: bool = True
    """False: only `unwanted_referrals` count as unwanted."""

    @field_validator("unwanted_referrals")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [host.strip().lower().removeprefix("www.") for host in value]


class FunnelConfig(_Strict):
    version: Literal[1]

    @classmethod
    def from_dump(cls, data: Any) -> FunnelConfig:
        """A configuration saved as `model_dump(mode="json")` (state files, the journeys store's
        registry): the same configuration again, its durations read as the milliseconds they are."""
        return cls.model_validate(data, context={DUMPED: True})

    session_timeout: Duration = 30 * 60_000
    late_tolerance: Duration = 10 * 60_000
    page_view_events: list[str] = Field(default_factory=lambda: ["page_view"])
    goals: list[Goal] = Field(default_factory=list)
    funnels: list[Funnel] = Field(default_factory=list)
    micro: list[Micro] = Field(default_factory=list)
    alerts: list[AlertRule] = Field(default_factory=list)
    experiments: list[Experiment] = Field(default_factory=list)
    identity: Identity = Field(default_factory=Identity)
    channels: Channels = Field(default_factory=Channels)

    @model_validator(mode="after")
    def _references(self) -> FunnelConfig:
        named: dict[str, list[str]] = {
            "goals": [g.name for g in self.goals],
            "funnels": [f.name for f in self.funnels],
            "micro": [m.name for m in self.micro],
        }
        for kind, names in named.items():
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise LocatedError((kind, i, "name"), f"duplicate name {name!r}")
        goal_names = {g.name for g in self.goals}
        matches: list[tuple[tuple[str | int, ...], Match]] = [
            (("micro", i), m.match) for i, m in enumerate(self.micro)
        ]
        for f, funnel in enumerate(self.funnels):
            matches += [(("funnels", f, "steps", i), s.match) for i, s in enumerate(funnel.steps)]
            matches += [(("funnels", f, "exclusions", i), e.match) for i, e in enumerate(funnel.exclusions)]
        for loc, match in matches:
            if match.goal is not None and match.goal not in goal_names:
                raise LocatedError((*loc, "match", "goal"), f"unknown goal {match.goal!r}")
        for i, goal in enumerate(self.goals):
            if goal.match.goal is not None:
                raise LocatedError(("goals", i, "match", "goal"), "a goal cannot match on another goal")
        funnels = {f.name: f for f in self.funnels}
        for i, rule in enumerate(self.alerts):
            judged = funnels.get(rule.funnel)
            if judged is None:
                raise LocatedError(("alerts", i, "funnel"), f"unknown funnel {rule.funnel!r}")
            step_names = [s.name for s in judged.steps]
            if rule.step not in step_names:
                raise LocatedError(("alerts", i, "step"), f"funnel {judged.name} has no step {rule.step!r}")
            if step_names.index(rule.step) == 0:
                raise LocatedError(
                    ("alerts", i, "step"),
                    f"{rule.step!r} is the first step; an alert judges the transition into a step "
                    "from the one before",
                )
            breakdowns = self.breakdowns_of(judged)
            unknown_by = [path for path in rule.by if path not in breakdowns]
            if unknown_by:
                raise LocatedError(
                    ("alerts", i, "by"),
                    f"{unknown_by} must be among the funnel's breakdowns {breakdowns}",
                )
            if (
                rule.resolve_after is not None
                and judged.window is not None
                and rule.resolve_after > judged.window
            ):
                raise LocatedError(
                    ("alerts", i, "resolve_after"),
                    f"resolve_after is longer than funnel {judged.name}'s window "
                    f"({judged.window // 60_000} min): an attempt has ended by then",
                )
        self._check_experiments(funnels)
        return self

    def _check_experiments(self, funnels: dict[str, Funnel]) -> None:
        names = [e.name for e in self.experiments]
        for i, experiment in enumerate(self.experiments):
            if experiment.name in names[:i]:
                raise LocatedError(("experiments", i, "name"), f"duplicate name {experiment.name!r}")
            funnel = funnels.get(experiment.funnel)
            if funnel is None:
                raise LocatedError(("experiments", i, "funnel"), f"unknown funnel {experiment.funnel!r}")
            if funnel.order == "any":
                raise LocatedError(
                    ("experiments", i, "funnel"),
                    f"funnel {funnel.name} has order: any; an experiment counts attempts from their "
                    "first step, so it needs a sequential or strict funnel",
                )
            step_names = [s.name for s in funnel.steps]
            if experiment.step is not None and experiment.step not in step_names[1:]:
                raise LocatedError(
                    ("experiments", i, "step"),
                    f"{experiment.step!r} must be one of funnel {funnel.name}'s steps after the first",
                )

    def breakdowns_of(self, funnel: Funnel) -> list[str]:
        """The funnel's breakdowns, then the variant field of each experiment on it: attempts
        carry them from their start, which is how an attempt keeps the variant it started with."""
        variants = [e.variant for e in self.experiments if e.funnel == funnel.name]
        return list(dict.fromkeys([*funnel.breakdowns, *variants]))
