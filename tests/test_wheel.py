"""The package runs when installed as a wheel, away from the repository.

The wheel is built from a copy of the sources (so nothing is written into the checkout) with the
virtualenv's own setuptools (`--no-build-isolation`: nothing fetched), installed with
`--no-deps --no-index` into a fresh virtualenv, whose dependencies come from this virtualenv's
site-packages through a `.pth` line (a path line only: that directory's own `.pth` files, such as
the editable install's finder, are not run, so `streams` can only come from the wheel). Then,
from a directory outside the checkout, `conversions check-config` on the shipped example and
`conversions process` with the default configuration must give what the checkout gives.

The build here has no C compiler (`CC` names none), so it is the pure-Python fallback of
setup.py; tests/test_compiled.py builds the mypyc-compiled wheel (slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.wheel


def run(
    command: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    clean = {k: v for k, v in clean.items() if not k.startswith("CONVERSIONS_")}
    done = subprocess.run(
        command, cwd=cwd, env=clean | (env or {}), capture_output=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]!r}\n{done.stderr[-4000:]!r}"
    return done


NO_COMPILER = {"CC": "/nonexistent/cc"}
"""A build environment without a C compiler: setup.py builds the pure-Python package."""


def build_wheel(work: Path, env: dict[str, str], timeout: float = 180) -> tuple[Path, str]:
    """Builds the wheel from a copy of the sources into work/dist: the wheel and the build's log."""
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("streams", "build_support"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    built = run(
        [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "./src"],
        work,
        timeout,
        env,
    )
    (wheel,) = (work / "dist").glob("conversion_streams-*.whl")
    return wheel, (built.stdout + built.stderr).decode(errors="replace")


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv with the wheel installed; returns its bin directory."""
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv.parent)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run([*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], venv.parent)
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv.parent
    )
    site = Path(purelib.stdout.decode().strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_wheel(tmp_path_factory.mktemp("wheel"), NO_COMPILER)


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(wheel, tmp_path_factory.mktemp("venv") / "fresh")


def test_without_a_c_compiler_the_build_is_the_pure_python_package(
    built: tuple[Path, str], installed: Path, tmp_path: Path
) -> None:
    wheel, log = built
    assert "building the pure-Python package: no working C compiler" in log
    assert wheel.name.endswith("-py3-none-any.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith((".so", ".pyd", "_compiled.json"))]
    version = run([str(installed / "conversions"), "--version"], tmp_path)
    assert version.stdout.decode().strip() == "conversions, version 0.1.0, pure Python"


def test_the_wheel_ships_the_dashboard_and_the_example_configuration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "streams/py.typed",
        "streams/examples/funnels.yaml",
        "streams/web/dashboard/index.html",
        "streams/web/dashboard/dashboard.js",
        "streams/web/dashboard/dashboard.css",
    } <= names
    assert not any(name.startswith(("tests/", "bench/", "schemas/")) for name in names)


def test_the_installed_commands_run_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    where = run(
        [
            str(installed / "python"),
            "-c",
            "import streams.settings as s; print(s.__file__, s.DEFAULT_FUNNELS)",
        ],
        tmp_path,
    )
    module, funnels = where.stdout.decode().split()
    venv = str(installed.parent)
    assert module.startswith(venv) and funnels.startswith(venv), "streams must come from the wheel"

    checked = run([str(installed / "conversions"), "check-config", funnels], tmp_path)
    assert b": OK (2 goals, 2 funnels" in checked.stdout

    run(
        [str(installed / "conversions"), "simulate", "--users", "40", "--days", "1", "--output", "in.ndjson"],
        tmp_path,
    )
    from_wheel = run([str(installed / "conversions"), "process", "--input", "in.ndjson", "--flush"], tmp_path)
    outputs = [orjson.loads(line) for line in from_wheel.stdout.splitlines()]
    assert {o["type"] for o in outputs} >= {"micro", "macro", "session"}
    from_checkout = run(
        [sys.executable, "-m", "streams.cli", "process", "--input", str(tmp_path / "in.ndjson"), "--flush"],
        ROOT,
    )
    assert from_wheel.stdout == from_checkout.stdout
