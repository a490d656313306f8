"""A user agent to browser, OS and device class, with ua-parser's rules and a device rule on top.

ua-parser (the Browserscope/uap-core regexes; `ua-parser-builtins` ships them precompiled and
`ua-parser-rs` matches them natively, about 12 us per new string here against about 2 ms for the
pure-Python resolver) names the browser family and version, the OS family and the device's family,
brand and model, but has no device class. The class is a rule set over what it found:

- `bot`: ua-parser's device family `Spider` (its bot and crawler patterns), a headless browser, or
  an HTTP library's agent;
- `tablet`: an iPad, a Kindle or Silk, an Android device without `Mobile` in its user agent
  (Google's guidance to Android browsers), or a device model that says tablet;
- `mobile`: `Mobi` in the user agent (MDN's advice), a phone OS, or Client Hints' `mobile: true`;
- `desktop`: anything else a browser sent.

Matomo's device detector (`device-detector` on PyPI) has classes and bot lists of its own, but
took about 17 ms per user agent here, 1,500 times ua-parser with its native matcher: it was not
chosen. Results are cached per distinct user agent (and client hints), so a repeat costs a dict
lookup: most sessions of a day share a few thousand user agents.

User-Agent Client Hints (Segment's `context.userAgentData`: `mobile`, `platform`) win over the
user agent where they are present: Chrome's reduced user agent freezes the OS version and hides
the device model, and may claim `Windows NT 10.0` on Windows 11 or `Android 10; K` on any phone.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from ua_parser import parse as _parse

BOT = "bot"
TABLET = "tablet"
MOBILE = "mobile"
DESKTOP = "desktop"

MAX_USER_AGENT = 1024
"""Longer strings are cut before parsing: no real browser sends more, and regexes cost by length."""
CACHE_SIZE = 16_384

_HEADLESS = frozenset({"HeadlessChrome", "PhantomJS", "Electron"})
_LIBRARY = re.compile(
    r"(?i)^(curl|wget|python-requests|python-urllib|aiohttp|httpx|go-http-client|java/|okhttp|"
    r"axios|node-fetch|libwww-perl|apache-httpclient|postmanruntime|insomnia)"
)


def is_http_library(user_agent: str) -> bool:
    """An HTTP library's or tool's own agent (curl, requests, okhttp...): the sender of a
    server-side call, not the visitor the call is about."""
    return bool(_LIBRARY.match(user_agent))


_BOT_WORDS = re.compile(r"(?i)bot\b|crawl|spider|slurp|scrap|preview|monitor|lighthouse")
_TABLET_MODEL = re.compile(r"(?i)tablet|\btab\b|ipad|kindle|silk|playbook|nexus (7|9|10)|sm-t\d|gt-p\d")
_PHONE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS"}
)
_HINT_PLATFORMS = {
    "macos": "Mac OS X",
    "windows": "Windows",
    "android": "Android",
    "ios": "iOS",
    "chrome os": "Chrome OS",
    "chromeos": "Chrome OS",
    "linux": "Linux",
}
"""Client Hints' `Sec-CH-UA-Platform` values in ua-parser's OS family names, so one OS has one
name whichever of the two said it."""


class Agent(NamedTuple):
    browser: str | None
    browser_version: str | None
    os: str | None
    device: str | None
    bot: bool


def classify(
    user_agent: str | None, mobile_hint: bool | None = None, platform_hint: str | None = None
) -> Agent:
    """What a user agent (and the event's Client Hints, when it carries them) says."""
    if not user_agent and mobile_hint is None and platform_hint is None:
        return Agent(None, None, None, None, False)
    return _classify((user_agent or "")[:MAX_USER_AGENT], mobile_hint, platform_hint)


@lru_cache(maxsize=CACHE_SIZE)
def _classify(user_agent: str, mobile_hint: bool | None, platform_hint: str | None) -> Agent:
    parsed = _parse(user_agent) if user_agent else None
    agent = parsed.user_agent if parsed is not None else None
    os_found = parsed.os if parsed is not None else None
    device = parsed.device if parsed is not None else None
    browser = agent.family if agent is not None and agent.family != "Other" else None
    version = f"{browser} {agent.major}" if browser and agent is not None and agent.major else browser
    os_name = os_found.family if os_found is not None and os_found.family != "Other" else None
    if platform_hint:
        os_name = _HINT_PLATFORMS.get(platform_hint.strip().lower(), platform_hint.strip()[:64]) or os_name
    family = device.family if device is not None else ""
    model = " ".join(p for p in (family, device.model if device is not None else None) if p)
    is_bot = bool(user_agent) and (
        family == "Spider"
        or browser in _HEADLESS
        or bool(_LIBRARY.match(user_agent))
        or (browser is None and bool(_BOT_WORDS.search(user_agent)))
    )
    if is_bot:
        kind = BOT
    elif (
        _TABLET_MODEL.search(model)
        or _TABLET_MODEL.search(user_agent)
        or (
            os_name == "Android"
            and (mobile_hint is False or (mobile_hint is None and "Mobile" not in user_agent))
        )
    ):
        kind = TABLET
    elif mobile_hint or "Mobi" in user_agent or (mobile_hint is None and os_name in _PHONE_OS):
        kind = MOBILE
    elif user_agent or mobile_hint is False:
        kind = DESKTOP
    else:
        kind = None
    return Agent(browser, version, os_name, kind, is_bot)


def cache_info() -> str:
    return str(_classify.cache_info())
