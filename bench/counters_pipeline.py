"""The counters in the worker or in their own process, through the whole pipeline, as `make bench`
measures it (`bench.run`'s pipeline measure: the same traffic waiting on the topic, events per
second from the first event in to the last counter applied, and the CPU time per event of the
worker and of the counters' process): `python -m bench.counters_pipeline [--repeat N]`.

Apart from `bench.counters` (the counters' apply and their own process alone), which `bench.run`
imports: this one imports `bench.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Run, batched, produce, traffic
from bench.run import pipeline as run_pipeline
from streams.core.input.decode import decode_message
from streams.kafka import ensure_topics
from streams.tools.infra import LocalInfra

ROOT = Path(__file__).resolve().parent


async def pipeline_once(
    infra: LocalInfra, workdir: Path, lines: list[bytes], expected: int, kind: str, where: str
) -> dict[str, Any]:
    """One run of `bench.run`'s pipeline measure, the counters in the worker or in a process."""
    run = Run(infra, workdir, kind[:3])
    await ensure_topics(run.settings)
    await produce(
        run.settings, run.source, lines if kind == "single" else batched(lines), keyed=kind == "single"
    )
    eps, counted, measured = run_pipeline(run, expected, counters=where)
    return {
        "traffic": kind,
        "counters": where,
        "eps": round(eps),
        "outputs": counted,
        "cpu_us_per_event": measured["cpu_us_per_event"],
    }


async def pipeline(repeat: int) -> list[dict[str, Any]]:
    """Events per second and CPU per event through the pipeline, counters in the worker or not."""
    lines = traffic(40_000)
    expected = sum(len(decode_message(line).events) for line in lines)
    workdir = ROOT.parent / "var" / "bench" / "counters-pipeline"
    rows: list[dict[str, Any]] = []
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("REDIS_URL")
    with LocalInfra(*given, workdir=workdir / "infra") as infra:
        for _ in range(repeat):
            for kind in ("single", "batched"):
                for where in ("worker", "process"):
                    row = await pipeline_once(infra, workdir, lines, expected, kind, where)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--label", default="", help="Recorded with the result (e.g. a commit).")
    args = parser.parse_args()
    rows = asyncio.run(pipeline(args.repeat))
    print(json.dumps({"label": args.label, "pipeline": rows, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


if __name__ == "__main__":
    main()
