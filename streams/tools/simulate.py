"""A realistic shop's clickstream: channels, landing pages, platforms, a checkout funnel with
drop-off at every step, secondary actions, occasional bad events, an optional planted incident.

People browse anonymously on a device (events carry `anonymous_id` only), most buyers sign in
at checkout (a `login` event with both ids, then both ids), some orders are confirmed by the
backend with the user id alone, returning customers may still be signed in, and some come back
on a second device: the identity stitching the engine has to do (`stitched=False` gives the
older pattern, one id per person).

Deterministic for a seed, so tests and benchmarks can replay exactly the same traffic.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

PLATFORMS = ("web", "mobile", "ios", "android")
PLATFORM_WEIGHTS = (0.45, 0.25, 0.15, 0.15)
# (campaign or None, referrer, weight)
CHANNELS: tuple[tuple[dict[str, str] | None, str | None, float], ...] = (
    ({"source": "google", "medium": "cpc", "name": "spring"}, "https://www.google.com/", 0.25),
    (
        {"source": "facebook", "medium": "social", "name": "retarget"},
        "https://www.facebook.com/",
        0.15,
    ),
    ({"source": "newsletter", "medium": "email", "name": "weekly"}, None, 0.10),
    (None, "https://www.google.com/", 0.20),
    (None, "https://blog.example.org/best-headphones", 0.08),
    (None, None, 0.22),
)
LANDING_PAGES = ("/", "/p/42", "/p/7", "/sale", "/pricing")
USER_AGENTS = {
    "web": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{v}.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.{m} Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.{m} Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{v}.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (iPad; CPU OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.{m} Mobile/15E148 Safari/604.1",
    ),
    "ios": ("Shop/4.{m} (iPhone; iOS 17.{m}; Scale/3.00)",),
    "android": ("Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.{m})",),
}
BOT_AGENT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PLACES = (
    ("81.2.69.{n}", "en-GB", 0.3),
    ("5.9.{n}.7", "de-DE", 0.2),
    ("62.4.{n}.9", "fr-FR", 0.15),
    ("8.8.{n}.4", "en-US", 0.15),
    ("80.58.{n}.1", "es-ES", 0.1),
    ("2.16.{n}.1", "nl-NL", 0.05),
    ("2001:4860::{n:x}", "en-US", 0.05),
)
"""Opt-in audiences (`Simulator.audience`): public addresses of these countries' registry blocks
(GB, DE, FR, US, ES, NL), each person with their own last part, and a locale that fits."""
PRODUCTS = {"p42": 59.9, "p7": 129.0, "p13": 19.5, "p99": 249.0}


@dataclass(frozen=True)
class Incident:
    """Between `start` and `end`, on `platform`, the shipping -> payment rate falls to `payment_rate`."""

    start: datetime
    end: datetime
    platform: str = "mobile"
    payment_rate: float = 0.3


@dataclass
class FunnelRates:
    product_view: float = 0.75
    add_to_cart: float = 0.45
    shipping: float = 0.7
    payment: float = 0.8
    purchase: float = 0.85
    newsletter: float = 0.05
    share: float = 0.03
    tutorial: float = 0.04
    refund: float = 0.02
    signup: float = 0.2


@dataclass(frozen=True)
class VariantSplit:
    """Opt-in A/B traffic: each person is assigned one of `variants` (by a hash of the seed and
    the person, so the traffic is otherwise exactly what it is without a split), carried on
    every event as `properties.<field>`; for `treated`, the rate of `step` (a `FunnelRates`
    field) is multiplied by `lift`, capped at 1."""

    variants: tuple[str, ...] = ("control", "treatment")
    field: str = "variant"
    treated: str = "treatment"
    step: str = "purchase"
    lift: float = 1.0


CHECKOUT_EVENTS = frozenset({"login", "shipping_details", "payment_details", "purchase"})
HOURLY_TRAFFIC = (
    0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.3, 0.55, 0.8, 0.95, 1.0, 1.05,
    1.15, 1.1, 1.0, 0.95, 1.0, 1.1, 1.3, 1.55, 1.6, 1.4, 0.95, 0.5,
)  # fmt: skip
"""Relative traffic by hour of the day (UTC, a European shop): quiet nights, a lunch bump, an
evening peak."""
WEEKDAY_TRAFFIC = (1.0, 0.97, 0.97, 1.0, 0.92, 0.85, 1.12)
"""Relative traffic Monday to Sunday: a slack Saturday, Sunday evening shopping."""


@dataclass(frozen=True)
class ShopTiming:
    """Realistic timing: visits follow the hour of day and the weekday, people come back after
    minutes, hours or days, and a cart can wait for a later visit, so decision times run from
    minutes to days. Off by default (`Simulator.timing`): the seeded tests keep their traffic."""

    gaps: tuple[tuple[float, float, float], ...] = (
        (0.35, 1_200.0, 0.8),
        (0.35, 14_400.0, 0.7),
        (0.3, 172_800.0, 0.6),
    )
    """Time to the next visit: (weight, median seconds, log-normal sigma): minutes, hours, days."""
    checkout_now: float = 0.45
    """Of those who mean to buy what they put in the cart: check out in the same visit (the
    others come back for it on their next visit, if there is one)."""
    hourly: tuple[float, ...] = HOURLY_TRAFFIC
    weekday: tuple[float, ...] = WEEKDAY_TRAFFIC

    def intensity(self, moment: datetime) -> float:
        """Relative traffic at a moment (hours interpolated)."""
        hour = moment.hour + moment.minute / 60
        low = self.hourly[int(hour) % 24]
        high = self.hourly[(int(hour) + 1) % 24]
        return (low + (high - low) * (hour - int(hour))) * self.weekday[moment.weekday()]

    @property
    def peak(self) -> float:
        return max(self.hourly) * max(self.weekday)

    def seasonal(self, rng: random.Random, start: datetime, seconds: float) -> datetime:
        """A moment in [start, start + seconds) drawn with the hourly and weekly profile."""
        for _ in range(100):
            moment = start + timedelta(seconds=rng.uniform(0, seconds))
            if rng.random() * self.peak < self.intensity(moment):
                return moment
        return moment

    def next_visit(self, rng: random.Random, after: datetime) -> datetime:
        """When someone comes back: a gap from the mixture, more likely at busy hours."""
        weights = [w for w, _, _ in self.gaps]
        for _ in range(20):
            _, median, sigma = rng.choices(self.gaps, weights)[0]
            moment = after + timedelta(seconds=median * math.exp(sigma * rng.gauss(0, 1)))
            if rng.random() * self.peak < self.intensity(moment):
                return moment
        return moment


@dataclass
class IdentityRates:
    """How people identify themselves (the `stitched` pattern)."""

    sign_in_at_checkout: float = 0.8
    """Of those who reach shipping without being signed in: sign in (else guest checkout)."""
    server_confirmed: float = 0.3
    """Purchases confirmed by the backend with the user id alone."""
    second_device: float = 0.2
    """Of returning visits: on another device."""
    still_signed_in: float = 0.4
    """Of returning visits on a device that signed in before: signed in from the start."""


@dataclass
class Simulator:
    seed: int = 1
    users: int = 1_000
    start: datetime = field(default_factory=lambda: datetime(2024, 3, 11, tzinfo=UTC))
    days: float = 7.0
    sessions_per_user: float = 2.0
    anonymous_share: float = 0.3
    explicit_session_share: float = 0.5
    bad_rate: float = 0.0
    gap_scale: float = 1.0
    """Multiplies the seconds between a session's events (the live demo compresses time)."""
    incident: Incident | None = None
    rates: FunnelRates = field(default_factory=FunnelRates)
    stitched: bool = True
    identity_rates: IdentityRates = field(default_factory=IdentityRates)
    split: VariantSplit | None = None
    """Opt-in: a variant per person on every event, with a lift on one variant."""
    timing: ShopTiming | None = None
    """Opt-in realistic timing (seasonal visits, returns after minutes to days, carts that wait
    for a later visit); the live demo's traffic uses it."""
    audience: bool = False
    """Opt-in: every event carries its person's user agent (by platform, browser versions
    varying), client address and locale in `context` (drawn from the seed and the person, so the
    traffic is otherwise exactly what it is without)."""
    bot_share: float = 0.0
    """With `audience`: this share of the people are a crawler (Googlebot's user agent)."""

    def audience_of(self, u: int, platform: str) -> dict[str, str]:
        """Person `u`'s user agent, address and locale (empty without `audience`)."""
        if not self.audience:
            return {}
        own = random.Random(f"{self.seed}:audience:{u}")
        agent = own.choice(USER_AGENTS[platform]).format(v=own.randint(118, 125), m=own.randint(0, 4))
        if own.random() < self.bot_share:
            agent = BOT_AGENT
        address, locale, _ = own.choices(PLACES, [p[2] for p in PLACES])[0]
        return {"user_agent": agent, "ip": address.format(n=own.randint(1, 250)), "locale": locale}

    def variant_of(self, u: int) -> str | None:
        """Person `u`'s variant under `split` (None without one)."""
        split = self.split
        if split is None:
            return None
        return split.variants[zlib.crc32(f"{self.seed}:{u}".encode()) % len(split.variants)]

    def events(self) -> list[dict[str, Any]]:
        """Every valid event, ordered by time (ties by generation order)."""
        rng = random.Random(self.seed)
        out: list[tuple[datetime, int, dict[str, Any]]] = []
        counter = 0
        for u in range(self.users):
            platform = rng.choices(PLATFORMS, PLATFORM_WEIGHTS)[0]
            sessions = max(1, round(rng.expovariate(1 / self.sessions_per_user)))
            if not self.stitched:
                identity: dict[str, str] = (
                    {"anonymous_id": f"anon-{self.seed}-{u:06d}"}
                    if rng.random() < self.anonymous_share
                    else {"user_id": f"user_{self.seed}_{u:06d}"}
                )
                visits: list[tuple[dict[str, str], str | None]] = [(identity, None)] * sessions
            else:
                visits = self._visits(rng, u, sessions)
            if self.timing is None:
                starts = sorted(
                    self.start + timedelta(seconds=rng.uniform(0, self.days * 86_400))
                    for _ in range(sessions)
                )
            else:
                starts = self.visit_times(rng, sessions, self.timing)
                visits = visits[: len(starts)]
            state: dict[str, Any] = {}
            for s, ((identity, user), at) in enumerate(zip(visits, starts, strict=True)):
                for event in self.session(rng, identity, platform, u, s, at, user, state):
                    out.append((event.pop("_at"), counter, event))
                    counter += 1
        out.sort(key=lambda item: (item[0], item[1]))
        return [event for _, _, event in out]

    def visit_times(
        self, rng: random.Random, sessions: int, timing: ShopTiming, first: datetime | None = None
    ) -> list[datetime]:
        """A person's visits: the first with the daily and weekly profile (or at `first`), each
        next one after a gap of minutes to days; none after the simulated period."""
        end = self.start + timedelta(days=self.days)
        at = first or timing.seasonal(rng, self.start, self.days * 86_400)
        starts = [at]
        for _ in range(sessions - 1):
            at = timing.next_visit(rng, at + timedelta(minutes=10))
            if first is None and at >= end:
                break
            starts.append(at)
        return starts

    def stitched_visits(
        self, rng: random.Random, u: int, sessions: int
    ) -> list[tuple[dict[str, str], str | None]]:
        """Person `u`'s visits under the stitched identity pattern (for live traffic)."""
        return self._visits(rng, u, sessions)

    def _visits(self, rng: random.Random, u: int, sessions: int) -> list[tuple[dict[str, str], str | None]]:
        """Per visit (in time order): the ids its events start with, and the user who may sign in
        (None for a visitor who never does)."""
        user = None if rng.random() < self.anonymous_share else f"user_{self.seed}_{u:06d}"
        devices = [f"anon-{self.seed}-{u:06d}", f"anon-{self.seed}-{u:06d}-b"]
        visits: list[tuple[dict[str, str], str | None]] = []
        for s in range(sessions):
            device = devices[1] if s > 0 and rng.random() < self.identity_rates.second_device else devices[0]
            signed_in = (
                user is not None
                and any(v[0]["anonymous_id"] == device and "user_id" in v[0] for v in visits)
                and rng.random() < self.identity_rates.still_signed_in
            )
            ids = {"anonymous_id": device, **({"user_id": user} if signed_in and user else {})}
            visits.append((ids, user))
        return visits

    def lines(self) -> Iterator[bytes]:
        """NDJSON lines, one event each, with bad ones mixed in at `bad_rate`."""
        rng = random.Random(self.seed + 7919)
        for event in self.events():
            if self.bad_rate and rng.random() < self.bad_rate:
                yield bad_event(rng, event)
            yield orjson.dumps(event)

    def session(
        self,
        rng: random.Random,
        identity: dict[str, str],
        platform: str,
        u: int,
        s: int,
        at: datetime,
        user: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One visit's events, each with its moment in "_at" (a datetime). With `user`, an
        anonymous visitor may sign in at checkout as that user. With `state` (the person's, kept
        across visits) and `timing`, a cart can wait for a later visit."""
        identity = dict(identity)
        campaign, referrer, _ = rng.choices(CHANNELS, [c[2] for c in CHANNELS])[0]
        landing = rng.choice(LANDING_PAGES)
        session_id = f"sess-{self.seed}-{u}-{s}" if rng.random() < self.explicit_session_share else None
        query = ""
        if campaign is not None and rng.random() < 0.5:
            query = (
                f"?utm_source={campaign['source']}&utm_medium={campaign['medium']}"
                f"&utm_campaign={campaign['name']}"
            )
            campaign = None  # carried only by the URL: the engine derives it
        seq = 0
        audience = self.audience_of(u, platform)
        variant_name = self.variant_of(u)
        variant = {self.split.field: variant_name} if self.split is not None and variant_name else {}

        def emit(
            name: str,
            path: str,
            properties: dict[str, Any] | None = None,
            first: bool = False,
            ids: dict[str, str] | None = None,
        ) -> dict[str, Any]:
            nonlocal at, seq
            # with realistic timing the checkout pages follow each other within seconds
            quick = self.timing is not None and name in CHECKOUT_EVENTS
            at += timedelta(seconds=rng.uniform(5, 30 if quick else 120) * self.gap_scale)
            seq += 1
            event: dict[str, Any] = {
                "event_id": f"ev-{self.seed}-{u}-{s}-{seq}",
                "event": name,
                **(identity if ids is None else ids),
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "page": {
                    "url": f"https://shop.example{path}{query if first else ''}",
                    "referrer": referrer if first else f"https://shop.example{landing}",
                },
                "context": {"platform": platform, "locale": "en-US", **audience},
                "properties": {**(properties or {}), **variant},
                "_at": at,
            }
            if session_id is not None:
                event["session_id"] = session_id
            if campaign is not None and first:
                event["campaign"] = dict(campaign)
            return event

        yield emit("page_view", landing, first=True)
        rates = self.rates
        if self.split is not None and variant_name == self.split.treated:
            lifted = min(1.0, getattr(rates, self.split.step) * self.split.lift)
            rates = replace(rates, **{self.split.step: lifted})
        product, price = rng.choice(list(PRODUCTS.items()))
        if rng.random() < rates.newsletter:
            yield emit("newsletter_signup", landing)
        if rng.random() < rates.tutorial:
            yield emit("video_play", landing, {"category": "tutorial"})
        if landing == "/pricing" and rng.random() < rates.signup:
            yield emit("signup", "/signup")
        waiting = state.pop("cart", None) if state is not None else None
        if waiting is not None:  # back for the cart left on an earlier visit
            product, price = waiting
            yield emit("page_view", "/cart")
        else:
            if rng.random() >= rates.product_view:
                return
            yield emit("page_view", f"/p/{product[1:]}")
            yield emit("product_view", f"/p/{product[1:]}", {"product_id": product, "price": price})
            if rng.random() < rates.share:
                yield emit("share", f"/p/{product[1:]}", {"product_id": product})
            if rng.random() >= rates.add_to_cart:
                return
            yield emit("add_to_cart", f"/p/{product[1:]}", {"product_id": product, "value": price})
            if rng.random() >= rates.shipping:
                return
            if self.timing is not None and state is not None and rng.random() >= self.timing.checkout_now:
                state["cart"] = (product, price)  # to be bought on the next visit
                return
        if (
            user is not None
            and "user_id" not in identity
            and rng.random() < self.identity_rates.sign_in_at_checkout
        ):
            identity["user_id"] = user
            yield emit("login", "/account/login")
        yield emit("shipping_details", "/checkout/shipping")
        payment_rate = rates.payment
        incident = self.incident
        if incident and incident.platform == platform and incident.start <= at < incident.end:
            payment_rate = incident.payment_rate
        if rng.random() >= payment_rate:
            return
        yield emit("payment_details", "/checkout/payment")
        if rng.random() >= rates.purchase:
            return
        server_side = "user_id" in identity and rng.random() < self.identity_rates.server_confirmed
        yield emit(
            "purchase",
            "/checkout/done",
            {"value": price, "currency": "EUR", "order_id": f"o-{u}-{s}"},
            ids={"user_id": identity["user_id"]} if server_side else None,
        )
        if rng.random() < rates.refund:
            yield emit("refund", "/account/orders", {"order_id": f"o-{u}-{s}"})


def bad_event(rng: random.Random, good: dict[str, Any]) -> bytes:
    """One of the ways collectors get it wrong."""
    kind = rng.randrange(6)
    if kind == 0:
        return b'{"event": "page_view", "user_id": '  # truncated JSON
    if kind == 1:
        return b'{"event_id": "x\xff\xfe", "event": "page_view"}'  # bad UTF-8
    broken = {k: v for k, v in good.items() if k != "_at"}
    broken["event_id"] = f"bad-{good['event_id']}"
    if kind == 2:
        broken.pop("timestamp")
    elif kind == 3:
        broken["timestamp"] = "yesterday at noon"
    elif kind == 4:
        broken.pop("user_id", None)
        broken.pop("anonymous_id", None)
    else:
        broken["properties"] = "not an object"
    return orjson.dumps(broken)
