"""The build backend: setuptools, asking for mypy only where the wheel will be compiled.

A wheel build (`pip install .`, `pip wheel .`) compiles the hot core with mypyc (setup.py), so
it needs mypy and, for mypy to see the types `make typecheck` sees (pydantic's plugin, the dev
extra's typing stubs), the package's dependencies in the build environment. An editable install
(`pip install -e`, scripts/bootstrap) is never compiled and needs neither, nor does a build with
`CONVERSIONS_PURE_PYTHON=1` or one where no C compiler works (`compiler_fails`, which setup.py
runs again: a slim image without gcc does not download mypy for nothing). Everything else is
setuptools' own backend.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the backend's other hooks, unchanged)

MYPY = "mypy>=2.4"


def compiler_fails() -> str | None:
    """Compile a file that includes Python.h, as an extension will: the reason it fails, or None."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler, get_python_inc

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("#include <Python.h>\nint probe(void) { return Py_IsInitialized(); }\n")
        compiler: Any = new_compiler()
        try:
            customize_compiler(compiler)
            compiler.compile([str(probe)], output_dir=tmp, include_dirs=[get_python_inc()])
        except Exception as error:
            return f"no working C compiler with Python's headers ({type(error).__name__}: {error})"
    return None


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    if os.environ.get("CONVERSIONS_PURE_PYTHON") == "1" or compiler_fails():
        return requires
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    stubs = [r for r in project["optional-dependencies"]["dev"] if r.startswith("types-")]
    return [*requires, MYPY, *stubs, *project["dependencies"]]
