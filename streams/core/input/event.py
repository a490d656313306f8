"""The clickstream event (CONTRACT section 1): the model every input format becomes, its
timestamps in epoch milliseconds, and the limits on what one event may hold.

Decoding raw message values into events is `input.decode`, above this module and the formats.
The work the validators and methods do on every event is `input.fields`' plain functions, which
mypyc compiles (it cannot compile a pydantic model); their names are importable from here too."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import SchemaValidator

from streams.core.input.fields import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    checked_nesting,
    from_epoch_ms,
    lookup,
    nesting_depth,
    parse_timestamp,
    settled,
    text_values,
    to_epoch_ms,
    url_path,
    utm_values,
    within_nesting,
)
from streams.core.records.trusted import assemble

__all__ = [
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "MAX_NESTING",
    "PRINTABLE",
    "SHALLOW_VALIDATOR",
    "Audience",
    "Campaign",
    "ClickEvent",
    "Page",
    "campaign_from_url",
    "from_epoch_ms",
    "nesting_depth",
    "nesting_limit",
    "parse_timestamp",
    "to_epoch_ms",
    "url_path",
    "within_nesting",
]

_fromisoformat = datetime.fromisoformat
MAX_NESTING = 16
"""The default of `CONVERSIONS_MAX_NESTING`: how deep `context` and `properties` may nest. Every
decoder takes it as `max_nesting` (ingest, offline, the collector), so one setting is the limit."""
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class Page(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    url: str | None = Field(default=None, max_length=8192)
    referrer: str | None = Field(default=None, max_length=8192)
    title: str | None = Field(default=None, max_length=2048)


class Campaign(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    source: str | None = Field(default=None, max_length=256)
    medium: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    term: str | None = Field(default=None, max_length=256)
    content: str | None = Field(default=None, max_length=256)

    def key(self) -> tuple[str | None, str | None, str | None]:
        return (self.source, self.medium, self.name)


class Audience(BaseModel):
    """Who the visitor is, as enrichment (`input.audience`) or a producer's own enriched fields
    (Snowplow's `br_family`, `os_family`, `dvce_type`, `geo_country`...) say: the breakdown fields
    `audience.browser`, `audience.os`, `audience.device`, `audience.country`, `audience.language`.
    A field already set is never overwritten by enrichment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    browser: str | None = Field(default=None, max_length=64)
    """The browser family (ua-parser's names: Chrome, Mobile Safari, Firefox...)."""
    browser_version: str | None = Field(default=None, max_length=80)
    """The family and its major version, e.g. `Chrome 120`."""
    os: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=16)
    """desktop, mobile, tablet or bot."""
    country: str | None = Field(default=None, max_length=8)
    """ISO 3166-1 alpha-2, upper case."""
    region: str | None = Field(default=None, max_length=64)
    city: str | None = Field(default=None, max_length=128)
    language: str | None = Field(default=None, max_length=16)
    """The primary language subtag of the locale, lower case (`en` for en-US)."""
    bot: bool = False

    def values(self) -> dict[str, str]:
        """The set fields as breakdown values (`bot` only when true)."""
        return text_values(self.__dict__)


def campaign_from_url(url: str | None) -> Campaign | None:
    values = utm_values(url)
    return Campaign(**values) if values else None


Nested = Annotated[dict[str, Any], AfterValidator(checked_nesting)]
"""`context` and `properties`: refused nested deeper than the validation context's `max_nesting`
(`nesting_limit`, input being decoded); an event the engine re-reads from its own topics was
checked when it came in."""


class ClickEvent(BaseModel):
    """One clickstream event; `campaign` is derived from the page's utm_* parameters when absent."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1, max_length=256)
    event: str = Field(min_length=1, max_length=256)
    user_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    session_id: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    timestamp: Annotated[
        datetime,
        BeforeValidator(parse_timestamp),
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "string",
                        "format": "date-time",
                        "description": "RFC 3339 with offset",
                    },
                    {
                        "type": "string",
                        "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
                        "description": "naive, read as UTC",
                    },
                    {"type": "integer", "description": "epoch milliseconds"},
                ]
            }
        ),
    ]
    page: Page | None = None
    campaign: Campaign | None = None
    # decoding may keep the parsed message's own dicts here (`SHALLOW_VALIDATOR`): never change
    # an event's `context` or `properties` in place (the enricher replaces `context`)
    context: Nested = Field(default_factory=dict)
    properties: Nested = Field(default_factory=dict)
    audience: Audience | None = None
    """Set by enrichment at ingest (from `context.user_agent`, `context.ip`, `context.locale`), or
    by the producer; read once per session, when the session opens."""

    # the validators are compiled functions (`input.fields`), called by pydantic with no Python
    # frame of their own: the timestamp's above, the nesting limit's on `Nested`, and this one
    _identity_and_campaign = model_validator(mode="after")(settled)
    campaign_model: ClassVar[type[Campaign]] = Campaign
    """What `settled` makes the campaign the page's utm_* parameters give."""

    @cached_property
    def ts_ms(self) -> int:
        """The event time in epoch milliseconds (set once validated; the model is frozen)."""
        return to_epoch_ms(self.timestamp)

    @property
    def identity(self) -> str:
        """Who the journey belongs to: the user id, else the anonymous id."""
        return self.user_id if self.user_id is not None else self.anonymous_id  # type: ignore[return-value]

    def lookup(self, path: tuple[str, ...]) -> Any:
        """The value at a dotted field path such as ("properties", "category"), or None."""
        return lookup(self, path)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def trusted(cls, item: dict[str, Any]) -> ClickEvent:
        """The event `to_json_dict` gave, read back without validating it again: what
        `model_validate(item)` makes of it (equal, fields in the same order, `ts_ms` set), at
        0.83 of the cost. For our own records only (the repartitioned `clickstream.events`):
        one that is not ours raises TypeError or ValueError, saying what is wrong."""
        if not isinstance(item, dict):
            raise TypeError(f"an event must be an object, not {type(item).__name__}")
        get = item.get
        moment = get("timestamp")
        if moment is None or get("event_id") is None or get("event") is None:
            raise ValueError("an event needs event_id, event and timestamp")
        at = _fromisoformat(moment) if isinstance(moment, str) else None
        if at is None or at.tzinfo is not UTC:  # not as pydantic writes ours: read as the contract says
            at = parse_timestamp(moment)
        page = _trusted(Page, get("page"))
        campaign = _trusted(Campaign, get("campaign"))
        if campaign is None and page is not None:
            campaign = campaign_from_url(page.url)
        data = {
            "event_id": get("event_id"),
            "event": get("event"),
            "user_id": get("user_id"),
            "anonymous_id": get("anonymous_id"),
            "session_id": get("session_id"),
            "timestamp": at,
            "page": page,
            "campaign": campaign,
            "context": get("context") or {},
            "properties": get("properties") or {},
            "audience": _trusted(Audience, get("audience")),
            "ts_ms": to_epoch_ms(at),
        }
        if not isinstance(data["event_id"], str) or not isinstance(data["event"], str):
            raise TypeError("event_id and event must be strings")
        user, anonymous, session = data["user_id"], data["anonymous_id"], data["session_id"]
        if user is None and anonymous is None:
            raise ValueError("one of user_id or anonymous_id is required")
        # what the engine reads without asking: a record of the wrong shape is refused here (the
        # agent dead-letters it) rather than failing in the engine and stopping the partition
        for name, value in (("user_id", user), ("anonymous_id", anonymous), ("session_id", session)):
            if value is not None and type(value) is not str:
                raise TypeError(f"{name} must be a string")
        if type(data["context"]) is not dict or type(data["properties"]) is not dict:
            raise TypeError("context and properties must be objects")
        return assemble(cls, data, item.keys() & _FIELDS)


_Model = TypeVar("_Model", bound=BaseModel)


def _trusted(cls: type[_Model], values: dict[str, Any] | None) -> _Model | None:
    """A nested model (Page, Campaign, Audience) from its `model_dump`: its fields in declaration
    order, defaults filled in; what is not a field is an extra (Page and Campaign allow them)."""
    if values is None:
        return None
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    defaults, allows_extra = _NESTED[cls]
    for name in _TEXT[cls] & values.keys():
        if values[name] is not None and type(values[name]) is not str:
            raise TypeError(f"{cls.__name__}.{name} must be a string")
    if values.keys() <= defaults.keys():
        return assemble(cls, {**defaults, **values}, set(values), {} if allows_extra else None)
    if not allows_extra:
        raise ValueError(f"{cls.__name__} has no field {(values.keys() - defaults.keys()).pop()!r}")
    data = defaults.copy()
    extra: dict[str, Any] = {}
    for name, value in values.items():
        if name in data:
            data[name] = value
        else:
            extra[name] = value
    return assemble(cls, data, set(values), extra)


_FIELDS = frozenset(ClickEvent.model_fields) - {"ts_ms"}
"""What `model_validate` counts as set when the item names it."""

_TEXT: dict[type[BaseModel], frozenset[str]] = {
    cls: frozenset(name for name, info in cls.model_fields.items() if info.annotation == str | None)
    for cls in (Page, Campaign, Audience)
}
"""The nested models' text fields (the engine reads them as strings)."""

_NESTED: dict[type[BaseModel], tuple[dict[str, Any], bool]] = {
    cls: (
        {name: info.default for name, info in cls.model_fields.items()},
        cls.model_config.get("extra") == "allow",
    )
    for cls in (Page, Campaign, Audience)
}


def _without_nesting_checks(model: type[BaseModel]) -> SchemaValidator:
    """`model`'s validator less the nesting check on `context` and `properties` (`Nested`), for an
    event whose objects hold no container (`fields.two_deep`), where the check cannot fail: it
    saved pydantic's two calls of it per event (an eighth of the validation's instructions). And
    `context` and `properties` taken as the dicts they are, where `dict[str, Any]` copies them key
    by key (another 5 %, 1,900 instructions an event): JSON's objects have string keys only, and
    nothing changes an event's dicts in place. It refuses more than `model`'s validator (a
    mapping that is not a dict), so what it refuses goes to that one (`decode._validate_one`),
    whose errors the rejections carry. The validator as it is when the schema is not as expected."""
    schema = copy.deepcopy(model.__pydantic_core_schema__)
    node: Any = schema
    config = None
    while node.get("type") in ("function-after", "model"):  # the model validator, then the model
        config = node.get("config", config)
        node = node["schema"]
    fields = node.get("fields") if node.get("type") == "model-fields" else None
    for name in ("context", "properties"):
        field = fields.get(name) if fields else None
        default = field["schema"] if field else {}
        check = default.get("schema", {})
        if (
            default.get("type") != "default"
            or check.get("function", {}).get("function") is not checked_nesting
        ):
            return model.__pydantic_validator__  # type: ignore[return-value]
        default["schema"] = {"type": "is-instance", "cls": dict}
    return SchemaValidator(schema, config)


SHALLOW_VALIDATOR = _without_nesting_checks(ClickEvent)
"""`ClickEvent`'s validator for an event that nests at most two levels (`fields.two_deep`); what
it refuses, `ClickEvent`'s own validator decides. For `validate_python` only (its is-instance
checks do not run on JSON input)."""


def nesting_limit(max_nesting: int) -> dict[str, int]:
    """The validation context of input being decoded: `ClickEvent.model_validate(obj,
    context=nesting_limit(n))` refuses `context` or `properties` nested deeper than n."""
    return {"max_nesting": max_nesting}
