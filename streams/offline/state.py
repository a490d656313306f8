"""`conversions process --state FILE`: an offline run's state saved at its end and loaded by the
next, so a history processed file by file gives exactly the outputs of one run over all of it.

The file holds the journeys, the event time reached and each partition's deadline index (with
another partition count, the deadlines are indexed again from the journeys, as a worker's
recovery does), the line and event counts (dead letters name their line),
the alert and experiment evaluators, and the configuration it was written under with the
definition of every funnel version its journeys may refer to. Loaded under another
configuration, attempts go through the version rules (`core.config.versions`); an alert or
experiment whose version changed starts again from nothing.

Format: a first line `conversions-state <format> <sha256 of the body> <length of the body>`, then
the body, zlib-compressed pickle of plain values and the evaluators' own classes; unpickling is
restricted to the project's classes and plain containers. A file of a newer format, or whose
body does not match its checksum (corrupt, truncated), is refused with `StateFileError`. It is
written to a temporary file beside it and renamed, so a failed run never leaves half a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.config.matching import CompiledConfig
from streams.core.config.model import FunnelConfig
from streams.core.config.versions import (
    Change,
    Definition,
    alert_version,
    config_fingerprint,
    diff_configs,
    experiment_version,
)
from streams.core.journeys.engine import partition_for
from streams.core.records.outputs import OutputEvent
from streams.errors import ConversionsError
from streams.offline.run import OfflineRun

MAGIC = b"conversions-state"
FORMAT = 1
_ALLOWED_MODULES = ("streams.", "collections", "datetime", "pydantic", "pydantic_core", "re", "copyreg")
_ALLOWED_BUILTINS = frozenset(
    {"set", "frozenset", "dict", "list", "tuple", "int", "float", "str", "bytes", "object"}
)


class StateFileError(ConversionsError, ValueError):
    """A state file that cannot be used; nothing is overwritten."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if module.startswith(_ALLOWED_MODULES) and module != "builtins":
            return super().find_class(module, name)
        raise StateFileError(f"the state file names {module}.{name}, which a state file never holds")


@dataclass
class Resumed:
    outputs: list[OutputEvent]
    """What loading made happen: attempts of changed funnels ended or carried over."""
    changes: list[Change]
    """The configuration's changes since the state was written (empty when it is the same)."""


def read(path: Path) -> dict[str, Any] | None:
    """The saved payload, or None when the file does not exist (a first run)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    header, newline, body = raw.partition(b"\n")
    parts = header.split(b" ")
    if not newline or len(parts) != 4 or parts[0] != MAGIC:
        raise StateFileError(f"{path}: not a conversions state file")
    try:
        version, digest, length = int(parts[1]), parts[2].decode(), int(parts[3])
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError(f"{path}: not a conversions state file ({exc})") from None
    if version > FORMAT:
        raise StateFileError(
            f"{path}: state format {version} was written by a newer release (this one reads up to "
            f"{FORMAT}); run that release, or start a new state file"
        )
    if len(body) != length or hashlib.sha256(body).hexdigest() != digest:
        raise StateFileError(
            f"{path}: corrupt or truncated ({len(body)} of {length} bytes, checksum differs)"
        )
    try:
        payload = _Unpickler(io.BytesIO(zlib.decompress(body))).load()
    except (pickle.UnpicklingError, zlib.error, EOFError, AttributeError, ImportError) as exc:
        raise StateFileError(f"{path}: unreadable state ({exc})") from None
    if not isinstance(payload, dict):
        raise StateFileError(f"{path}: unreadable state")
    return payload


def write(path: Path, run: OfflineRun, known: list[Definition]) -> None:
    run.engine.flush()
    judges = run.judges
    payload = {
        "store": dict(run.store),
        "latest_ms": run._latest_ms,
        "observed": run._observed,
        "lines": run.lines,
        "events": run.events,
        "rejected": run.rejected,
        "judged_minute": judges._judged_minute,
        "config": run.config.source.model_dump(mode="json"),
        "definitions": [d.to_json() for d in _definitions(run.config, known)],
        "alerts": {_alert_key(run.config, i): state for i, state in enumerate(judges.alerts._rules)},
        "alerts_evaluated_to": judges.alerts._evaluated_to,
        "experiments": {
            _experiment_key(run.config, s.experiment.name): s for s in judges.experiments._states
        },
        "experiments_evaluated_to": judges.experiments._evaluated_to,
        "experiments_seen": judges.experiments._seen,
        "partitions": run.partitions,
        "clocks": run.engine._clocks,
    }
    body = zlib.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), 6)
    header = b"%s %d %s %d\n" % (MAGIC, FORMAT, hashlib.sha256(body).hexdigest().encode(), len(body))
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header + body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _definitions(config: CompiledConfig, known: list[Definition]) -> list[Definition]:
    """The current versions and the earlier ones still known (each funnel's latest 16)."""
    by_version = {d.version: d for d in known}
    by_version.update({f.definition.version: f.definition for f in config.funnels if f.definition})
    kept: dict[str, list[Definition]] = {}
    for definition in by_version.values():
        kept.setdefault(definition.funnel, []).append(definition)
    return [d for versions in kept.values() for d in versions[-16:]]


def _alert_key(config: CompiledConfig, index: int) -> str:
    rule = config.source.alerts[index]
    return alert_version(rule, config.funnels_by_name[rule.funnel].version)


def _experiment_key(config: CompiledConfig, name: str) -> str:
    experiment = next(e for e in config.source.experiments if e.name == name)
    return experiment_version(experiment, config.funnels_by_name[experiment.funnel].version)


def restore(run: OfflineRun, payload: dict[str, Any]) -> tuple[Resumed, list[Definition]]:
    """Load a saved state into a fresh run: journeys, event time, counts, and the evaluators
    whose version is unchanged. Returns what loading emitted and the known definitions."""
    known = [Definition.from_json(d) for d in payload["definitions"]]
    run.engine.machine.remember(known)
    run.store.update(payload["store"])
    run.lines, run.events, run.rejected = payload["lines"], payload["events"], payload["rejected"]
    run._latest_ms = payload["latest_ms"]
    judges = run.judges
    judges._judged_minute = payload["judged_minute"]
    alerts, experiments = judges.alerts, judges.experiments
    for i, rule in enumerate(alerts._rules):
        saved = payload["alerts"].get(_alert_key(run.config, i))
        if saved is not None:
            saved.index = rule.index
            alerts._rules[i] = saved
    alerts._evaluated_to = payload["alerts_evaluated_to"]
    for i, state in enumerate(experiments._states):
        saved = payload["experiments"].get(_experiment_key(run.config, state.experiment.name))
        if saved is not None:
            saved.funnel = state.funnel
            experiments._states[i] = saved
    experiments._evaluated_to = payload["experiments_evaluated_to"]
    experiments._seen = payload["experiments_seen"]
    engine = run.engine
    if payload["partitions"] == run.partitions:
        # the deadline heaps as they were (the order deadlines fire in within one advance of
        # event time depends on them), the run's source in place of the saved run's
        for clock in payload["clocks"].values():
            clock.sources = {run.source: max(clock.sources.values())} if clock.sources else {}
            clock.waiting_for = {run.source} if clock.waiting_for else set()
        engine._clocks = payload["clocks"]
    by_partition: dict[int, list[str]] = {}
    for identity in payload["store"]:
        by_partition.setdefault(partition_for(identity, run.partitions), []).append(identity)
    for partition, identities in sorted(by_partition.items()):
        engine.rebuild_deadlines(partition, identities)
    outputs: list[OutputEvent] = []
    observed = payload["observed"]
    if observed is not None:
        outputs += run.catch_up(observed)
    before = FunnelConfig.model_validate(payload["config"])
    same = config_fingerprint(before) == config_fingerprint(run.config.source)
    changes = [] if same else diff_configs(before, run.config.source)
    return Resumed(outputs, changes), known
