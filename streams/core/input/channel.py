"""Which channel brought a session, as GA4's default channel grouping names it.

First the session's source and medium, as GA4 derives them: a click id in the landing URL
(`gclid`, `gbraid`, `wbraid`: google / cpc; `msclkid`: bing / cpc; `yclid`: yandex / cpc; as
auto-tagging does, it wins over utm_source and utm_medium, the campaign name is kept); else the
utm_* campaign; else the referrer: none, the shop's own host or an unwanted referral (payment
providers, 3-D Secure pages: `DEFAULT_UNWANTED_REFERRALS` and the configuration's
`channels.unwanted_referrals`) is `(direct) / (none)`, a search engine is `<engine> / organic`
with its search term, anything else `<host> / referral`.

Then GA4's published rules for manual traffic, in GA4's order, case-insensitive, the first that
holds (`RULES`): Direct, Cross-network, Paid Shopping, Paid Search, Paid Social, Paid Video,
Display, Paid Other, Organic Shopping, Organic Social, Organic Video, Organic Search, Referral,
Email, Affiliates, Audio, SMS, Mobile Push Notifications, else Unassigned. "Source matches a list of
search (social, video, shopping) sites" reads the source categories from data shipped in
`referers/` (Snowplow's referer-parser list, and ours for video and shopping: see its README).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
import yaml

from streams.core.input.event import Campaign

DIRECT = "Direct"
UNASSIGNED = "Unassigned"
CHANNELS = (
    "Direct",
    "Cross-network",
    "Paid Shopping",
    "Paid Search",
    "Paid Social",
    "Paid Video",
    "Display",
    "Paid Other",
    "Organic Shopping",
    "Organic Social",
    "Organic Video",
    "Organic Search",
    "Referral",
    "Email",
    "Affiliates",
    "Audio",
    "SMS",
    "Mobile Push Notifications",
    "Unassigned",
)
CLICK_IDS = {
    "gclid": ("google", "cpc"),
    "gbraid": ("google", "cpc"),
    "wbraid": ("google", "cpc"),
    "msclkid": ("bing", "cpc"),
    "yclid": ("yandex", "cpc"),
}
"""Ad platforms' auto-tagging parameters: a landing URL carrying one came from a paid search ad."""
DEFAULT_UNWANTED_REFERRALS = (
    "paypal.com",
    "paypal.me",
    "stripe.com",
    "klarna.com",
    "adyen.com",
    "mollie.com",
    "braintreegateway.com",
    "sofort.com",
    "pay.google.com",
    "pay.amazon.com",
    "payments.amazon.com",
    "checkout.shopify.com",
    "cardinalcommerce.com",
    "3dsecure.io",
    "securecode.com",
    "arcot.com",
    "wlp-acs.com",
    "secure.mastercard.com",
    "verifiedbyvisa.com",
    "modirum.com",
    "3ds.adyen.com",
    "ravelin.click",
)
"""Hosts (and their subdomains) that send the visitor back mid-journey: payment providers and the
banks' 3-D Secure pages. Their referral is ignored (GA4's "unwanted referrals")."""

_PAID = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
_SHOP_CAMPAIGN = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$")
_DISPLAY = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SOCIAL_MEDIA = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
_REFERRAL = frozenset({"referral", "app", "link"})
_EMAIL = frozenset({"email", "e-mail", "e_mail", "e mail"})
_NOT_NAME = re.compile(r"[^a-z0-9.+ ]")


class Referer(NamedTuple):
    name: str
    medium: str
    parameters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Traffic:
    """A session's source, medium, campaign and search term, and the channel they make."""

    source: str
    medium: str
    campaign: str | None
    term: str | None
    channel: str


@dataclass(frozen=True, slots=True)
class _Index:
    referers: dict[str, Referer]
    """By host (no `www.`), and `host/path` for the entries that name a path."""
    with_paths: frozenset[str]
    categories: dict[str, str]
    """Source name or host (lower case) -> search, social, video or shopping."""


@lru_cache(maxsize=1)
def _index() -> _Index:
    data = files("streams.core.input") / "referers"
    referers: dict[str, Referer] = {}
    categories: dict[str, str] = {}
    with_paths: set[str] = set()
    # referers.yml as JSON (`streams.tools.referers_json`): the YAML took 30-70 ms to parse
    parsed = orjson.loads(data.joinpath("referers.json").read_bytes())
    for medium, providers in parsed.items():
        for name, entry in (providers or {}).items():
            referer = Referer(str(name), str(medium), tuple(str(p) for p in entry.get("parameters") or ()))
            for domain in entry.get("domains") or ():
                key = _strip_www(str(domain).lower())
                referers.setdefault(key, referer)
                if "/" in key:
                    with_paths.add(key.split("/", 1)[0])
                if medium in ("search", "social"):
                    categories.setdefault(key.split("/", 1)[0], medium)
            if medium in ("search", "social"):
                lowered = str(name).lower()
                categories.setdefault(lowered, medium)
                categories.setdefault(_NOT_NAME.sub("", lowered), medium)
    ours = yaml.load(data.joinpath("ga4_categories.yml").read_text("utf-8"), Loader=_Loader)
    for category, sources in ours.items():
        for names in sources.values():
            for source in names:
                categories[str(source).lower()] = category  # ours win: GA4 files YouTube as video
    return _Index(referers, frozenset(with_paths), categories)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def _parents(host: str) -> Iterable[str]:
    """The host and each parent domain with two labels or more: m.facebook.com, facebook.com."""
    labels = host.split(".")
    for start in range(len(labels) - 1):
        yield ".".join(labels[start:])


def find_referer(host: str, path: str = "") -> Referer | None:
    """referer-parser's lookup: host with its path, then the host, then its parent domains."""
    index = _index()
    host = _strip_www(host.lower())
    if host in index.with_paths and path:
        segments = [s for s in path.split("/") if s]
        for cut in range(len(segments), 0, -1):
            found = index.referers.get(host + "/" + "/".join(segments[:cut]))
            if found is not None:
                return found
    for candidate in _parents(host):
        found = index.referers.get(candidate)
        if found is not None:
            return found
    return None


def source_category(source: str | None) -> str | None:
    """GA4's category of a source (search, social, video, shopping), by name or host, else None."""
    if not source:
        return None
    text = _strip_www(source.strip().lower())
    categories = _index().categories
    found = categories.get(text)
    if found is not None or "." not in text:
        return found
    referers = _index().referers
    for candidate in _parents(text.split("/", 1)[0]):
        found = categories.get(candidate)
        if found is not None:
            return found
        if candidate in referers:  # known as something else (mail.google.com is webmail)
            return None
    return None


def _host(url: str | None) -> str:
    if not url:
        return ""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return _strip_www(host)


def _host_in(host: str, names: Iterable[str]) -> bool:
    return any(host == n or host.endswith("." + n) for n in names)


def _query(url: str | None) -> dict[str, list[str]]:
    if not url or "?" not in url:
        return {}
    try:
        return parse_qs(urlsplit(url).query)
    except ValueError:
        return {}


def _rule(category: str | None, source: str, medium: str, campaign: str) -> str:
    """GA4's default channel group for manual traffic: the first rule that holds, in GA4's order."""
    if source in ("(direct)", "direct") and medium in ("(not set)", "(none)"):
        return DIRECT
    if "cross-network" in campaign:
        return "Cross-network"
    paid = bool(_PAID.match(medium))
    shop_campaign = bool(_SHOP_CAMPAIGN.match(campaign))
    if paid:
        if category == "shopping" or shop_campaign:
            return "Paid Shopping"
        if category == "search":
            return "Paid Search"
        if category == "social":
            return "Paid Social"
        if category == "video":
            return "Paid Video"
    if medium in _DISPLAY:
        return "Display"
    if paid:
        return "Paid Other"
    if category == "shopping" or shop_campaign:
        return "Organic Shopping"
    if category == "social" or medium in _SOCIAL_MEDIA:
        return "Organic Social"
    if category == "video" or "video" in medium:
        return "Organic Video"
    if category == "search" or medium == "organic":
        return "Organic Search"
    if medium in _REFERRAL:
        return "Referral"
    if source in _EMAIL or medium in _EMAIL:
        return "Email"
    if medium == "affiliate":
        return "Affiliates"
    if medium == "audio":
        return "Audio"
    if source == "sms" or medium == "sms":
        return "SMS"
    if medium.endswith("push") or "mobile" in medium or "notification" in medium or source == "firebase":
        return "Mobile Push Notifications"
    return UNASSIGNED


def default_channel_group(source: str | None, medium: str | None, campaign: str | None = None) -> str:
    """GA4's rules on a source, medium and campaign name (None: `(not set)`)."""
    s = (source or "(not set)").strip().lower()
    m = (medium or "(not set)").strip().lower()
    return _rule(source_category(s), s, m, (campaign or "").strip().lower())


def classify_traffic(
    campaign: Campaign | None,
    referrer: str | None,
    page_url: str | None,
    unwanted: Iterable[str] = DEFAULT_UNWANTED_REFERRALS,
) -> Traffic:
    """A session's source, medium, campaign, search term and channel (see the module's doc)."""
    name = campaign.name if campaign is not None else None
    source = campaign.source if campaign is not None else None
    medium = campaign.medium if campaign is not None else None
    query = _query(page_url)
    for parameter, (ad_source, ad_medium) in CLICK_IDS.items():
        if parameter in query:
            source, medium = ad_source, ad_medium
            break
    term = campaign.term if campaign is not None else None
    if source is None and medium is None:
        host = _host(referrer)
        if not host or host == _host(page_url) or _host_in(host, unwanted):
            source, medium = "(direct)", "(none)"
        else:
            try:
                path = urlsplit(referrer).path if referrer else ""
            except ValueError:
                path = ""
            found = find_referer(host, path)
            if found is not None and found.medium == "search":
                source, medium = _NOT_NAME.sub("", found.name.lower()), "organic"
                term = _search_term(referrer, found.parameters) or term
            else:
                source, medium = host, "referral"
    source = (source or "(not set)").strip().lower()[:256]
    medium = (medium or "(not set)").strip().lower()[:256]
    channel = _rule(source_category(source), source, medium, (name or "").strip().lower())
    return Traffic(source, medium, name, term, channel)


def _search_term(referrer: str | None, parameters: tuple[str, ...]) -> str | None:
    query = _query(referrer)
    for parameter in parameters:
        values = query.get(parameter)
        if values and values[0].strip():
            return values[0].strip()[:256]
    return None


def classify_channel(
    campaign: Campaign | None,
    referrer: str | None,
    page_url: str | None,
    unwanted: Iterable[str] = DEFAULT_UNWANTED_REFERRALS,
) -> str:
    return classify_traffic(campaign, referrer, page_url, unwanted).channel
