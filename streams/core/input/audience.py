"""Enrichment at ingest: who the visitor is (browser, OS, device class, country, language), what
is kept of their address, and which events are not processed at all (bots, denied consent,
erased people).

It runs once per decoded event, before the event is repartitioned, held or written anywhere, so
that in the default `CONVERSIONS_IP_MODE=drop` the client address is looked up and gone before
anything the engine writes could carry it. What it computes is cached per distinct user agent and
per address, so a repeat costs a few dict lookups; the journey reads the result once, when a
session opens (`Session.audience`): a session's audience is that of its first event, as GA4's
session dimensions are.

Where the event says it already (Snowplow's enriched `br_family`, `os_family`, `dvce_type`,
`geo_country`, a producer's own `audience`), that is kept and only the missing fields are filled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.core.input.event import Audience, ClickEvent
from streams.core.input.fields import lookup
from streams.core.input.geo import NOWHERE, GeoLookup, IpMode, Place, mask
from streams.core.input.rejection import Decoded
from streams.core.input.useragent import classify

BotPolicy = Literal["exclude", "include"]
ScreenReason = Literal["bot", "consent", "erased"]
AUDIENCE_FIELDS = ("browser", "browser_version", "os", "device", "country", "language")
"""The audience breakdown fields (`audience.<name>`) that the counters' tables break down by."""
MAX_CACHED = 65_536
_LANGUAGE = re.compile(r"^([A-Za-z]{2,3})(?:[-_].*)?$")
_DENIED = frozenset({"false", "denied", "no", "0", "off", "deny", "rejected"})


def _denies(value: Any) -> bool:
    """A consent value that says no: false, 0, or a word for it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value == 0
    return isinstance(value, str) and value.strip().lower() in _DENIED


def language_of(locale: Any) -> str | None:
    """The primary language subtag of a locale (`en-US`, `pt_BR`, `de`), lower case."""
    if not isinstance(locale, str):
        return None
    found = _LANGUAGE.match(locale.strip())
    return found.group(1).lower() if found else None


@dataclass(frozen=True)
class EnrichmentSpec:
    """What an `Enricher` is built from: plain values, so a process of offline mode's parallel
    run builds its own (a GeoLookup holds an open database and caches)."""

    ip_mode: IpMode = "drop"
    bots: BotPolicy = "exclude"
    geoip_database: str | None = None
    consent_category: str | None = "analytics"
    consent_field: tuple[str, ...] | None = None

    def build(self, erased: Mapping[str, int] | None = None) -> Enricher:
        return Enricher(
            ip_mode=self.ip_mode,
            bots=self.bots,
            geo=GeoLookup(self.geoip_database),
            consent_category=self.consent_category,
            consent_field=self.consent_field,
            erased=erased if erased is not None else {},
        )


@dataclass
class Enricher:
    """Applies audience enrichment, the IP mode and the screens to decoded events.

    `erased`: erased identities (user or anonymous id) with the event time of their erasure (ms);
    their events stamped at or before it are screened out (`conversions forget`)."""

    ip_mode: IpMode = "drop"
    bots: BotPolicy = "exclude"
    geo: GeoLookup | None = None
    consent_category: str | None = "analytics"
    """The category of Segment's `context.consent.categoryPreferences` (case-insensitive) that
    must not be false for an event to be processed."""
    consent_field: tuple[str, ...] | None = None
    """Another field (a dotted path) whose value denies processing when it is false, `denied`..."""
    erased: Mapping[str, int] = field(default_factory=dict)
    _audiences: dict[tuple[Any, ...], Audience] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.geo is None:
            self.geo = GeoLookup()

    def apply(self, decoded: Decoded) -> Decoded:
        """Enrich each event in place and drop the screened ones (counted in `decoded.screened`)."""
        kept: list[ClickEvent] = []
        exclude_bots = self.bots == "exclude"
        for event in decoded.events:
            # its fields, read once: from compiled code every attribute read of a pydantic model
            # goes through the model's `__getattr__` hook
            fields = event.__dict__
            reason = self._screen(event, fields)
            if reason is None and self._enrich(fields).bot and exclude_bots:
                reason = "bot"
            if reason is None:
                kept.append(event)
            else:
                decoded.screened[reason] = decoded.screened.get(reason, 0) + 1
        decoded.events = kept
        return decoded

    def _screen(self, event: ClickEvent, fields: dict[str, Any]) -> ScreenReason | None:
        """Erased people and denied consent, which need no enrichment to decide."""
        erased = self.erased
        if erased:
            for identity in (fields["user_id"], fields["anonymous_id"]):
                at = erased.get(identity) if identity is not None else None
                if at is not None and event.ts_ms <= at:
                    return "erased"
        if self._denies(event, fields["context"]):
            return "consent"
        return None

    def _denies(self, event: ClickEvent, context: dict[str, Any]) -> bool:
        consent = context.get("consent")
        if consent is not None and self.consent_category and isinstance(consent, Mapping):
            preferences = consent.get("categoryPreferences") or consent.get("category_preferences")
            if isinstance(preferences, Mapping):
                wanted = self.consent_category.lower()
                for name, value in preferences.items():
                    if isinstance(name, str) and name.lower() == wanted and _denies(value):
                        return True
        return self.consent_field is not None and _denies(lookup(event, self.consent_field))

    def _enrich(self, fields: dict[str, Any]) -> Audience:
        """Set the event's audience and apply the IP mode to `context.ip`, on its fields (its
        `__dict__`, written as `object.__setattr__` on the frozen model would: the event was
        validated just now and nothing else holds it yet, so it is completed in place, as its
        campaign is); the audience set."""
        context = fields["context"]
        raw_ip = context.get("ip")
        place = NOWHERE
        if isinstance(raw_ip, str):
            assert self.geo is not None
            place = self.geo.lookup(raw_ip)
        hints = context.get("user_agent_data") or context.get("userAgentData")
        mobile_hint = platform_hint = None
        if hints is not None and isinstance(hints, Mapping):  # None first: an ABC's check is a Python call
            mobile = hints.get("mobile")
            mobile_hint = mobile if isinstance(mobile, bool) else None
            platform = hints.get("platform")
            platform_hint = platform if isinstance(platform, str) and platform else None
        user_agent = context.get("user_agent")
        locale = context.get("locale")
        given = fields["audience"]
        key = (
            user_agent if isinstance(user_agent, str) else None,
            mobile_hint,
            platform_hint,
            place,
            locale if isinstance(locale, str) else None,
            given,
        )
        audience = self._audiences.get(key)
        if audience is None:
            audience = self._audience(key[0], mobile_hint, platform_hint, place, key[4], given)
            if len(self._audiences) >= MAX_CACHED:
                self._audiences.clear()
            self._audiences[key] = audience
        fields["audience"] = audience
        if "ip" in context:
            kept = mask(raw_ip, self.ip_mode) if isinstance(raw_ip, str) else None
            if kept != raw_ip:
                rest = {k: v for k, v in context.items() if k != "ip"}
                if kept is not None:
                    rest["ip"] = kept
                fields["context"] = rest
        return audience

    @staticmethod
    def _audience(
        user_agent: str | None,
        mobile_hint: bool | None,
        platform_hint: str | None,
        place: Place,
        locale: str | None,
        given: Audience | None,
    ) -> Audience:
        agent = classify(user_agent, mobile_hint, platform_hint)
        found: dict[str, Any] = {
            "browser": agent.browser,
            "browser_version": agent.browser_version,
            "os": agent.os,
            "device": agent.device,
            "country": place.country,
            "region": place.region,
            "city": place.city,
            "language": language_of(locale),
            "bot": agent.bot,
        }
        if given is not None:  # the producer's own enrichment wins field by field
            found.update({k: v for k, v in given.__dict__.items() if v not in (None, False)})
        return Audience(**found)
