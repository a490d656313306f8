"""The counters' per-output CPU cost on its own: `core.counters.increments` and the batch folding
(`counters.batch.fold`) over the outputs of simulated traffic (`python -m bench.increments`).

A profile of the worker under `make bench` puts the counters' increments among the largest costs
of its event loop; this isolates them from the broker, Redis and the journeys, so a change to
them can be measured alone. The outputs are those of the offline engine over the simulated shop
(`Simulator(seed=7, ...)`, the example funnels with their breakdowns), serialized and decoded as
the counters consumer receives them (`orjson.loads` of the message value: timestamps are
strings). Times are CPU time (`time.process_time`, the machine is shared), per output, over
every counted output, repeated; the best and the median repetition are reported.

The batch folding holds a batch's increments (`--batch` outputs' worth) alive, as the counters
consumer does until its Redis call, so it also pays Python's cyclic garbage collector: each
increment is a tracked object, and full collections traverse the whole heap. So it is measured
three ways: `gc_heap` as is (the heap holds the bench's decoded outputs, tens of thousands of
dicts, as a worker's holds its journeys), `gc_frozen` with the bench's inputs moved out of the
collector's sight (`gc.freeze()`: what the counters cost on a small heap), and `gc_off`.

`consumer_gc_frozen` is the consumer's whole path from the message bytes, the heap frozen:
`increments_of` per decoded output then folded (as before issue 30), and `tally` (decoded,
capped and folded in one pass, `counters.tally`, as now), each with the default breakdown cap.

`--profile` runs cProfile over one repetition instead and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from streams.core.config.loader import load_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.measures.cardinality import BREAKDOWN_CAP, ValueCap
from streams.core.measures.counters import COUNTED_TYPES, increments, increments_of, pseudonymizer
from streams.counters.batch import fold
from streams.counters.tally import Tallier
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator

BUCKET_MS = 60_000  # `counter_bucket_s`' default


def simulated_outputs(config: CompiledConfig, users: int, days: float) -> list[dict[str, Any]]:
    """Every counted output of the simulated shop, as the counters consumer decodes it."""
    run = OfflineRun(config, partitions=4)
    lines = Simulator(seed=7, users=users, days=days, bad_rate=0.0).lines()
    found: list[dict[str, Any]] = []
    for output in [*run.run(lines), *run.flush()]:
        if output.type in COUNTED_TYPES:
            found.append(orjson.loads(output.to_json()))
    return found


def _time(work: Callable[[], object], repeat: int) -> list[float]:
    seconds: list[float] = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        seconds.append(time.process_time() - started)
    return seconds


def measure(
    outputs: list[dict[str, Any]],
    config: CompiledConfig,
    repeat: int,
    batch: int,
    pseudonym: Callable[[str], str] | None,
) -> dict[str, Any]:
    def only_increments() -> None:
        for output in outputs:
            increments(output, config, BUCKET_MS, pseudonym)

    def with_folding() -> None:
        for start in range(0, len(outputs), batch):
            fold([increments(o, config, BUCKET_MS, pseudonym) for o in outputs[start : start + batch]]).wire()

    def tallied() -> None:
        # as the counters consumer does since issue 30: each output's increments straight into
        # the batch's slots (`counters.tally`), from the message bytes
        tallier = Tallier(config, BUCKET_MS, pseudonym, ValueCap(BREAKDOWN_CAP))
        for start in range(0, len(encoded), batch):
            fold([tallier.decode(raw)[1] or () for raw in encoded[start : start + batch]]).wire()

    def planned() -> None:
        # as the counters consumer did before: `increments_of` per decoded output, then folded
        cap = ValueCap(BREAKDOWN_CAP)
        for start in range(0, len(encoded), batch):
            chunk = [orjson.loads(raw) for raw in encoded[start : start + batch]]
            fold([increments_of(o, config, BUCKET_MS, pseudonym, cap) or () for o in chunk]).wire()

    def figures(work: Callable[[], object]) -> dict[str, float]:
        per_output = sorted(s / len(outputs) * 1e6 for s in _time(work, repeat))
        return {
            "best_us_per_output": round(per_output[0], 2),
            "median_us_per_output": round(statistics.median(per_output), 2),
        }

    ops = sum(len(increments(o, config, BUCKET_MS, pseudonym)) for o in outputs)
    result: dict[str, Any] = {"outputs": len(outputs), "ops": ops, "batch": batch}
    result["increments"] = figures(only_increments)
    folding: dict[str, Any] = {"gc_heap": figures(with_folding)}
    gc.disable()
    folding["gc_off"] = figures(with_folding)
    gc.enable()
    gc.freeze()
    folding["gc_frozen"] = figures(with_folding)
    gc.unfreeze()
    result["increments_and_fold"] = folding
    encoded = [orjson.dumps(o) for o in outputs]
    gc.freeze()
    result["consumer_gc_frozen"] = {
        "increments_of_then_fold": figures(planned),
        "tally": figures(tallied),
    }
    gc.unfreeze()
    return result


def types_of(outputs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for output in outputs:
        name = str(output["type"]) + (f":{output['kind']}" if output["type"] == "micro" else "")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100, help="outputs folded together (make bench: 100)")
    parser.add_argument("--pseudonymize", action="store_true", help="with a pseudonymize key set")
    parser.add_argument("--profile", action="store_true", help="cProfile one repetition, print the top")
    args = parser.parse_args(argv)
    config = compile_config(load_config(DEFAULT_FUNNELS))
    outputs = simulated_outputs(config, args.users, args.days)
    pseudonym = pseudonymizer(b"bench key") if args.pseudonymize else None
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for start in range(0, len(outputs), args.batch):
            chunk = outputs[start : start + args.batch]
            fold([increments(o, config, BUCKET_MS, pseudonym) for o in chunk]).wire()
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
        return
    result = measure(outputs, config, args.repeat, args.batch, pseudonym)
    result["types"] = types_of(outputs)
    result["pseudonymize"] = args.pseudonymize
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
