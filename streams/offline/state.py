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
the body: zlib-compressed JSON of plain data only (objects, arrays, strings, numbers, null), which
each saved part writes and reads itself (`to_state`/`restore` of the evaluators, the engine's
clocks); journeys, already bytes in their own encoding, as base64. Reading it can build nothing but
that data, so a crafted file cannot make the loader run code; a body that does not have the
expected shape is refused. Format 1 (before this release) was a pickle: it is refused, never
unpickled, and the message says to run the history again. A file of a newer format, or whose
body does not match its checksum (corrupt, truncated), is refused with `StateFileError`. It is
written to a temporary file beside it and renamed, so a failed run never leaves half a file.

An alert rule whose state is not carried over (its funnel's version or its own settings changed,
or it was removed) has its firing incidents resolved at the cut-over, with reason
`definition_changed` and the incident's dedup key, so no receiver keeps an incident open that no
rule will ever judge again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.core.config.matching import CompiledConfig, compile_config
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
from streams.core.measures.alerts import AlertEvaluator
from streams.core.records.outputs import OutputEvent
from streams.errors import ConversionsError
from streams.offline.run import OfflineRun

MAGIC = b"conversions-state"
FORMAT = 2
PICKLE_FORMAT = 1
"""The first format, a pickle: refused, never read."""


class StateFileError(ConversionsError, ValueError):
    """A state file that cannot be used; nothing is overwritten."""


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
    if version == PICKLE_FORMAT:
        raise StateFileError(
            f"{path}: state format 1 (a pickle, written by an earlier release) is no longer read: "
            "run the history again from its first file into a new state file"
        )
    if version != FORMAT:
        raise StateFileError(f"{path}: not a conversions state file (format {version})")
    if len(body) != length or hashlib.sha256(body).hexdigest() != digest:
        raise StateFileError(
            f"{path}: corrupt or truncated ({len(body)} of {length} bytes, checksum differs)"
        )
    try:
        payload = orjson.loads(zlib.decompress(body))
    except (orjson.JSONDecodeError, zlib.error) as exc:
        raise StateFileError(f"{path}: unreadable state ({exc})") from None
    if not isinstance(payload, dict):
        raise StateFileError(f"{path}: unreadable state (not an object)")
    return payload


def write(path: Path, run: OfflineRun, known: list[Definition]) -> None:
    run.engine.flush()
    judges = run.judges
    config = run.config
    payload = {
        "store": {
            identity: base64.b64encode(journey).decode("ascii") for identity, journey in run.store.items()
        },
        "latest_ms": run._latest_ms,
        "observed": run._observed,
        "lines": run.lines,
        "events": run.events,
        "rejected": run.rejected,
        "judged_minute": judges._judged_minute,
        "config": config.source.model_dump(mode="json"),
        "definitions": [d.to_json() for d in _definitions(config, known)],
        "alerts": judges.alerts.to_state(_alert_keys(config)),
        "experiments": judges.experiments.to_state(
            [_experiment_key(config, s.experiment.name) for s in judges.experiments._states]
        ),
        "partitions": run.partitions,
        "clocks": run.engine.clocks_state(),
    }
    body = zlib.compress(orjson.dumps(payload), 6)
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


def _alert_keys(config: CompiledConfig) -> list[str]:
    """What each alert rule's state belongs to: the rule and its funnel's version."""
    return [alert_version(rule, config.funnels_by_name[rule.funnel].version) for rule in config.source.alerts]


def _experiment_key(config: CompiledConfig, name: str) -> str:
    experiment = next(e for e in config.source.experiments if e.name == name)
    return experiment_version(experiment, config.funnels_by_name[experiment.funnel].version)


def restore(run: OfflineRun, payload: dict[str, Any]) -> tuple[Resumed, list[Definition]]:
    """Load a saved state into a fresh run: journeys, event time, counts, and the evaluators
    whose version is unchanged. Returns what loading emitted and the known definitions. A payload
    without the expected shape is refused with `StateFileError`."""
    try:
        return _restore(run, payload)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        if isinstance(exc, StateFileError):
            raise
        raise StateFileError(f"unreadable state ({type(exc).__name__}: {exc})") from None


def _restore(run: OfflineRun, payload: dict[str, Any]) -> tuple[Resumed, list[Definition]]:
    known = [Definition.from_json(d) for d in payload["definitions"]]
    before = FunnelConfig.from_dump(payload["config"])
    store = {
        str(identity): base64.b64decode(journey, validate=True)
        for identity, journey in payload["store"].items()
    }
    run.engine.machine.remember(known)
    run.store.update(store)
    run.lines, run.events, run.rejected = (int(payload[k]) for k in ("lines", "events", "rejected"))
    run._latest_ms = _optional_int(payload["latest_ms"])
    judges = run.judges
    judges._judged_minute = _optional_int(payload["judged_minute"])
    outputs: list[OutputEvent] = list(_ended_incidents(run, before, payload["alerts"]))
    judges.alerts.restore(payload["alerts"], _alert_keys(run.config))
    experiments = judges.experiments
    experiments.restore(
        payload["experiments"], [_experiment_key(run.config, s.experiment.name) for s in experiments._states]
    )
    engine = run.engine
    if payload["partitions"] == run.partitions:
        # the deadline heaps as they were (the order deadlines fire in within one advance of
        # event time depends on them), the run's source in place of the saved run's
        engine.restore_clocks(payload["clocks"], run.source)
    by_partition: dict[int, list[str]] = {}
    for identity in store:
        by_partition.setdefault(partition_for(identity, run.partitions), []).append(identity)
    for partition, identities in sorted(by_partition.items()):
        engine.rebuild_deadlines(partition, identities)
    observed = _optional_int(payload["observed"])
    if observed is not None:
        outputs += run.catch_up(observed)
    same = config_fingerprint(before) == config_fingerprint(run.config.source)
    changes = [] if same else diff_configs(before, run.config.source)
    return Resumed(outputs, changes), known


def _ended_incidents(run: OfflineRun, before: FunnelConfig, saved: dict[str, Any]) -> list[OutputEvent]:
    """The incidents of the saved rules that do not carry over, resolved with reason
    `definition_changed` at the event time they were judged to (`AlertEvaluator.end_incidents`)."""
    if not any(rule["firing"] for rule in saved["rules"].values()):
        return []
    carried = set(_alert_keys(run.config))
    old_config = compile_config(before)
    old_keys = _alert_keys(old_config)
    if all(key in carried for key in old_keys):
        return []
    old = AlertEvaluator(old_config, by_cap=run.breakdown_cap)
    old.restore(saved, old_keys)
    out: list[OutputEvent] = []
    for index, key in enumerate(old_keys):
        if key not in carried:
            out += old.end_incidents(index, "definition_changed")
    return out


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
