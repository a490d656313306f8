"""Which channel brought a session: its campaign, else the class of its referrer."""

from __future__ import annotations

from urllib.parse import urlsplit

from streams.core.input.event import Campaign

SEARCH_ENGINES = (
    "google.",
    "bing.",
    "duckduckgo.",
    "yahoo.",
    "baidu.",
    "yandex.",
    "ecosia.",
    "qwant.",
)
SOCIAL_NETWORKS = (
    "facebook.",
    "instagram.",
    "t.co",
    "twitter.",
    "x.com",
    "linkedin.",
    "lnkd.in",
    "reddit.",
    "pinterest.",
    "tiktok.",
    "youtube.",
    "youtu.be",
)
WEBMAIL = ("mail.google.", "outlook.", "mail.yahoo.", "webmail.", "mail.")

_MEDIUM_CHANNELS = {
    "cpc": "paid_search",
    "ppc": "paid_search",
    "paidsearch": "paid_search",
    "sem": "paid_search",
    "email": "email",
    "e-mail": "email",
    "newsletter": "email",
    "social": "social",
    "paid_social": "paid_social",
    "paidsocial": "paid_social",
    "display": "display",
    "banner": "display",
    "cpm": "display",
    "affiliate": "affiliate",
    "referral": "referral",
    "organic": "search",
}


def _host(url: str | None) -> str:
    if not url:
        return ""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.removeprefix("www.")


def _host_in(host: str, names: tuple[str, ...]) -> bool:
    """ "google." matches any google.* host or subdomain; "t.co" only that host and its subdomains."""
    dotted = f".{host}"
    return any(f".{n}" in dotted if n.endswith(".") else (host == n or host.endswith(f".{n}")) for n in names)


def classify_channel(campaign: Campaign | None, referrer: str | None, page_url: str | None) -> str:
    if campaign is not None and (campaign.medium or campaign.source):
        medium = (campaign.medium or "").lower()
        return _MEDIUM_CHANNELS.get(medium, "campaign")
    host = _host(referrer)
    if not host or host == _host(page_url):
        return "direct"
    if _host_in(host, WEBMAIL):
        return "email"
    if _host_in(host, SEARCH_ENGINES):
        return "search"
    if _host_in(host, SOCIAL_NETWORKS):
        return "social"
    return "referral"
