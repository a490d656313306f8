"""Offline mode, one process, several versions of the code side by side in one run.

Each version is a source tree (`git archive <commit> | tar -x -C DIR`), run as
`PYTHONPATH=DIR PYTHONSAFEPATH=1 python -m streams.cli process --input FILE` (without the second,
`python -m` would import the current checkout first). Before each round, the decoding ceiling
(`bench.offline.decode_ceiling`, this checkout's `decode_message`) is measured in this process;
then every tree runs once, in the order given. Per run: events/s by wall clock, the ratio to the
round's ceiling, the process's CPU seconds, and the engine's CPU per event (less the decoding's).
The machine is shared: compare within a round, repeat, and give the trees in reverse order too.

    python -m bench.offline_steps --input FILE --rounds 2 /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.offline import _children_cpu, decode_ceiling


def run_tree(tree: Path, path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `conversions process` from `tree` over `path`."""
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONPATH=str(tree))
    command = [sys.executable, "-m", "streams.cli", "process", "--input", str(path), "--no-progress"]
    cpu, started = _children_cpu(), time.perf_counter()
    quiet = subprocess.DEVNULL
    subprocess.run(command, env=env, cwd="/", stdout=quiet, stderr=quiet, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True, help="an NDJSON file (conversions simulate)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("trees", type=Path, nargs="+")
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        events, decode_s = decode_ceiling(args.input)
        for tree in args.trees:
            wall, cpu = run_tree(tree, args.input)
            row = {
                "round": round_,
                "tree": str(tree),
                "eps": round(events / wall),
                "ceiling_eps": round(events / decode_s),
                "ratio": round(decode_s / wall, 3),
                "cpu_s": round(cpu, 2),
                "engine_us_per_event": round((cpu - decode_s) / events * 1e6, 1),
                "load_average": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
