"""Which generation a worker belongs to and which one is current, as every worker sees it: the
registry read at start (`join`) and every `REFRESH_S` after (`CurrentGeneration`).

The web answers each request from the current generation's configuration, counters and judged
alerts and experiments (`source`), resolved once per request (one request never mixes two
generations); the alerts send to receivers only while their generation is current
(`is_current`); a worker whose generation is retired stops, and so does a `conversions counters`
process (`until_retired`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.errors import ConversionsError
from streams.generations import judged
from streams.generations.judged import Judging
from streams.generations.naming import base_app_id, generation_settings
from streams.generations.registry import Generation, Registry
from streams.ports import AlertReader, CounterReader, ExperimentReader, Stopping
from streams.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 1.0
"""How long the web, the alerts and the retirement check may see a superseded `current`."""


class GenerationRefused(ConversionsError, RuntimeError):
    """A worker asked for a generation it cannot run (unknown, retired)."""


async def join(base: Settings, registry: Registry) -> tuple[Settings, Generation | None]:
    """The settings this worker runs with: its `CONVERSIONS_GENERATION`, else the current one.
    Nothing recorded (no `deploy` ever ran) or generation 0: the base settings, unchanged."""
    number = base.generation if base.generation is not None else await registry.current_number()
    generation = await registry.get(number)
    if generation is None:
        if number == 0:
            return base, None
        raise GenerationRefused(f"generation {number} of {registry.app_id} is not in the registry")
    if generation.state == "retired":
        current = await registry.current_number()
        raise GenerationRefused(
            f"generation {number} of {registry.app_id} is retired (the current one is {current}); "
            "unset CONVERSIONS_GENERATION to run the current one, or `conversions rollback`"
        )
    if generation.pending is not None:
        raise GenerationRefused(
            f"generation {number} of {registry.app_id} is not ready: `conversions deploy` is still "
            f"handing its {generation.pending} over; start its workers once deploy says so"
        )
    if number == 0:
        return base.model_copy(update={"generation": 0}), generation
    path = base.data_dir / "generations" / f"g{number}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generation.config)
    return generation_settings(base, number, path), generation


async def join_waiting(
    base: Settings, registry: Registry, unavailable: tuple[type[BaseException], ...], what: str
) -> tuple[Settings, Generation | None]:
    """`join`, with a Redis outage waited out (`unavailable`: the client's errors for it), as
    the counters wait: the registry is read before `what` starts."""
    delay = 0.5
    while True:
        try:
            return await join(base, registry)
        except unavailable as exc:
            log.warning(
                "Redis unavailable (%s): the generations registry is read before the %s starts; "
                "retrying in %.1f s",
                exc.__class__.__name__,
                what,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def until_retired(registry: Registry, number: int, stopping: Stopping) -> bool:
    """Wait until generation `number` is retired (True) or `stopping` (False): a process of a
    retired generation stops on its own, as its workers do. A registry it cannot read is waited
    out (the last answer stands)."""
    while not stopping():
        try:
            own = await registry.get(number)
        except Exception as exc:
            log.warning("generations: registry unreadable (%s); generation %d keeps running", exc, number)
        else:
            if own is not None and own.state == "retired":
                return True
        await asyncio.sleep(REFRESH_S)
    return False


class Source(NamedTuple):
    """Everything one web request answers from: one generation's (`CurrentGeneration.source`)."""

    config: CompiledConfig
    counters: CounterReader | None
    """None: the worker's own store."""
    alerts: AlertReader | None
    experiments: ExperimentReader | None


class CurrentGeneration:
    """The registry as one worker sees it, refreshed every `REFRESH_S`."""

    def __init__(
        self,
        settings: Settings,
        config: CompiledConfig,
        reader: CounterReader | None,
        registry: Registry,
        reader_for: Callable[[str], CounterReader],
        on_retired: Callable[[], None],
    ) -> None:
        self.number = settings.generation or 0
        self._own = (config, reader)
        self._registry = registry
        self._reader_for = reader_for
        self._on_retired = on_retired
        # until the first refresh: only a worker that found no registry at all is current
        self._current: int | None = None if settings.generation is not None else self.number
        self._views: dict[int, tuple[CompiledConfig, CounterReader]] = {}
        self._checked_at = 0.0
        self._base = base_app_id(settings)
        self._stopping = False
        self._member = f"{socket.gethostname()}:{os.getpid()}"
        self.judging: Judging | None = None
        """This worker's own alert and experiment evaluators, when it has rules."""

    def is_current(self) -> bool:
        """Whether this worker's generation is the current one (as of the last refresh): what it
        judges may go to receivers."""
        return self._current == self.number

    async def refresh(self) -> None:
        current = await self._registry.current_number()
        own = await self._registry.get(self.number)
        if own is not None and own.state != "retired":
            await self._registry.beat(self.number, self._member)
        if current != self._current:
            log.info("generations: generation %d of %s is now current", current, self._base)
        self._current = current
        self._checked_at = time.monotonic()
        if own is not None and own.state == "retired" and not self._stopping:
            self._stopping = True
            log.warning("generations: this worker's generation %d is retired; stopping", self.number)
            self._on_retired()

    async def run(self, stopping: Stopping) -> None:
        while not stopping():
            try:
                await self.refresh()
            except Exception as exc:  # a Redis outage: keep the last answer, say so
                log.warning(
                    "generations: registry unreadable (%s); keeping generation %s", exc, self._current
                )
            await asyncio.sleep(REFRESH_S)

    async def source(self) -> Source:
        """One request's whole answer: the current generation's configuration, counters, and
        judged alerts and experiments (this worker's own evaluators when its generation is
        current, else the snapshot that generation's leader wrote: `generations.judged`)."""
        number, config, counters = await self._resolve()
        if number == self.number:
            return Source(config, counters, self.judging, self.judging)
        snapshot = await judged.read(self._registry, number)
        if snapshot is None and (config.source.alerts or config.source.experiments):
            snapshot = judged.Judged()  # its leader has not written yet: nothing judged
        return Source(config, counters, snapshot, snapshot)

    async def _resolve(self) -> tuple[int, CompiledConfig, CounterReader | None]:
        if time.monotonic() - self._checked_at > REFRESH_S:
            await self.refresh()
        number = self._current
        if number is None or number == self.number:
            return self.number, *self._own
        cached = self._views.get(number)
        if cached is None:
            generation = await self._registry.get(number)
            if generation is None:  # deleted meanwhile: answer from our own
                return self.number, *self._own
            config = compile_config(parse_config(generation.config, f"generation {number}"))
            cached = self._views[number] = (config, self._reader_for(generation.app_id))
        return number, *cached
