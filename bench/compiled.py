"""The mypyc-compiled core beside the pure-Python package: `conversions process`, same file.

Builds two wheels from this checkout (as `pip install .` does; `--no-build-isolation`, this
virtualenv's mypy and setuptools): one compiled (setup.py with the C compiler) and the pure
fallback (`CC` naming no compiler), installs each into a fresh virtualenv under the work
directory (dependencies from this virtualenv through a `.pth` path line), then runs
`conversions process --input FILE --flush` on `bench.offline`'s history (163,276 events) in
pairs, compiled then pure, alternating which goes first, each in its own process: wall-clock
seconds from start to exit and the process's CPU seconds. Every run's output must be
byte-identical to the first pure run's (`identical`).

`python -m bench.compiled [--pairs 3] [--tree DIR]` writes bench/results/compiled.json; `--tree`
builds from another checkout (the merged code, say) instead of this one.

Issue 30 asks for offline mode at least 3x as fast as when it was filed. Ratios against a decoding
ceiling measured on another day move with the machine (and with decoding's own speed-ups), so the
code of the issue's start (`ISSUE_START`, taken from this repository with `git archive`) runs in
the same alternation, pure Python on this virtualenv's dependencies: `vs_issue_start` is its
seconds over the compiled and the pure package's, wall clock and CPU. Without git or that commit
(a shallow clone) the figure is left out and says why. `make bench` runs one
pair (`bench.run`, under "compiled"), and times the compiled package's own decoding of the same
file in its virtualenv (`decode_ceiling_eps`): what `pip install .` gives a user, against its own
ceiling, beside the pure package's figures under "offline".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.offline import history_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {k: v for k, v in env.items() if not k.startswith("CONVERSIONS_")} | extra


def build(tree: Path, work: Path, compiled: bool) -> tuple[Path, float]:
    """A virtualenv with the tree's wheel installed (its bin directory), and the build's seconds."""
    source = work / "src"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "setup.py"):
        shutil.copy(tree / name, source / name)
    for folder in ("streams", "build_support"):
        shutil.copytree(tree / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    started = time.perf_counter()
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "./src"],
        cwd=work,
        env=_environment({} if compiled else {"CC": "/nonexistent/cc"}),
        check=True,
    )
    seconds = time.perf_counter() - started
    (wheel,) = (work / "dist").glob("conversion_streams-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
    )
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin", seconds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process(bin_dir: Path, path: Path, out: Path) -> tuple[float, float, str]:
    """Wall-clock and CPU seconds of one `conversions process`, and its output's SHA-256."""
    cpu = _children_cpu()
    started = time.perf_counter()
    with out.open("wb") as sink:
        subprocess.run(
            [str(bin_dir / "conversions"), "process", "--input", str(path), "--flush"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
            env=_environment({}),
            check=True,
        )
    wall = time.perf_counter() - started
    return wall, _children_cpu() - cpu, hashlib.sha256(out.read_bytes()).hexdigest()


CEILING = """
import sys
from pathlib import Path
sys.path.append(sys.argv[2])  # after site-packages: `bench` from the checkout, `streams` installed
from bench.offline import decode_ceiling
print(*decode_ceiling(Path(sys.argv[1])))
"""


ISSUE_START = "dd0a801"
"""main when issue 30's work began (the parent of its first commit, 78ec762)."""


def issue_start_tree(work: Path) -> tuple[Path | None, str]:
    """The issue's start checked out under `work`, or None and why not."""
    tree = work / "issue-start"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ISSUE_START], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return None, f"git archive {ISSUE_START}: {archive.stderr.decode(errors='replace').strip()}"
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree, ISSUE_START


def process_tree(tree: Path, path: Path, out: Path) -> tuple[float, float, str]:
    """`process` for a source tree run by this virtualenv's Python (`streams` from `tree` only)."""
    cpu = _children_cpu()
    started = time.perf_counter()
    with out.open("wb") as sink:
        subprocess.run(
            [sys.executable, "-m", "streams.cli", "process", "--input", str(path), "--flush"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=_environment({"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}),
            check=True,
        )
    wall = time.perf_counter() - started
    return wall, _children_cpu() - cpu, hashlib.sha256(out.read_bytes()).hexdigest()


def decode_ceiling(bin_dir: Path, path: Path) -> tuple[int, float]:
    """`bench.offline.decode_ceiling` run by the installed package of `bin_dir`'s virtualenv (from
    `/`, this checkout after site-packages: its pure modules are not the ones imported)."""
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", CEILING, str(path), str(ROOT)],
        capture_output=True,
        text=True,
        cwd="/",
        env=_environment({}),
        check=True,
    )
    events, seconds = done.stdout.split()
    return int(events), float(seconds)


def measure(
    tree: Path, pairs: int, workdir: Path, path: Path | None = None, issue_start: bool = True
) -> dict[str, Any]:
    """Build both packages under `workdir` and run them in pairs over `path` (default: the
    history file, made in `workdir`), with the issue's start after each pair (`issue_start`)."""
    path = path or history_file(workdir)
    events = path.read_bytes().count(b"\n")
    venvs: dict[str, Path] = {}
    build_s: dict[str, float] = {}
    for kind in ("compiled", "pure"):
        say(f"building the {kind} wheel from {tree}")
        venvs[kind], build_s[kind] = build(tree, workdir / kind, kind == "compiled")
    builds = {
        kind: subprocess.run(
            [str(b / "conversions"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for kind, b in venvs.items()
    }
    ceilings = {kind: decode_ceiling(b, path) for kind, b in venvs.items()}
    start, start_source = issue_start_tree(workdir) if issue_start else (None, "not asked")
    runs: dict[str, list[dict[str, float]]] = {"compiled": [], "pure": []}
    start_runs: list[dict[str, float]] = []
    digests: set[str] = set()
    load = os.getloadavg()[0]
    for pair in range(pairs):
        order = ("compiled", "pure") if pair % 2 == 0 else ("pure", "compiled")
        for kind in order:
            wall, cpu, digest = process(venvs[kind], path, workdir / f"out-{kind}.ndjson")
            digests.add(digest)
            runs[kind].append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
            say(f"{kind}: {wall:.2f} s, {cpu:.2f} s of CPU")
        if start is not None:  # its outputs differ by the fixes made since: not in `identical`
            wall, cpu, _ = process_tree(start, path, workdir / "out-issue-start.ndjson")
            start_runs.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
            say(f"the issue's start ({start_source}, pure): {wall:.2f} s, {cpu:.2f} s of CPU")

    def best(kind: str, key: str) -> float:
        return min(r[key] for r in runs[kind])

    vs_start: dict[str, Any] = {"commit": start_source}
    if start_runs:
        start_best = {key: min(r[key] for r in start_runs) for key in ("wall_s", "cpu_s")}
        vs_start |= {
            "runs": start_runs,
            "events_per_s": round(events / start_best["wall_s"]),
            "wall": {k: round(start_best["wall_s"] / best(k, "wall_s"), 2) for k in runs},
            "cpu": {k: round(start_best["cpu_s"] / best(k, "cpu_s"), 2) for k in runs},
        }
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "tree": str(tree),
        "events": events,
        "load_average_at_start": round(load, 2),
        "builds": builds,
        "build_s": {k: round(v, 1) for k, v in build_s.items()},
        "runs": runs,
        "identical": len(digests) == 1,
        "best_cpu_s": {k: best(k, "cpu_s") for k in runs},
        "best_wall_s": {k: best(k, "wall_s") for k in runs},
        "cpu_saved": round(1 - best("compiled", "cpu_s") / best("pure", "cpu_s"), 3),
        "wall_saved": round(1 - best("compiled", "wall_s") / best("pure", "wall_s"), 3),
        "events_per_s": {k: round(events / best(k, "wall_s")) for k in runs},
        "decode_ceiling_eps": {k: round(n / seconds) for k, (n, seconds) in ceilings.items()},
        "vs_decode_ceiling": {
            k: round(events / best(k, "wall_s") / (n / seconds), 3) for k, (n, seconds) in ceilings.items()
        },
        "vs_issue_start": vs_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to build (default: this one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "compiled.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-compiled-") as tmp:
        result = measure(args.tree.resolve(), args.pairs, Path(tmp))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
