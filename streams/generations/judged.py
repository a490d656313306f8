"""What a generation's alert and experiment evaluators judged, kept in Redis beside the registry
so that the web of any worker answers `/alerts`, `/experiments` (and the alerts in `/live` and
the series' marks) from the *current* generation, as it answers the counters (issue 26).

The evaluators' state lives in each worker's memory, rebuilt from its generation's
`conversions.micro`: a worker of another generation (the new one before the cut-over, the old one
in the second after it) has no such state to read. So the leader of every generation writes a
snapshot of what it would answer (the firing alerts, the latest changes, each experiment's state,
the evaluator's event time) once a second when it changed; `Judged` reads one back as a
`ports.AlertReader` and `ports.ExperimentReader`. A second's delay, never a mix: one request
reads one snapshot of one generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from streams.core.records.outputs import Alert, ExperimentUpdate
from streams.generations.registry import Registry
from streams.ports import AlertReader, ExperimentReader, LeaderCheck, Stopping

log = logging.getLogger(__name__)

EVERY_S = 1.0
"""How often the leader writes its generation's snapshot (when it changed)."""


class Judging(AlertReader, ExperimentReader, Protocol):
    """The alerts service as the web reads it: both readers in one (`alerts.service.Alerting`)."""


def snapshot(judging: Judging) -> dict[str, Any]:
    """What `/alerts` and `/experiments` would answer from `judging`, as JSON."""
    return {
        "watermark_ms": judging.watermark(),
        "firing": [a.model_dump(mode="json") for a in judging.firing.values()],
        "history": [a.model_dump(mode="json") for a in judging.history],
        "experiments": [e.model_dump(mode="json") for e in judging.experiments()],
        "experiment_changes": [e.model_dump(mode="json") for e in judging.experiment_changes],
    }


class Judged:
    """A generation's snapshot, read back: what another generation's web answers from."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        data = data or {}
        self._watermark: int | None = data.get("watermark_ms")
        firing = [Alert.model_validate(a) for a in data.get("firing", [])]
        self._firing = {(a.funnel, a.step, ",".join(f"{k}={v}" for k, v in a.by.items())): a for a in firing}
        self._history = [Alert.model_validate(a) for a in data.get("history", [])]
        self._experiments = [ExperimentUpdate.model_validate(e) for e in data.get("experiments", [])]
        self._changes = [ExperimentUpdate.model_validate(e) for e in data.get("experiment_changes", [])]

    @property
    def firing(self) -> Mapping[tuple[str, str, str], Alert]:
        return self._firing

    @property
    def history(self) -> Sequence[Alert]:
        return self._history

    def watermark(self) -> int | None:
        return self._watermark

    def experiments(self) -> Sequence[ExperimentUpdate]:
        return self._experiments

    @property
    def experiment_changes(self) -> Sequence[ExperimentUpdate]:
        return self._changes


async def read(registry: Registry, number: int) -> Judged | None:
    """Generation `number`'s latest snapshot; None before its leader wrote one."""
    raw = await registry.judged(number)
    return Judged(orjson.loads(raw)) if raw is not None else None


def _leads(leader: LeaderCheck) -> bool:
    try:
        return leader.is_leader()
    except Exception:  # the group not joined yet (Faust's consumer not started)
        return False


async def publish(
    registry: Registry, number: int, judging: Judging, leader: LeaderCheck, stopping: Stopping
) -> None:
    """While this worker leads its generation: its snapshot, once a second when it changed."""
    written = b""
    while not stopping():
        if _leads(leader):
            raw = orjson.dumps(snapshot(judging))
            if raw != written:
                try:
                    await registry.set_judged(number, raw)
                    written = raw
                except Exception as exc:  # a Redis outage: the next second tries again
                    log.warning("generations: cannot record what generation %d judged (%s)", number, exc)
        else:
            written = b""  # leading again later: write at once
        await asyncio.sleep(EVERY_S)
