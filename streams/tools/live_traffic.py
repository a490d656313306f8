"""Simulated shop traffic in real time, to Kafka: visits start at random, their events are sent
when their moment comes, stamped with the simulated clock's time.

The simulated clock starts at the real time and runs `speed` times faster, so a demo shows an
hour of shop traffic (and a planted incident) in minutes; `rate` is events per real second.

On a simulated clock (`speed` > 1) the shop has realistic timing (`simulate.ShopTiming`): each
arrival is a person whose later visits come minutes, hours or days after, arrivals follow the
hour of day and the weekday (relative to the moment the demo starts, so `rate` holds at the
start), and the shop has been open for `history` already: two simulated days of thinner
traffic are sent first, their people still coming back during the demo, so decision times,
returning visitors and the trend's earlier hours look like a real shop's from the first minute.
At real speed (`simulate --live`, the soak) it stays the compact shop, one visit at a time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import orjson

from streams.settings import Settings
from streams.tools.producer import clickstream_producer, identity_key
from streams.tools.simulate import (
    PLATFORM_WEIGHTS,
    PLATFORMS,
    Incident,
    ShopTiming,
    Simulator,
    VariantSplit,
    bad_event,
)

log = logging.getLogger(__name__)
EVENTS_PER_VISIT = 3.55  # what the simulator gives on average (measured over 5,000 visits)
EVENTS_PER_SHOP_VISIT = 2.65  # with ShopTiming (carts wait for later visits): 19,466 in 7,343 visits
HISTORY_PEOPLE_PER_DAY = 800  # about 4,400 events a simulated day of history
WARM_UP = timedelta(minutes=10)
DEMO_SPLIT = VariantSplit(lift=1.15)
"""With realistic timing, live arrivals start this much simulated time before the clock's start
(sent at once): a window judged in the first minutes would otherwise see checkouts whose
payments are still a minute away, and a ramp from zero reads as a drop."""


@dataclass
class TrafficStats:
    sent: int = 0
    bad: int = 0
    visits: int = 0


class TrafficSink(Protocol):
    """Where live traffic goes: the clickstream topic, or the collector (tools/collector_traffic)."""

    async def start(self) -> None: ...
    async def send(self, event: dict[str, Any], line: bytes) -> None: ...
    async def send_bad(self, raw: bytes) -> None: ...
    async def flush(self) -> None: ...
    async def stop(self) -> None: ...


class KafkaSink:
    """Straight to the first clickstream topic, keyed by identity, as a collector would."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(settings.topic_clickstream[0])
        self.producer = clickstream_producer(settings)

    async def start(self) -> None:
        await self.producer.start()

    async def send(self, event: dict[str, Any], line: bytes) -> None:
        await self.producer.send(self.topic, line, key=identity_key(line))

    async def send_bad(self, raw: bytes) -> None:
        await self.producer.send(self.topic, raw)

    async def flush(self) -> None:
        await self.producer.flush()

    async def stop(self) -> None:
        await self.producer.stop()


class LiveTraffic:
    def __init__(
        self,
        rate: float,
        users: int = 20_000,
        seed: int | None = None,
        bad_rate: float = 0.005,
        gap_scale: float = 0.05,
        speed: float = 1.0,
        incident_after: timedelta | None = None,
        incident_for: timedelta = timedelta(minutes=30),
        timing: ShopTiming | Literal["auto"] | None = "auto",
        history: timedelta | Literal["auto"] | None = "auto",
        audience: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.timing = (ShopTiming() if speed > 1 else None) if timing == "auto" else timing
        self.history = (
            (timedelta(days=2) if self.timing is not None else None) if history == "auto" else history
        )
        if self.timing is not None:
            gap_scale = 1.0  # sessions last minutes of simulated time
        self.rate = rate
        self.speed = speed
        self.incident_after = incident_after
        self.incident_for = incident_for
        self.users = users
        self.rng = random.Random(seed)
        self.bad_rate = bad_rate
        # the realistic shop runs the example configuration's experiment: a variant per person,
        # the treatment's purchase step 15 % likelier
        self.split = DEMO_SPLIT if self.timing is not None else None
        # with `audience`, every event carries its person's user agent, address and locale
        # (`Simulator.audience`), which the worker's enrichment turns into `audience.*` fields
        self.simulator = Simulator(
            seed=seed or 0,
            users=users,
            gap_scale=gap_scale,
            timing=self.timing,
            split=self.split,
            audience=audience,
        )
        self._people = itertools.count()
        self.stats = TrafficStats()
        self.on_sent: Callable[[str, float], None] | None = None
        """Told each event id and the wall-clock time it was handed to the producer."""
        self._visits = itertools.count()
        self._platforms: dict[int, str] = {}

    def _visit(self, now: datetime) -> Iterator[dict[str, Any]]:
        if self.timing is not None:
            return self._person(now, self.timing)
        u = self.rng.randrange(self.users)
        platform = self._platforms.setdefault(u, self.rng.choices(PLATFORMS, PLATFORM_WEIGHTS)[0])
        identity = (
            {"user_id": f"user_live_{u:06d}"} if u % 10 >= 3 else {"anonymous_id": f"anon-live-{u:06d}"}
        )
        self.stats.visits += 1
        return self.simulator.session(self.rng, identity, platform, u, next(self._visits), now)

    def _person(self, now: datetime, timing: ShopTiming) -> Iterator[dict[str, Any]]:
        """A new person arriving now, with every later visit of theirs, in time order."""
        simulator, rng = self.simulator, self.rng
        u = next(self._people)
        platform = rng.choices(PLATFORMS, PLATFORM_WEIGHTS)[0]
        sessions = max(1, round(rng.expovariate(1 / simulator.sessions_per_user)))
        visits = simulator.stitched_visits(rng, u, sessions)
        state: dict[str, Any] = {}
        for s, at in enumerate(simulator.visit_times(rng, sessions, timing, first=now)):
            identity, user = visits[s]
            self.stats.visits += 1
            yield from simulator.session(rng, identity, platform, u, s, at, user, state)

    def _history(self, origin: datetime) -> list[dict[str, Any]]:
        """The shop before the demo: people of the last `history` and the day after, thinner."""
        if self.history is None or self.timing is None:
            return []
        days = self.history.total_seconds() / 86_400
        background = Simulator(
            seed=self.simulator.seed + 7_777,
            users=int(HISTORY_PEOPLE_PER_DAY * (days + 1)),
            start=origin - self.history,
            days=days + 1,
            timing=self.timing,
            incident=self.simulator.incident,
            split=self.split,
            audience=self.simulator.audience,
        )
        return background.events()

    def _plant_incident(self, origin: float) -> None:
        if self.incident_after is None:
            return
        start = datetime.fromtimestamp(origin, UTC) + self.incident_after
        self.simulator.incident = Incident(start=start, end=start + self.incident_for)
        log.info(
            "planted incident: mobile payment rate 0.3 from %s to %s (simulated clock)",
            start,
            start + self.incident_for,
        )

    async def run(
        self, settings: Settings, stop: asyncio.Event, sink: TrafficSink | None = None
    ) -> TrafficStats:
        """Send until `stop` is set: to the clickstream topic, or to `sink`."""
        sink = sink or KafkaSink(settings)
        await sink.start()
        pending: list[tuple[float, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
        order = itertools.count()
        visits_per_s = self.rate / (EVENTS_PER_VISIT if self.timing is None else EVENTS_PER_SHOP_VISIT)
        origin = next_visit = time.time()
        self._plant_incident(origin)
        timing = self.timing
        if timing is not None:  # visits already under way: no ramp from an empty shop
            next_visit -= WARM_UP.total_seconds() / self.speed
        at_origin = timing.intensity(datetime.fromtimestamp(origin, UTC)) if timing is not None else 1.0

        def simulated(real: float) -> datetime:
            return datetime.fromtimestamp(origin + (real - origin) * self.speed, UTC)

        def real(moment: datetime) -> float:
            return origin + (moment.timestamp() - origin) / self.speed

        try:
            for event in self._history(datetime.fromtimestamp(origin, UTC)):
                moment = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                if moment.timestamp() >= origin:  # they come back during the demo
                    heapq.heappush(pending, (real(moment), next(order), {**event, "_at": moment}, iter(())))
                    continue
                await sink.send(event, orjson.dumps(event))
                self.stats.sent += 1
            while not stop.is_set():
                now = time.time()
                while next_visit <= now:
                    moment = simulated(next_visit)
                    visit = self._visit(moment)
                    first = next(visit, None)
                    if first is not None:
                        heapq.heappush(pending, (real(first["_at"]), next(order), first, visit))
                    seasonal = timing.intensity(moment) / at_origin if timing is not None else 1.0
                    next_visit += self.rng.expovariate(visits_per_s * seasonal)
                while pending and pending[0][0] <= now:
                    _, _, event, visit = heapq.heappop(pending)
                    event.pop("_at")
                    line = orjson.dumps(event)
                    if self.rng.random() < self.bad_rate:
                        await sink.send_bad(bad_event(self.rng, event))
                        self.stats.bad += 1
                    await sink.send(event, line)
                    self.stats.sent += 1
                    if self.on_sent is not None:
                        self.on_sent(event["event_id"], time.time())
                    following = next(visit, None)
                    if following is not None:
                        heapq.heappush(pending, (real(following["_at"]), next(order), following, visit))
                wake = min(next_visit, pending[0][0] if pending else next_visit)
                await asyncio.sleep(max(0.0, min(0.2, wake - time.time())))
            await sink.flush()
        finally:
            await sink.stop()
        return self.stats
