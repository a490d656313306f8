"""GA4's default channel grouping: one case per rule and its edge cases, written from GA4's
published definitions ("[GA4] Default channel group", manual traffic), in GA4's order; then the
source and medium a session gets from its click id, campaign or referrer."""

from __future__ import annotations

import pytest

from streams.core.input.channel import (
    CHANNELS,
    DEFAULT_UNWANTED_REFERRALS,
    classify_traffic,
    default_channel_group,
    find_referer,
    source_category,
)
from streams.core.input.event import Campaign

# (source, medium, campaign, expected channel): the rule that decides each, in GA4's order
RULES = [
    # Direct: source exactly "(direct)" and medium "(not set)" or "(none)"
    ("(direct)", "(none)", None, "Direct"),
    ("(direct)", "(not set)", None, "Direct"),
    ("(direct)", "cpc", None, "Paid Other"),  # a medium: no longer Direct
    # Cross-network: campaign name contains "cross-network" (before every paid rule)
    ("google", "cpc", "pmax-cross-network", "Cross-network"),
    # Paid Shopping: (shopping site or a campaign name with "shop"/"shopping") and a paid medium
    ("amazon", "cpc", None, "Paid Shopping"),
    ("google", "ppc", "summer-shop", "Paid Shopping"),
    ("google", "cpc", "shopping_q3", "Paid Shopping"),
    ("google", "cpc", "eshop", "Paid Shopping"),  # [^a-df-z] lets "e" (e-shop) stand before "shop"
    ("google", "cpc", "bookshop", "Paid Search"),  # ... but not "k": not a shopping campaign
    # Paid Search: a search site and a medium matching ^(.*cp.*|ppc|retargeting|paid.*)$
    ("google", "cpc", None, "Paid Search"),
    ("bing", "paidsearch", None, "Paid Search"),
    ("duckduckgo.com", "retargeting", None, "Paid Search"),
    ("Google", "CPC", None, "Paid Search"),  # GA4's definitions are case-insensitive
    # Paid Social
    ("facebook", "paid_social", None, "Paid Social"),
    ("fb", "cpm_social", None, "Paid Social"),  # ".*cp.*" matches before Display's exact "cpm"
    ("linkedin.com", "cpc", None, "Paid Social"),
    # Paid Video
    ("youtube", "cpv", None, "Paid Video"),
    ("vimeo.com", "paid", None, "Paid Video"),
    # Display: medium one of display, banner, expandable, interstitial, cpm
    ("dv360", "display", None, "Display"),
    ("somesite", "banner", None, "Display"),
    ("somesite", "interstitial", None, "Display"),
    ("somesite", "cpm", None, "Display"),  # "cpm" is paid too, but Display comes before Paid Other
    # Paid Other: a paid medium from no known site
    ("partner-network", "cpc", None, "Paid Other"),
    ("partner-network", "paid-anything", None, "Paid Other"),
    # Organic Shopping: a shopping site, or a shopping campaign name
    ("ebay.de", "referral", None, "Organic Shopping"),
    ("newsletter", "email", "black-friday-shop", "Organic Shopping"),  # before Email
    # Organic Social: a social site, or a social medium
    ("instagram", "referral", None, "Organic Social"),
    ("anything", "social-network", None, "Organic Social"),
    ("anything", "sm", None, "Organic Social"),
    # Organic Video: a video site, or a medium containing "video"
    ("youtube.com", "referral", None, "Organic Video"),
    ("anything", "video_post", None, "Organic Video"),
    # Organic Search: a search site, or medium exactly "organic"
    ("google", "organic", None, "Organic Search"),
    ("ecosia.org", "referral", None, "Organic Search"),
    ("my-engine", "organic", None, "Organic Search"),
    # Referral: medium one of referral, app, link
    ("blog.example.org", "referral", None, "Referral"),
    ("partner", "app", None, "Referral"),
    ("partner", "link", None, "Referral"),
    # Email: source or medium email, e-mail, e_mail, e mail
    ("newsletter", "email", None, "Email"),
    ("e-mail", "(not set)", None, "Email"),
    ("crm", "e mail", None, "Email"),
    # Affiliates
    ("awin", "affiliate", None, "Affiliates"),
    # Audio
    ("spotify-ads", "audio", None, "Audio"),
    # SMS
    ("sms", "(not set)", None, "SMS"),
    ("provider", "sms", None, "SMS"),
    # Mobile Push Notifications: medium ends with "push", contains "mobile" or "notification"
    ("app", "web-push", None, "Mobile Push Notifications"),
    ("app", "mobile-message", None, "Mobile Push Notifications"),
    ("firebase", "(not set)", None, "Mobile Push Notifications"),
    # Unassigned: nothing holds
    ("someone", "something", None, "Unassigned"),
    (None, None, None, "Unassigned"),  # (not set) / (not set)
]


@pytest.mark.parametrize(("source", "medium", "campaign", "channel"), RULES)
def test_ga4_rules(source: str | None, medium: str | None, campaign: str | None, channel: str) -> None:
    assert default_channel_group(source, medium, campaign) == channel


def test_every_channel_has_a_case() -> None:
    assert {c for *_, c in RULES} == set(CHANNELS)


def test_source_categories_come_from_the_shipped_lists() -> None:
    assert source_category("google") == "search"  # referer-parser's search engine names
    assert source_category("www.google.co.uk") == "search"  # and their domains
    assert source_category("l.facebook.com") == "social"  # a subdomain of a listed one
    assert source_category("mail.google.com") is None  # listed as webmail: not Google search
    assert source_category("youtube.com") == "video"  # ours over referer-parser's "social"
    assert source_category("amazon.fr") == "shopping"
    assert source_category("blog.example.org") is None
    referer = find_referer("www.bing.com", "/images/search")
    assert referer is not None and referer.medium == "search"


SHOP = "https://shop.example/p/1"


@pytest.mark.parametrize(
    ("campaign", "referrer", "page_url", "expected"),
    [
        # no campaign, no referrer: (direct) / (none)
        (None, None, SHOP, ("(direct)", "(none)", None, "Direct")),
        # the shop's own pages refer to it: direct
        (None, "https://www.shop.example/cart", SHOP, ("(direct)", "(none)", None, "Direct")),
        # a search engine: the engine / organic, with the term its URL carries
        (
            None,
            "https://www.google.de/search?q=red+shoes",
            SHOP,
            ("google", "organic", "red shoes", "Organic Search"),
        ),
        (
            None,
            "https://search.yahoo.com/search?p=shoes",
            SHOP,
            ("yahoo", "organic", "shoes", "Organic Search"),
        ),
        (None, "https://duckduckgo.com/", SHOP, ("duckduckgo", "organic", None, "Organic Search")),
        # a social site or any other: the host / referral, then the rules
        (None, "https://l.facebook.com/l.php", SHOP, ("l.facebook.com", "referral", None, "Organic Social")),
        (None, "https://blog.example.org/post", SHOP, ("blog.example.org", "referral", None, "Referral")),
        (None, "https://chatgpt.com/", SHOP, ("chatgpt.com", "referral", None, "Referral")),
        # unwanted referrals: payment providers and 3-D Secure pages returning to the shop
        (None, "https://www.paypal.com/checkoutnow?token=x", SHOP, ("(direct)", "(none)", None, "Direct")),
        (None, "https://acs.cardinalcommerce.com/3ds", SHOP, ("(direct)", "(none)", None, "Direct")),
        # utm campaign wins over the referrer
        (
            Campaign(source="newsletter", medium="email", name="spring"),
            "https://mail.google.com/",
            SHOP,
            ("newsletter", "email", None, "Email"),
        ),
        # a utm source without a medium: (not set)
        (Campaign(source="partner"), None, SHOP, ("partner", "(not set)", None, "Unassigned")),
        # click ids: auto-tagged paid search, over utm source and medium (GA4's default)
        (None, "https://www.google.com/", SHOP + "?gclid=abc", ("google", "cpc", None, "Paid Search")),
        (None, None, SHOP + "?msclkid=abc", ("bing", "cpc", None, "Paid Search")),
        (None, None, SHOP + "?gbraid=abc", ("google", "cpc", None, "Paid Search")),
        (
            Campaign(source="newsletter", medium="email", name="shop-week"),
            None,
            SHOP + "?gclid=abc",
            ("google", "cpc", None, "Paid Shopping"),
        ),
        # fbclid is not a paid click id: Facebook adds it to every outbound link
        (
            None,
            "https://l.facebook.com/",
            SHOP + "?fbclid=x",
            ("l.facebook.com", "referral", None, "Organic Social"),
        ),
        # a relative page URL: the referrer's host cannot be compared, it is a referral
        (None, "https://news.example.com/a", "/p/1", ("news.example.com", "referral", None, "Referral")),
        # a malformed referrer is no referrer
        (None, "http://[::1", SHOP, ("(direct)", "(none)", None, "Direct")),
    ],
)
def test_a_sessions_source_medium_term_and_channel(
    campaign: Campaign | None, referrer: str | None, page_url: str, expected: tuple[str, str, str | None, str]
) -> None:
    traffic = classify_traffic(campaign, referrer, page_url)
    assert (traffic.source, traffic.medium, traffic.term, traffic.channel) == expected


def test_unwanted_referrals_are_configurable() -> None:
    referrer = "https://pay.example-psp.com/return"
    assert classify_traffic(None, referrer, SHOP).channel == "Referral"
    unwanted = (*DEFAULT_UNWANTED_REFERRALS, "example-psp.com")
    assert classify_traffic(None, referrer, SHOP, unwanted).channel == "Direct"


def test_the_referers_json_the_engine_reads_is_the_vendored_referers_yml() -> None:
    """The engine reads referer-parser's list as JSON (parsed at each process's start in a fifth
    of the instructions); referers.yml stays the verbatim copy. Updated one without the other,
    the channels would follow the stale file."""
    from streams.tools.referers_json import FOLDER, as_json, from_yaml

    written = (FOLDER / "referers.json").read_bytes()
    assert written == as_json(from_yaml()), (
        "referers.json differs from referers.yml: run `python -m streams.tools.referers_json`"
    )
