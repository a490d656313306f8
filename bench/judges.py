"""The alert and experiment evaluators alone, several versions of the code side by side.

In a whole offline run they are a few percent of the CPU, under the noise of a shared machine;
alone they can be compared. This checkout's offline mode runs the input once and records what it
feeds `streams.offline.run.Judges`: each line's microconversions and event time, then the end of
the input (`--flush`). Each version (a source tree, `git archive <commit> | tar -x -C DIR`) then
replays exactly those calls in a process of its own (`PYTHONPATH=DIR PYTHONSAFEPATH=1`), every
tree once per round, in the order given; per replay, its CPU seconds (the replay only, not the
start-up nor the loading of the record) and a digest of what was judged (the same in every tree
when their outputs are the same).

    python -m bench.judges --input FILE --rounds 3 /tmp/before /tmp/after [--config FUNNELS]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.offline.run import Judges, OfflineRun
from streams.settings import Settings, load_settings

Call = tuple[str, list[dict[str, Any]], int | None]

REPLAY = """
import hashlib, pickle, sys, time
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.offline.run import Judges
config = compile_config(load_config(sys.argv[2]))
with open(sys.argv[1], "rb") as f:
    calls = pickle.load(f)
judges = Judges(config)
out = []
started = time.process_time()
for kind, micro, latest in calls:
    out += (judges.after_line if kind == "line" else judges.finish)(micro, latest)
cpu = time.process_time() - started
digest = hashlib.sha256(b"".join(o.to_json() + b"\\n" for o in out)).hexdigest()[:16]
print(f"{cpu:.3f} {len(out)} {digest}")
"""


class _Recording(Judges):
    """`Judges` that keeps a copy of every call it is given."""

    calls: list[Call]

    def after_line(self, micro: Sequence[Mapping[str, Any]], latest_ms: int) -> list[Any]:
        self.calls.append(("line", [dict(m) for m in micro], latest_ms))
        return super().after_line(micro, latest_ms)

    def finish(self, micro: Sequence[Mapping[str, Any]], latest_ms: int | None) -> list[Any]:
        self.calls.append(("end", [dict(m) for m in micro], latest_ms))
        return super().finish(micro, latest_ms)


def record(path: Path, funnels: Path, settings: Settings) -> list[Call]:
    """The calls offline mode (`conversions process --flush`) makes to the evaluators."""
    config = compile_config(load_config(funnels))
    latest_ms = settings.latest_accepted_ms()
    run = OfflineRun(config, settings.partitions, source=f"file:{path}", latest_ms=latest_ms)
    recording = _Recording(config)
    recording.calls = []
    run.judges = recording
    with open(path, "rb") as lines:
        for line in lines:
            run.feed(line)
    run.engine.flush()
    run.flush()
    return recording.calls


def replay(tree: Path, calls_path: Path, funnels: Path) -> tuple[float, int, str]:
    """CPU seconds of `tree`'s evaluators over the recorded calls, outputs, their digest."""
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONPATH=str(tree))
    command = [sys.executable, "-c", REPLAY, str(calls_path), str(funnels)]
    done = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, check=True)
    cpu, outputs, digest = done.stdout.split()
    return float(cpu), int(outputs), digest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, help="an NDJSON file (conversions simulate)")
    parser.add_argument("--config", type=Path, default=None, help="funnels (default: CONVERSIONS_FUNNELS)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("trees", type=Path, nargs="+")
    args = parser.parse_args()
    settings = load_settings()
    funnels = (args.config or Path(settings.funnels)).resolve()
    calls = record(args.input, funnels, settings)
    with tempfile.TemporaryDirectory() as scratch:
        calls_path = Path(scratch) / "calls.pickle"
        calls_path.write_bytes(pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL))
        for round_ in range(args.rounds):
            for tree in args.trees:
                cpu, outputs, digest = replay(tree, calls_path, funnels)
                row = {"round": round_, "tree": str(tree), "cpu_s": cpu, "outputs": outputs, "digest": digest}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
