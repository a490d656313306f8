"""The mypyc-compiled core against the pure-Python package (issue 30, item 4).

A wheel built with the C compiler and mypy (setup.py compiles `streams.compiled.MODULES`) and
one built without a compiler (the pure fallback) are installed into fresh virtualenvs with
tests/test_wheel.py's machinery; `conversions process` must write the same bytes from both on a
simulated shop of about 20,000 events (in one process and with `--workers 2`), and the tests
of the compiled modules (`CORE_TESTS`, with the holdout-style property tests) must pass
against the compiled package. Compiling takes a minute or more on this machine's two shared cores: `slow`. The
stale-extension refusal is checked without compiling.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from streams.compiled import MODULES, source_digest
from tests.test_wheel import NO_COMPILER, ROOT, build_wheel, install, run

CORE_TESTS = [
    str(ROOT / "tests" / path)
    for path in (
        "core/journeys",
        "core/measures",
        "offline",
        "pipeline/test_journeys_kafka.py",
        "counters/test_tally.py",
        "counters/test_batch.py",
    )
]
"""The compiled modules' own tests: the holdout-style properties (funnel semantics against
their references, identity stitching, the engine's properties), the evaluators, offline mode
(one process and workers), the journeys through Kafka (a real broker), and the counters'
increments and their folding (against `increments_of`, into a real Redis)."""


def _package_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "streams", tmp_path / "streams", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "streams"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_an_extension_not_built_from_the_source_beside_it_is_refused_at_import(tmp_path: Path) -> None:
    package = _package_copy(tmp_path)
    engine = package / "core" / "journeys" / "engine.py"
    extension = engine.with_name("engine" + EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"not loaded: the check runs before any compiled module is imported")

    refused = _python("import streams", tmp_path)
    assert refused.returncode == 1
    assert "StaleCompiledModule" in refused.stderr
    assert f"{extension} was not built from the engine.py beside it" in refused.stderr

    record = {"compiler": "mypyc", "sources": {"streams.core.journeys.engine": source_digest(engine)}}
    (package / "_compiled.json").write_text(json.dumps(record))
    accepted = _python("import streams.compiled as c; print(c.describe())", tmp_path)
    assert accepted.stdout.strip() == f"compiled (mypyc): 1 of {len(MODULES)} core modules", accepted.stderr

    engine.write_text(engine.read_text() + "\n# edited after the build\n")
    stale = _python("import streams", tmp_path)
    assert stale.returncode == 1 and "StaleCompiledModule" in stale.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The compiled wheel and the bin directory of a virtualenv it is installed in."""
    wheel, log = build_wheel(tmp_path_factory.mktemp("compiled"), {}, timeout=900)
    assert f"compiled {len(MODULES)} core modules with mypyc" in log, log[-4000:]
    return wheel, install(wheel, tmp_path_factory.mktemp("venv") / "compiled")


@pytest.fixture(scope="module")
def pure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel, _ = build_wheel(tmp_path_factory.mktemp("pure"), NO_COMPILER)
    return install(wheel, tmp_path_factory.mktemp("venv") / "pure")


@pytest.mark.wheel
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_compiled_wheel_writes_what_the_pure_one_does(
    compiled: tuple[Path, Path], pure: Path, tmp_path: Path
) -> None:
    wheel, bin_compiled = compiled
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in MODULES:
        stem = module.replace(".", "/")
        assert any(n.startswith(stem + ".") and n.endswith(".so") for n in names), module
        assert stem + ".py" in names  # the source ships beside it: the stale check reads it
    assert "streams/_compiled.json" in names

    versions = {
        b: run([str(b / "conversions"), "--version"], tmp_path).stdout.decode().strip()
        for b in (bin_compiled, pure)
    }
    assert versions[bin_compiled].endswith(", compiled (mypyc)")
    assert versions[pure].endswith(", pure Python")

    simulate = [str(pure / "conversions"), "simulate", "--users", "2500", "--days", "3"]
    run([*simulate, "--output", "in.ndjson"], tmp_path)
    assert (tmp_path / "in.ndjson").read_bytes().count(b"\n") > 19_000
    process = ["process", "--input", "in.ndjson", "--flush"]
    from_compiled = run([str(bin_compiled / "conversions"), *process], tmp_path)
    from_pure = run([str(pure / "conversions"), *process], tmp_path)
    assert from_compiled.stdout.count(b"\n") > 20_000
    assert from_compiled.stdout == from_pure.stdout
    assert from_compiled.stderr == from_pure.stderr  # the summary of funnels and rejects
    two_workers = [*process, "--workers", "2"]
    compiled_workers = run([str(bin_compiled / "conversions"), *two_workers], tmp_path)
    assert compiled_workers.stdout == run([str(pure / "conversions"), *two_workers], tmp_path).stdout


@pytest.mark.wheel
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_core_and_property_tests_pass_against_the_compiled_core(
    compiled: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_compiled = compiled
    # run outside the checkout, so streams is imported from the wheel, before pytest appends the
    # checkout to the path for the tests' own imports
    code = (
        "import sys, streams.compiled as c, pytest\n"
        "assert c.describe() == 'compiled (mypyc)', c.describe()\n"
        "assert c.PACKAGE.is_relative_to(sys.prefix), c.PACKAGE\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--import-mode=append', *{CORE_TESTS}]))"
    )
    done = run([str(bin_compiled / "python"), "-c", code], tmp_path, timeout=900)
    assert b" passed" in done.stdout and b"failed" not in done.stdout


@pytest.mark.wheel
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_installed_compiled_module_whose_source_changed_is_refused(
    compiled: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_compiled = compiled
    where = run([str(bin_compiled / "python"), "-c", "import streams; print(streams.__file__)"], tmp_path)
    engine = Path(where.stdout.decode().strip()).parent / "core" / "journeys" / "engine.py"
    original = engine.read_bytes()
    engine.write_bytes(original + b"\n# edited in place\n")
    try:
        done = subprocess.run(
            [str(bin_compiled / "conversions"), "--version"], capture_output=True, timeout=60, check=False
        )
    finally:
        engine.write_bytes(original)
    assert done.returncode == 1
    assert b"was not built from the engine.py beside it" in done.stderr
