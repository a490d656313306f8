"""The seams between the rooms: small protocols, so that no room hands another the whole app.

The pipeline publishes, knows whether this worker leads, and schedules work beside its agents
(`Publisher`, `LeaderCheck`, `Scheduler`: `pipeline.app.ConversionsApp` is all three); the
alerts service needs only a publisher and a leader check. The web reads counters, alerts and
experiments through `CounterReader`, `AlertReader` and `ExperimentReader`: the Redis store
(`counters.redis_store`), the in-memory store (`counters.memory_store`) and the alerts service
(which judges experiments too) satisfy them. Only the composition root (`worker`) puts the real
parts together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from streams.core.config.matching import CompiledFunnel
from streams.core.measures.counters import FunnelReport
from streams.core.records.outputs import Alert, ExperimentUpdate, OutputEvent

Job = Callable[[], Awaitable[None]]
Stopping = Callable[[], bool]
"""Asked between rounds of a long-running task: True once it should return."""


class Publisher(Protocol):
    async def publish(self, outputs: Iterable[OutputEvent], partition: int | None = None) -> None:
        """Send outputs to their topics, keyed by identity."""


class LeaderCheck(Protocol):
    def is_leader(self) -> bool:
        """Whether this worker is the one that speaks for all (publishes alerts)."""


class GenerationCheck(Protocol):
    def is_current(self) -> bool:
        """Whether this worker's generation is the current one: only then does what it judges
        go to receivers (issue 26; `streams.generations.current`)."""


class Scheduler(Protocol):
    def every(self, interval_s: float, name: str, job: Job) -> None:
        """Run `job` every `interval_s` seconds while the worker runs."""

    def run_alongside(self, name: str, run: Callable[[Stopping], Awaitable[None]], close: Job) -> None:
        """Run `run(stopping)` as long as the worker does; `close()` when it stops."""


class CounterReader(Protocol):
    """What the views and the report read from the counters."""

    @property
    def bucket_ms(self) -> int: ...

    def check_window(self, start_ms: int, end_ms: int) -> None:
        """Raise `errors.QueryTooLarge` for a window that would read too much."""

    async def latest_event_ms(self) -> int | None: ...

    async def recent_macros(self) -> list[dict[str, Any]]: ...

    async def funnel_versions(self, funnel: str) -> dict[str, int]:
        """The funnel's versions with counters kept, newest first, with their latest event time."""

    async def funnel_report(
        self,
        funnel: CompiledFunnel,
        start_ms: int,
        end_ms: int,
        by: str | None = None,
        version: str | None = None,
        cap: int = ...,
    ) -> FunnelReport:
        """The funnel's steps, and `by` a breakdown: its `cap` largest values and `(other)`."""

    async def goals_report(
        self, goals: list[str], start_ms: int, end_ms: int, cap: int = ...
    ) -> dict[str, Any]:
        """The goals; their and the sessions' `by` counts at most `cap` values per dimension."""

    async def read_grids(
        self, family: str, fields: Sequence[str], grids: Sequence[tuple[int, int, int]]
    ) -> list[list[list[float]]]:
        """Per grid (first bucket, buckets, size) and bucket, the sums of `fields` (a trend)."""

    async def window_sums(self, family: str, start_ms: int, end_ms: int) -> dict[str, float]:
        """Every field of a key family summed over a window (time to convert, channels)."""

    async def cohorts(
        self, funnel: str, start_ms: int, end_ms: int, family: str = "a"
    ) -> tuple[int, dict[int, dict[str, float]]]:
        """Attempts by the bucket they opened in (`a`) or reached a step in (`r`)."""


class AlertReader(Protocol):
    """What the views read from the alerts service."""

    @property
    def firing(self) -> Mapping[tuple[str, str, str], Alert]: ...

    @property
    def history(self) -> Sequence[Alert]: ...

    def watermark(self) -> int | None: ...


class ExperimentReader(Protocol):
    """What the experiments view reads from the evaluator running in the alerts service."""

    def experiments(self) -> Sequence[ExperimentUpdate]:
        """Each experiment's state now (those that have seen an attempt), `changed` empty."""

    @property
    def experiment_changes(self) -> Sequence[ExperimentUpdate]:
        """The latest decision changes, newest first."""

    def watermark(self) -> int | None: ...
