"""Output events (CONTRACT section 3). Every one has a deterministic id, a type and an event time.

The models are the contract and the schema source. The engine, which makes most outputs from
values it has already checked, builds them with `build` (no second validation: the model's
defaults filled in, fields in declaration order, as validation would leave them), and `to_json`
serializes the fields as they are, once, byte for byte what `model_dump(mode="json")` gives;
both are `records.trusted`'s, compiled with the engine (mypyc cannot compile these models).
`tests/core/records/test_outputs_valid.py` validates every output of a simulated run against its model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.core.records.trusted import build, to_json, to_line

__all__ = [
    "OUTPUT_MODELS",
    "Alert",
    "AnyOutput",
    "Breakdowns",
    "Carried",
    "DeadLetter",
    "Dropoff",
    "DropoffReason",
    "Erasure",
    "ExperimentUpdate",
    "FirstTouch",
    "FunnelOutput",
    "IdentityLink",
    "MacroConversion",
    "MicroConversion",
    "MixShift",
    "OutputEvent",
    "RootCause",
    "SegmentDrop",
    "SessionSummary",
    "Stalled",
    "VariantResult",
    "build",
]

Breakdowns = dict[str, str | None]


class OutputEvent(BaseModel):
    # validators and serializers built when first used (a validation, a dump, a schema): the
    # engine builds and serializes outputs without them (`records.trusted`), and building them
    # at import took 2 % of a one-line `conversions process` (bench/README.md, issue 30, session 7)
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    id: str
    type: str
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    timestamp: datetime

    @property
    def identity(self) -> str | None:
        return self.user_id if self.user_id is not None else self.anonymous_id

    def to_json(self) -> bytes:
        """The JSON form, serialized from the fields as they are: what `model_dump(mode="json")`
        then orjson would give (UTC as `Z`, as pydantic writes it), without the intermediate dict."""
        return to_json(self)

    def to_line(self) -> bytes:
        """`to_json` and a newline, in one call: an NDJSON line (offline mode's output)."""
        return to_line(self)


class FunnelOutput(OutputEvent):
    funnel: str
    step: str
    step_index: int
    breakdowns: Breakdowns = Field(default_factory=dict)
    funnel_version: str | None = None
    """The version of the funnel's definition the attempt was under (docs/howto/changing-funnels.md)."""


class MicroConversion(OutputEvent):
    """A milestone step reached (kind=milestone, with funnel/step) or a secondary action."""

    type: Literal["micro"] = "micro"
    kind: Literal["milestone", "secondary"]
    name: str
    funnel: str | None = None
    step: str | None = None
    step_index: int | None = None
    final: bool = False
    event: str
    event_id: str
    started_at: datetime | None = None
    """For a milestone: when its attempt opened (time to convert = timestamp - started_at)."""
    previous_at: datetime | None = None
    """For a milestone after the first step: when its attempt reached the step before."""
    landing_page: str | None = None
    channel: str | None = None
    breakdowns: Breakdowns = Field(default_factory=dict)
    funnel_version: str | None = None
    """For a milestone: the version of the funnel's definition its attempt was under."""


class FirstTouch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    timestamp: datetime
    landing_page: str | None
    channel: str | None


class MacroConversion(OutputEvent):
    type: Literal["macro"] = "macro"
    goal: str
    value: float | None = None
    currency: str | None = None
    decision_time_ms: int
    micro_path: list[str]
    landing_page: str | None = None
    channel: str | None = None
    first_touch: FirstTouch
    page_views: int
    sessions: int
    event: str
    event_id: str
    breakdowns: Breakdowns = Field(default_factory=dict)
    audience: dict[str, str] | None = None
    """Who the visitor is, as their session opened: browser, browser_version, os, device
    (desktop, mobile, tablet), country, region, city, language, when known."""


DropoffReason = Literal[
    "window_expired",
    "step_timeout",
    "session_ended",
    "excluded",
    "out_of_order",
    "merged",
    "evicted",
    "definition_changed",
]


class Dropoff(FunnelOutput):
    """A funnel attempt that ended without its goal; `step` is the last step reached."""

    type: Literal["dropoff"] = "dropoff"
    reason: DropoffReason
    started_at: datetime
    time_in_funnel_ms: int


class Stalled(FunnelOutput):
    """Not final: an attempt with no progress for `stalled_after` (the abandoned cart)."""

    type: Literal["stalled"] = "stalled"
    started_at: datetime
    idle_ms: int


class Carried(FunnelOutput):
    """Not final: an attempt open when its funnel's definition changed in a way that cannot alter
    its course, carried over to the new version (docs/howto/changing-funnels.md). It closes the
    attempt's account in `previous_version` (at `previous_step`) and opens it in `funnel_version`
    at the steps in `reached`, so per version entered = completed + dropped + carried + open."""

    type: Literal["carried"] = "carried"
    previous_version: str | None
    previous_step: str
    previous_step_index: int
    reached: list[int]
    """The steps (new indexes) the attempt has reported so far."""
    started_at: datetime


class SessionSummary(OutputEvent):
    type: Literal["session"] = "session"
    started_at: datetime
    ended_at: datetime
    duration_ms: int
    landing_page: str | None
    channel: str
    campaign: dict[str, str | None] | None = None
    page_views: int
    events: int
    microconversions: int
    conversions: list[str]
    visitor_type: Literal["new", "returning"] | None = None
    """`new` for the person's first session, `returning` after one (as GA reports it); fixed when
    the session opens."""
    audience: dict[str, str] | None = None
    """Who the visitor is, from the session's first event: browser, browser_version, os, device
    (desktop, mobile, tablet), country, region, city, language, when known."""
    source: str | None = None
    """GA4's session source: utm_source, a click id's ad platform, the search engine, the referring
    host, or `(direct)`."""
    medium: str | None = None
    """GA4's session medium: utm_medium, `cpc` for a click id, `organic`, `referral` or `(none)`."""
    search_term: str | None = None
    """The search term the referring search engine's URL carried (or utm_term)."""


class SegmentDrop(BaseModel):
    """A breakdown value whose own rate fell, with its part of the missing conversions."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    breakdown: str
    value: str | None
    share: float
    """Of the missing conversions (the window's entries at the baseline rate minus its conversions)."""
    missing: float
    rate: float
    baseline_rate: float
    entered: int
    baseline_entered: int
    p_value: float
    """Fisher's one-sided exact test of the value's window rate against its baseline rate."""


class MixShift(BaseModel):
    """A breakdown value whose share of the entries rose while it converts below the average."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    breakdown: str
    value: str | None
    share: float
    missing: float
    entries_share: float
    baseline_entries_share: float
    baseline_rate: float
    p_value: float


class RootCause(BaseModel):
    """What explains a fired alert's drop, per breakdown of the funnel (README "Alerts")."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    missing: float
    """Conversions the window would have had at the baseline rate, minus those it had."""
    segments: list[SegmentDrop] = Field(default_factory=list)
    """Values named as falling, largest share first; empty: no single segment explains it."""
    mix: list[MixShift] = Field(default_factory=list)
    significance: float
    """Family-wise level (Bonferroni over the values tested) a value must reach to be named."""
    min_entered: int
    """Entries of its own a value needs in the window to be named."""
    summary: str


class Alert(OutputEvent):
    type: Literal["alert"] = "alert"
    funnel: str
    step: str
    step_index: int
    state: Literal["fired", "resolved"]
    rate: float | None
    baseline_rate: float | None
    entered: int
    baseline_entered: int
    by: dict[str, str | None] = Field(default_factory=dict)
    window: str
    baseline: str
    confidence: float | None = None
    """The rule's confidence, when it has one."""
    p_value: float | None = None
    """One-sided Fisher exact p-value that the window's rate is below the baseline's."""
    p_threshold: float | None = None
    """The p-value a look must reach to fire, for `confidence` to hold per window length."""
    rate_low: float | None = None
    rate_high: float | None = None
    """The window rate's Wilson interval at `interval_level`."""
    interval_level: float | None = None
    baseline_frozen: bool = False
    """The baseline is the one the rule fired with (an incident does not become the norm)."""
    funnel_version: str | None = None
    """The funnel version whose counts the rule judged (a baseline never mixes two)."""
    incident_id: str | None = None
    """The same for a fire and its resolution: a function of the rule (its own settings, not its
    funnel's version), the by values and the moment it fired; the dedup key receivers use."""
    rule_id: str | None = None
    """The rule's identity (`config.versions.rule_identity`: its own settings, not its funnel's
    version): a worker restarted on another configuration tells by it whether an incident still
    has a rule to resolve it."""
    method: Literal["window", "cusum"] = "window"
    statistic: float | None = None
    """cusum: the statistic (log-likelihood ratio, nats) when the alert changed state."""
    threshold: float | None = None
    """cusum: the statistic's threshold h (nats)."""
    trials: int | None = None
    """cusum: attempts resolved since the statistic last left zero."""
    failures: int | None = None
    """cusum: of those, the ones that did not reach the step within resolve_after."""
    resolution_delay: str | None = None
    """cusum: resolve_after, what waiting for an attempt's outcome adds to the detection."""
    false_alarm_every: str | None = None
    root_cause: RootCause | None = None
    """On a fired alert: the breakdown values that explain the drop."""
    reason: Literal["definition_changed"] | None = None
    """On a resolution not judged from the rate: `definition_changed`, the rule's state was
    dropped because its definition (its funnel's version, or its own settings) changed, or the
    rule was removed; the incident is closed under its dedup key rather than left open."""


class VariantResult(BaseModel):
    """One variant of an experiment, live: its attempts, conversions and, against the control,
    the difference of rates with its always-valid confidence sequence and p-value."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    variant: str
    entered: int
    converted: int
    """Attempts that reached the experiment's step."""
    steps: dict[str, int]
    """Attempts that reached each step of the funnel."""
    rate: float | None
    rate_low: float | None
    rate_high: float | None
    """Wilson interval of the rate at 1 - alpha (one look: for reading, not for deciding)."""
    lift: float | None = None
    """rate / control rate - 1."""
    difference: float | None = None
    difference_low: float | None = None
    difference_high: float | None = None
    """Confidence sequence for rate - control rate at 1 - alpha, valid at every look."""
    p_value: float | None = None
    """Always-valid p-value (mSPRT) of no difference with the control."""
    decision: Literal["control", "waiting", "inconclusive", "better", "worse"]


class ExperimentUpdate(OutputEvent):
    """An experiment's live state, emitted when any variant's decision changes."""

    type: Literal["experiment"] = "experiment"
    experiment: str
    funnel: str
    step: str
    variant_field: str
    control: str
    alpha: float
    mixing_sd: float
    changed: list[str]
    """The variants whose decision changed at this update."""
    variants: list[VariantResult]
    unassigned: int = 0
    """Attempts that started without a variant: not compared."""
    funnel_version: str | None = None
    """The funnel version whose attempts are compared (an evaluation never mixes two)."""
    final: bool = False
    """Offline mode's last record of the experiment at the end of its input (`process --flush`):
    its state with every minute of the input judged, whether or not a decision changed."""

    @property
    def identity(self) -> str | None:
        """What the record is keyed by on `conversions.experiments`: the experiment, so one
        experiment's updates stay in order on one partition (it concerns no one person)."""
        return self.experiment


class IdentityLink(OutputEvent):
    """An anonymous id linked to a user id (`linked`), or a link the rules refused (`refused`).

    `linked` is emitted where the two journeys merged, with what the merge kept: downstream
    consumers can re-key their own tables from it. `timestamp` is the linking event's time."""

    type: Literal["identity"] = "identity"
    action: Literal["linked", "refused"]
    event: str
    event_id: str
    reason: str | None = None
    """Why a link was refused (the anonymous id belongs to another user)."""
    linked_user_id: str | None = None
    """For `refused`: the user the anonymous id stays linked to."""
    anonymous_history: bool = False
    """The anonymous id had a journey of its own, now part of the user's."""
    user_history: bool = False
    """The user already had a journey."""
    first_touch: FirstTouch | None = None
    """The merged journey's first touch (the earlier of the two)."""
    attempts_kept: dict[str, int] = Field(default_factory=dict)
    """Per funnel, the step index of the attempt the merged journey continues."""
    attempts_merged: dict[str, int] = Field(default_factory=dict)
    """Per funnel, the step index of the attempt that ended with a `merged` drop-off."""


class DeadLetter(OutputEvent):
    type: Literal["deadletter"] = "deadletter"
    reason: str
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)
    original_b64: str
    original_size: int
    original_sha256: str
    original_truncated: bool = False
    batch_index: int | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_offset_last: int | None = None
    """The last offset of a whole record batch dead-lettered (it could not be decoded)."""


class Erasure(OutputEvent):
    """A person erased (`conversions forget`), on its own topic (`privacy.erasures`) for downstream
    consumers to erase their copies; `timestamp` is the moment of the erasure: the person's events
    stamped at or before it are not processed any more."""

    type: Literal["erasure"] = "erasure"
    requested_by: str = "cli"


AnyOutput = Annotated[
    MicroConversion
    | MacroConversion
    | Dropoff
    | Stalled
    | Carried
    | SessionSummary
    | Alert
    | ExperimentUpdate
    | IdentityLink
    | DeadLetter,
    Field(discriminator="type"),
]
OUTPUT_MODELS: dict[str, type[OutputEvent]] = {
    "micro": MicroConversion,
    "macro": MacroConversion,
    "dropoff": Dropoff,
    "stalled": Stalled,
    "carried": Carried,
    "session": SessionSummary,
    "alert": Alert,
    "experiment": ExperimentUpdate,
    "identity": IdentityLink,
    "deadletter": DeadLetter,
}
