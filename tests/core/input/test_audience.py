"""Audience enrichment: user agents (ua-parser's own test strings), the device rule, Client Hints,
bots, countries from the shipped RIR data and from a MaxMind database written here, languages,
the IP modes, consent, and the audience through the engine into sessions, macros, breakdowns
and counters.

The fixture tests/fixtures/useragents/uap-core-sample.yaml was cut from uap-core's tests (its
header says how); regenerate it from a newer uap-core the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.audience import EnrichmentSpec, language_of
from streams.core.input.decode import decode_message
from streams.core.input.geo import GeoLookup, mask, parse_address
from streams.core.input.useragent import classify
from streams.core.measures.counters import increments
from streams.offline.run import OfflineRun

SAMPLE = yaml.safe_load(
    (Path(__file__).parents[2] / "fixtures" / "useragents" / "uap-core-sample.yaml").read_text()
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1"
)
IPAD = IPHONE.replace("iPhone; CPU iPhone OS", "iPad; CPU OS")
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
REDUCED_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize("case", SAMPLE["browsers"], ids=lambda c: c["family"])
def test_ua_parsers_own_browser_cases(case: dict[str, str]) -> None:
    agent = classify(case["user_agent"])
    assert (agent.browser, agent.browser_version) == (case["family"], f"{case['family']} {case['major']}")


@pytest.mark.parametrize("case", SAMPLE["os"], ids=lambda c: c["family"])
def test_ua_parsers_own_os_cases(case: dict[str, str]) -> None:
    assert classify(case["user_agent"]).os == case["family"]


@pytest.mark.parametrize("case", SAMPLE["bots"], ids=lambda c: c["user_agent"][:30])
def test_ua_parsers_spiders_are_bots(case: dict[str, str]) -> None:
    agent = classify(case["user_agent"])
    assert agent.bot and agent.device == "bot"


@pytest.mark.parametrize(
    ("user_agent", "mobile", "platform", "device", "os"),
    [
        (WINDOWS_CHROME, None, None, "desktop", "Windows"),
        (IPHONE, None, None, "mobile", "iOS"),
        (IPAD, None, None, "tablet", "iOS"),
        # Android without "Mobile" is a tablet (Google's advice to browsers); with it, a phone
        (REDUCED_ANDROID, None, None, "tablet", "Android"),
        (REDUCED_ANDROID.replace("Safari", "Mobile Safari"), None, None, "mobile", "Android"),
        # Client Hints win over the reduced user agent: mobile, and the real platform
        (REDUCED_ANDROID, True, "Android", "mobile", "Android"),
        (WINDOWS_CHROME, False, "macOS", "desktop", "Mac OS X"),
        (None, True, None, "mobile", None),
        (GOOGLEBOT, None, None, "bot", None),
        ("curl/8.5.0", None, None, "bot", None),
        ("python-requests/2.31.0", None, None, "bot", None),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/120.0.0.0",
            None,
            None,
            "bot",
            "Linux",
        ),
    ],
)
def test_the_device_rule_on_top_of_ua_parser(
    user_agent: str | None, mobile: bool | None, platform: str | None, device: str, os: str | None
) -> None:
    agent = classify(user_agent, mobile, platform)
    assert (agent.device, agent.os) == (device, os)
    assert agent.bot == (device == "bot")


def test_no_user_agent_says_nothing() -> None:
    assert classify(None) == (None, None, None, None, False)


def test_countries_from_the_shipped_registry_data() -> None:
    geo = GeoLookup()
    # iptocc's own documented examples, and registry blocks of GB, DE, FR, ES (RIPE) and IPv6
    assert geo.lookup("8.8.8.8").country == "US"
    assert geo.lookup("1.0.16.1").country == "JP"
    assert geo.lookup("81.2.69.142").country == "GB"
    assert geo.lookup("5.9.0.1").country == "DE"
    assert geo.lookup("62.4.0.1").country == "FR"
    assert geo.lookup("::ffff:80.58.0.1").country == "ES"  # an IPv4-mapped IPv6 address
    assert geo.lookup("2001:4860::1").country == "US"
    # private, loopback and documentation ranges have no country; garbage neither
    for address in ("10.1.2.3", "127.0.0.1", "192.0.2.7", "2001:db8::1", "not an address", ""):
        assert geo.lookup(address).country is None


def write_mmdb(path: Path) -> Path:
    """A GeoIP2-City-shaped database: one IPv4 and one IPv6 network."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City", languages=["en"])
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
            "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
            "city": {"names": {"en": "London"}},
        },
    )
    writer.insert_network(IPSet(["2a02:ec0::/29"]), {"country": {"iso_code": "pt"}})
    writer.to_db_file(str(path))
    return path


def test_a_maxmind_database_replaces_the_shipped_data(tmp_path: Path) -> None:
    geo = GeoLookup(write_mmdb(tmp_path / "city.mmdb"))
    assert geo.source == "maxminddb:city.mmdb"
    assert geo.lookup("81.2.69.142") == ("GB", "ENG", "London")
    assert geo.lookup("2a02:ec0::5") == ("PT", None, None)
    assert geo.lookup("8.8.8.8").country is None  # not in this database: the shipped data is not asked
    enricher = EnrichmentSpec(geoip_database=str(tmp_path / "city.mmdb")).build()
    decoded = decode_message(event(context={"ip": "81.2.69.142"}), enricher=enricher)
    (click,) = decoded.events
    assert click.audience is not None
    assert (click.audience.country, click.audience.region, click.audience.city) == ("GB", "ENG", "London")


@pytest.mark.parametrize(
    ("locale", "language"),
    [("en-US", "en"), ("pt_BR", "pt"), ("DE", "de"), ("fil-PH", "fil"), ("", None), ("x", None), (7, None)],
)
def test_language_from_the_locale(locale: Any, language: str | None) -> None:
    assert language_of(locale) == language


def test_ip_modes() -> None:
    assert mask("81.2.69.142", "drop") is None
    assert mask("81.2.69.142", "truncate") == "81.2.69.0"
    assert mask("2a02:ec0:1:2:3:4:5:6", "truncate") == "2a02:ec0:1::"
    assert mask("::ffff:81.2.69.142", "truncate") == "81.2.69.0"
    assert mask("81.2.69.142", "keep") == "81.2.69.142"
    assert mask("garbage", "truncate") is None
    assert parse_address("[2a02:ec0::1]") is not None


def event(n: int = 1, context: dict[str, Any] | None = None, **fields: Any) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e{n}",
            "event": "page_view",
            "anonymous_id": "a1",
            "timestamp": "2024-03-13T10:00:00Z",
            "context": context or {},
            **fields,
        }
    )


@pytest.mark.parametrize(
    ("mode", "kept"), [("drop", None), ("truncate", "81.2.69.0"), ("keep", "81.2.69.142")]
)
def test_the_ip_mode_applies_after_the_lookup(mode: Any, kept: str | None) -> None:
    enricher = EnrichmentSpec(ip_mode=mode).build()
    (click,) = decode_message(
        event(context={"ip": "81.2.69.142", "locale": "en-GB"}), enricher=enricher
    ).events
    assert click.audience is not None and click.audience.country == "GB" and click.audience.language == "en"
    assert click.context.get("ip") == kept
    assert ("81.2.69.142" in orjson.dumps(click.to_json_dict()).decode()) == (mode == "keep")


def test_bots_are_excluded_and_counted_by_default_and_kept_when_included() -> None:
    raw = event(context={"user_agent": GOOGLEBOT})
    excluded = decode_message(raw, enricher=EnrichmentSpec().build())
    assert excluded.events == [] and excluded.screened == {"bot": 1} and excluded.rejects == []
    (kept,) = decode_message(raw, enricher=EnrichmentSpec(bots="include").build()).events
    assert kept.audience is not None and kept.audience.bot and kept.audience.device == "bot"


@pytest.mark.parametrize(
    ("consent", "screened"),
    [
        ({"categoryPreferences": {"Analytics": False, "Advertising": True}}, True),
        ({"categoryPreferences": {"analytics": "denied"}}, True),
        ({"categoryPreferences": {"Analytics": True, "Advertising": False}}, False),
        ({"categoryPreferences": {"Advertising": False}}, False),  # analytics not asked about
        ("yes", False),
    ],
)
def test_consent_that_denies_analytics_is_counted_and_not_processed(consent: Any, screened: bool) -> None:
    decoded = decode_message(event(context={"consent": consent}), enricher=EnrichmentSpec().build())
    assert (decoded.screened == {"consent": 1}) == screened
    assert len(decoded.events) == (0 if screened else 1)


def test_a_configured_consent_field() -> None:
    spec = EnrichmentSpec(consent_field=("properties", "consent", "analytics_storage"))
    denied = event(properties={"consent": {"analytics_storage": "denied"}})
    granted = event(properties={"consent": {"analytics_storage": "granted"}})
    assert decode_message(denied, enricher=spec.build()).screened == {"consent": 1}
    assert len(decode_message(granted, enricher=spec.build()).events) == 1


def test_a_producers_own_audience_is_kept_and_completed() -> None:
    raw = event(
        context={"user_agent": WINDOWS_CHROME, "ip": "81.2.69.142"},
        audience={"country": "IE", "device": "tablet"},
    )
    (click,) = decode_message(raw, enricher=EnrichmentSpec().build()).events
    assert click.audience is not None
    assert (click.audience.country, click.audience.device, click.audience.browser) == (
        "IE",
        "tablet",
        "Chrome",
    )


CONFIG = compile_config(
    parse_config(
        """
version: 1
goals:
  - {name: purchase, match: {event: purchase}, value: properties.value}
funnels:
  - name: checkout
    steps:
      - {name: view, match: {event: product_view}}
      - {name: buy, match: {goal: purchase}}
    breakdowns: [audience.browser, audience.device, audience.country, channel]
alerts:
  - {funnel: checkout, step: buy, window: 15m, baseline: 1h, min_entered: 5, relative_drop: 0.5,
     by: [audience.device]}
"""
    )
)


def visit(person: str, user_agent: str, ip: str, locale: str, start: int) -> list[bytes]:
    """A product view, then a purchase a minute later; the second event's agent differs: a
    session's audience is its first event's."""
    base = {"anonymous_id": person, "page": {"url": "https://shop.example/p/1"}}
    return [
        orjson.dumps(
            {
                **base,
                "event_id": f"{person}-1",
                "event": "product_view",
                "timestamp": start,
                "context": {"user_agent": user_agent, "ip": ip, "locale": locale},
            }
        ),
        orjson.dumps(
            {
                **base,
                "event_id": f"{person}-2",
                "event": "purchase",
                "timestamp": start + 60_000,
                "context": {"user_agent": WINDOWS_CHROME},
                "properties": {"value": 10.0},
            }
        ),
    ]


def test_the_audience_reaches_breakdowns_sessions_macros_and_counters() -> None:
    run = OfflineRun(CONFIG, partitions=2, enrichment=EnrichmentSpec())
    start = 1_710_324_000_000
    lines = visit("p1", IPHONE, "81.2.69.142", "en-GB", start) + visit(
        "p2", GOOGLEBOT, "8.8.8.8", "en", start
    )
    lines += visit("p3", IPAD, "5.9.0.1", "de-DE", start)
    outputs = [o.model_dump(mode="json") for line in lines for o in run.feed(line)]
    outputs += [o.model_dump(mode="json") for o in run.flush()]
    assert run.screened == {"bot": 1}  # the crawler's product view; its purchase is a Chrome's
    macros = {o["anonymous_id"]: o for o in outputs if o["type"] == "macro"}
    sessions = {o["anonymous_id"]: o for o in outputs if o["type"] == "session"}
    micros = [o for o in outputs if o["type"] == "micro" and o["anonymous_id"] == "p1"]
    iphone = {
        "browser": "Mobile Safari",
        "browser_version": "Mobile Safari 17",
        "os": "iOS",
        "device": "mobile",
        "country": "GB",
        "language": "en",
    }
    assert macros["p1"]["audience"] == sessions["p1"]["audience"] == iphone
    assert macros["p3"]["audience"]["device"] == "tablet" and macros["p3"]["audience"]["country"] == "DE"
    assert micros[0]["breakdowns"] == {
        "audience.browser": "Mobile Safari",
        "audience.device": "mobile",
        "audience.country": "GB",
        "channel": "Direct",
    }
    # p2's session opened with its purchase (the crawler's view was screened): a desktop Chrome
    assert sessions["p2"]["audience"]["device"] == "desktop" and "country" not in sessions["p2"]["audience"]
    fields = {
        op.field
        for output in outputs
        for op in increments(output, CONFIG, 60_000)
        if op.key.startswith("c:") and op.key.endswith(str(start // 86_400_000 * 86_400_000))
    }
    assert "s|audience.device=mobile" in fields and "s|audience.device=tablet" in fields
    assert (
        "n:purchase|audience.country=GB" in fields and "v:purchase|audience.browser=Mobile Safari" in fields
    )
    # no page_view event in these sessions: each is a bounce (one page view or less)
    assert {"b|audience.language=de", "pv|audience.language=de", "dur|audience.language=de"} <= fields


def test_audience_fields_are_breakdown_paths_in_the_configuration() -> None:
    assert CONFIG.funnels[0].breakdowns[:3] == ("audience.browser", "audience.device", "audience.country")
