"""The build: the pure-Python package, its hot core compiled by mypyc where that can be done.

A wheel build (`pip install .`, `pip wheel .`) compiles the modules of `streams.compiled.MODULES`
with mypyc when mypy (a build requirement of wheels, build_support/conversions_build.py) and a
working C compiler with Python's headers are there (Debian's gcc is enough). Otherwise it builds
the pure-Python package, and says why on stderr: no compiler, `CONVERSIONS_PURE_PYTHON=1`, mypy
reporting an error, or the C compiler failing. A missing compiler never fails the install.

An editable install (`pip install -e`, what scripts/bootstrap does) is never compiled: it runs
the sources as they are edited. The build records each compiled source's SHA-256 beside the
extensions (`streams/_compiled.json`), and `streams.compiled.refuse_stale` refuses, at import,
an extension that no longer matches the `.py` beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "build_support"))
from conversions_build import compiler_fails  # noqa: E402 (the backend's own probe)

GROUP = "streams_core"
"""The name of the shared library mypyc puts the compiled modules in (`streams_core__mypyc.*.so`)."""


def say(message: str) -> None:
    print(f"conversion-streams build: {message}", file=sys.stderr)


def _modules() -> list[str]:
    spec = importlib.util.spec_from_file_location("_streams_compiled", HERE / "streams" / "compiled.py")
    assert spec is not None and spec.loader is not None
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    return list(compiled.MODULES)


def _source(module: str) -> str:
    return os.path.join(*module.split(".")) + ".py"


def _why_pure() -> str | None:
    """Why this build is not compiled, or None to compile."""
    commands = set(sys.argv[1:])
    if os.environ.get("CONVERSIONS_PURE_PYTHON") == "1":
        return "CONVERSIONS_PURE_PYTHON=1"
    if commands & {"editable_wheel", "develop"}:
        return "an editable install runs the sources as they are"
    if not commands & {"bdist_wheel", "build", "build_ext", "install"}:
        return ""  # metadata only (egg_info, dist_info, sdist): nothing to say
    if reason := compiler_fails():
        return reason
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypy (mypyc) is not installed"
    return None


class _BuildFailed(Exception):
    pass


class _CleanBuildPy(build_py):
    """Forget the extensions and record of an earlier build in build/ (a pure build after a
    compiled one would otherwise ship the old extensions)."""

    def run(self) -> None:
        lib = Path(self.build_lib)
        for path in [*lib.glob(f"{GROUP}__mypyc*"), *(lib / "streams").rglob("*")]:
            if path.is_file() and (path.suffix in {".so", ".pyd"} or path.name == "_compiled.json"):
                path.unlink()
        super().run()


class _RecordingBuildExt(build_ext):
    """Build the extensions, record the sources they were built from, and turn a compiler's
    failure into a pure-Python build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            raise _BuildFailed(f"{type(error).__name__}: {error}") from error
        import mypy.version

        record = {
            "compiler": f"mypyc {mypy.version.__version__}",
            "sources": {m: hashlib.sha256((HERE / _source(m)).read_bytes()).hexdigest() for m in _modules()},
        }
        targets = [Path(self.build_lib, "streams")]
        if self.inplace:
            targets.append(HERE / "streams")
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / "_compiled.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def main() -> None:
    reason = _why_pure()
    if reason is None:
        try:
            from mypyc.build import mypycify

            extensions = mypycify([_source(m) for m in _modules()], opt_level="3", group_name=GROUP)
        except (Exception, SystemExit) as error:
            reason = (
                f"mypyc could not compile the core ({type(error).__name__}: {error}; mypy's errors above)"
            )
        else:
            try:
                setup(
                    ext_modules=extensions,
                    cmdclass={"build_py": _CleanBuildPy, "build_ext": _RecordingBuildExt},
                )
            except _BuildFailed as error:
                reason = f"the C compiler failed ({error})"
            else:
                say(f"compiled {len(_modules())} core modules with mypyc")
                return
    if reason:
        say(f"building the pure-Python package: {reason}")
    setup(cmdclass={"build_py": _CleanBuildPy})


main()
