"""A realistic shop's clickstream: channels, landing pages, platforms, a checkout funnel with
drop-off at every step, secondary actions, occasional bad events, an optional planted incident.

Deterministic for a seed, so tests and benchmarks can replay exactly the same traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
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

    def events(self) -> list[dict[str, Any]]:
        """Every valid event, ordered by time (ties by generation order)."""
        rng = random.Random(self.seed)
        out: list[tuple[datetime, int, dict[str, Any]]] = []
        counter = 0
        for u in range(self.users):
            identity: dict[str, str] = (
                {"anonymous_id": f"anon-{self.seed}-{u:06d}"}
                if rng.random() < self.anonymous_share
                else {"user_id": f"user_{self.seed}_{u:06d}"}
            )
            platform = rng.choices(PLATFORMS, PLATFORM_WEIGHTS)[0]
            sessions = max(1, round(rng.expovariate(1 / self.sessions_per_user)))
            for s in range(sessions):
                at = self.start + timedelta(seconds=rng.uniform(0, self.days * 86_400))
                for event in self.session(rng, identity, platform, u, s, at):
                    out.append((event.pop("_at"), counter, event))
                    counter += 1
        out.sort(key=lambda item: (item[0], item[1]))
        return [event for _, _, event in out]

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
    ) -> Iterator[dict[str, Any]]:
        """One visit's events, each with its moment in "_at" (a datetime)."""
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

        def emit(
            name: str, path: str, properties: dict[str, Any] | None = None, first: bool = False
        ) -> dict[str, Any]:
            nonlocal at, seq
            at += timedelta(seconds=rng.uniform(5, 120) * self.gap_scale)
            seq += 1
            event: dict[str, Any] = {
                "event_id": f"ev-{self.seed}-{u}-{s}-{seq}",
                "event": name,
                **identity,
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "page": {
                    "url": f"https://shop.example{path}{query if first else ''}",
                    "referrer": referrer if first else f"https://shop.example{landing}",
                },
                "context": {"platform": platform, "locale": "en-US"},
                "properties": properties or {},
                "_at": at,
            }
            if session_id is not None:
                event["session_id"] = session_id
            if campaign is not None and first:
                event["campaign"] = dict(campaign)
            return event

        yield emit("page_view", landing, first=True)
        rates = self.rates
        product, price = rng.choice(list(PRODUCTS.items()))
        if rng.random() < rates.newsletter:
            yield emit("newsletter_signup", landing)
        if rng.random() < rates.tutorial:
            yield emit("video_play", landing, {"category": "tutorial"})
        if landing == "/pricing" and rng.random() < rates.signup:
            yield emit("signup", "/signup")
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
        yield emit(
            "purchase",
            "/checkout/done",
            {"value": price, "currency": "EUR", "order_id": f"o-{u}-{s}"},
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
