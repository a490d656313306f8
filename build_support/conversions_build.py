"""The build backend: setuptools, asking for mypy only where the wheel will be compiled.

A wheel build (`pip install .`, `pip wheel .`) compiles the hot core with mypyc (setup.py), so
it needs mypy and, for mypy to see the same types as `make typecheck` does (pydantic's plugin,
orjson's stubs), the package's own dependencies in the build environment. An editable install
(`pip install -e`, scripts/bootstrap) is never compiled and needs neither, nor does a build with
`CONVERSIONS_PURE_PYTHON=1`. Everything else is setuptools' own backend.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the backend's other hooks, unchanged)

MYPY = "mypy>=2.4"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    if os.environ.get("CONVERSIONS_PURE_PYTHON") == "1":
        return requires
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    return [*requires, MYPY, *project["dependencies"]]
