"""Which build of the hot core runs: compiled by mypyc, or the pure-Python modules.

`pip install .` (a wheel build) compiles `MODULES` with mypyc when mypy and a C compiler are
there (setup.py); otherwise, with `CONVERSIONS_PURE_PYTHON=1` and for an editable install, the
same package runs as pure Python. A compiled module is an extension file beside its `.py`, and
Python imports the extension first: one built from another version of the source would run
stale code while the `.py` beside it says otherwise. So the build records each compiled source's
SHA-256 (`RECORD`), and `refuse_stale` (run when `streams` is imported, before any of these
modules) refuses an extension whose `.py` no longer matches, or that no build recorded.

Nothing from the rest of `streams` but its exceptions' base, and that optional: setup.py reads
`MODULES` from this file alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

try:
    from streams.errors import ConversionsError
except ImportError:  # setup.py reads this file alone, where the package may not be importable
    ConversionsError = Exception  # type: ignore[misc,assignment]

MODULES = [
    "streams.core.journeys.journey",
    "streams.core.journeys.engine",
    "streams.core.journeys.identity",
    "streams.core.journeys.merge",
    "streams.core.measures.alerts",
    "streams.core.measures.experiments",
    "streams.core.measures.rule_state",
    "streams.core.measures.seen_ids",
    "streams.core.input.decode",
    "streams.core.input.fields",
    "streams.core.input.channel",
    "streams.core.input.audience",
    "streams.core.input.rejection",
    "streams.core.input.deadletter",
    "streams.core.input.repartition",
    "streams.core.records.ids",
    "streams.core.records.trusted",
    "streams.core.config.matching",
    "streams.offline.run",
    "streams.offline.summary",
    "streams.counters.tally",
    "streams.counters.batch",
]
"""The modules that hold most of `conversions process`'s own time (cProfile; docs/operations/
performance.md "The compiled core"), and of `conversions counters`'s (an output's increments and
their folding per batch), less the pydantic models' modules (`core.input.event`,
`core.records.outputs`): mypyc emits C that does not build for a class with pydantic's
metaclass. What those models do per event and per output is plain functions in compiled modules
of their own (`core.input.fields`, `core.records.trusted`)."""

RECORD = "_compiled.json"
"""Written by the build into the package: {"compiler": ..., "sources": {module: sha256}}."""

PACKAGE = Path(__file__).resolve().parent
_PACKAGE = str(PACKAGE)


class StaleCompiledModule(ConversionsError, ImportError):
    """A compiled extension sits beside a source it was not built from."""


# The paths as strings (os.path), not pathlib: `refuse_stale` runs in every process, and pathlib's
# objects made its checks cost about 10 M instructions more (a twentieth of a second's CPU).
def _source(module: str) -> str:
    return os.path.join(_PACKAGE, *module.split(".")[1:]) + ".py"


def _extensions(module: str) -> list[str]:
    stem = _source(module)[:-3]
    return [stem + suffix for suffix in EXTENSION_SUFFIXES if os.path.exists(stem + suffix)]


def source_digest(path: str | Path) -> str:
    with open(path, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()


def _record() -> dict[str, str]:
    try:
        with open(os.path.join(_PACKAGE, RECORD), encoding="utf-8") as record:
            recorded = json.load(record)
    except FileNotFoundError:
        return {}
    sources: dict[str, str] = recorded.get("sources", {})
    return sources


def compiled_modules() -> list[str]:
    """The modules of `MODULES` that run compiled (checked by `refuse_stale`)."""
    return [m for m in MODULES if _extensions(m)]


def refuse_stale() -> None:
    """Raise `StaleCompiledModule` if an extension of `MODULES` was built from another source."""
    found = {m: _extensions(m) for m in MODULES}
    if not any(found.values()):
        return
    recorded = _record()
    for module, extensions in found.items():
        source = _source(module)
        if not extensions or not os.path.exists(source):
            continue
        if recorded.get(module) != source_digest(source):
            name = os.path.basename(source)
            raise StaleCompiledModule(
                f"{extensions[0]} was not built from the {name} beside it (edited since, or "
                f"built by hand): Python would run the compiled code and not the source. Delete the "
                f"compiled files (find {PACKAGE} -name '*.so' -delete) to run the pure-Python "
                f"package, or reinstall with `pip install .` to compile it again"
            )


def describe() -> str:
    """'compiled (mypyc)' or 'pure Python', for `conversions --version` and the worker's log."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(MODULES):
        return "compiled (mypyc)"
    return f"compiled (mypyc): {len(compiled)} of {len(MODULES)} core modules"
