"""Alert detection at low volume, measured: the cusum rule beside the windowed Fisher rule.

Seeded traffic into one step at 2, 10, 50 and 500 entries a day (Poisson arrivals, half web and
half mobile, a conversion rate of 0.4, conversions within 30 minutes of the entry). Each run
first gives the rules 28 days of history (their baseline, estimated by the evaluator from the
counts as in production: no rule is ever told the true rate), then either

- steady: 90 more days at the same rate; every fired alert is a false alarm, or
- drop: 7 steady days, then the rate halves for 21 days; the delay is from the drop's start to
  the first alert after it (a run with none is "not detected", counted as an infinite delay).

Both rules promise one false alarm per 90 days: the cusum rule by `false_alarm_every: 90d`, the
window rule (7 d window, relative_drop 0.2) by `confidence: 1 - 7/90`, which bounds its false
alarms at one per 90 days of watching (docs/concepts/statistics.md). The cusum rule keeps its
promise with room to spare (its p0 is taken a standard error low), so a third rule, cusum with
`false_alarm_every: 45d`, is the one whose measured false alarms match the window rule's. The
evaluator is fed exactly what it reads in production, per minute: entries into the step before
and into the step (the window rule) and the trials resolved (the cusum rule: a success when the
conversion comes, a failure at `resolve_after` = 1 h).

`python -m bench.alert_detection [--seeds N] [--volumes 2,10] [--processes 2] [--out FILE]`
(`make bench-alerts`) writes `bench/results/alert_detection_*.json` and prints the table quoted in
docs/howto/alerting.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.measures.alerts import AlertEvaluator
from streams.core.measures.rule_state import MINUTE_MS

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
DAY = 1_440  # minutes
WARMUP_DAYS = 28
STEADY_DAYS = 90
DROP_AFTER_DAYS = 7
DROP_DAYS = 21
RATE = 0.4
DROP = 0.5
RESOLVE_MINUTES = 60
CONVERT_WITHIN_MINUTES = 30
WINDOW_CONFIDENCE = round(1 - 7 / 90, 4)
VOLUMES = (2, 10, 50, 500)
RESULTS = Path(__file__).parent / "results" / "alert_detection.json"


def config() -> CompiledConfig:
    return compile_config(
        parse_config(f"""
version: 1
funnels:
  - name: f
    steps:
      - {{name: a, match: {{event: a}}}}
      - {{name: b, match: {{event: b}}}}
alerts:
  - {{funnel: f, step: b, method: cusum, window: 7d, baseline: 28d, min_entered: 10,
      relative_drop: 0.5, false_alarm_every: 90d, resolve_after: {RESOLVE_MINUTES}m}}
  - {{funnel: f, step: b, method: window, window: 7d, baseline: 28d, min_entered: 10,
      relative_drop: 0.2, confidence: {WINDOW_CONFIDENCE}}}
  - {{funnel: f, step: b, method: cusum, window: 7d, baseline: 28d, min_entered: 10,
      relative_drop: 0.5, false_alarm_every: 45d, resolve_after: {RESOLVE_MINUTES}m}}
""")
    )


@dataclass(frozen=True)
class Run:
    volume: float
    seed: int
    scenario: str  # steady | drop


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def simulate(run: Run, compiled: CompiledConfig | None = None) -> dict[str, Any]:
    """One seeded run: per method, the minutes (since the judged span began) of its fires."""
    compiled = compiled or config()
    evaluator = AlertEvaluator(compiled)
    rng = random.Random(f"{run.volume}/{run.seed}/{run.scenario}")
    judged_from = WARMUP_DAYS * DAY
    drop_at = judged_from + DROP_AFTER_DAYS * DAY if run.scenario == "drop" else None
    end = judged_from + (STEADY_DAYS if run.scenario == "steady" else DROP_AFTER_DAYS + DROP_DAYS) * DAY
    pending: list[tuple[int, int, str]] = []  # (minute, kind 0 reached/1 success/2 failure, platform)
    per_minute = run.volume / DAY
    fires: dict[str, list[int]] = {name: [] for name in METHODS}
    for minute in range(end):
        at = T0 + minute * MINUTE_MS
        rate = RATE * (1 - DROP) if drop_at is not None and minute >= drop_at else RATE
        for _ in range(_poisson(rng, per_minute)):
            platform = "web" if rng.random() < 0.5 else "mobile"
            evaluator.count(at, "f", 0, {"context.platform": platform})
            if rng.random() < rate:
                done = minute + rng.randrange(CONVERT_WITHIN_MINUTES)
                heapq.heappush(pending, (done, 0, platform))
                heapq.heappush(pending, (done, 1, platform))
            else:
                heapq.heappush(pending, (minute + RESOLVE_MINUTES, 2, platform))
        while pending and pending[0][0] == minute:
            _, kind, platform = heapq.heappop(pending)
            breakdowns = {"context.platform": platform}
            if kind == 0:
                evaluator.count(at, "f", 1, breakdowns)
            else:
                evaluator.count_trials(at, "f", 1, breakdowns, int(kind == 1), int(kind == 2))
        for alert in evaluator.advance(at + MINUTE_MS):
            if alert.state == "fired" and minute >= judged_from:
                fires[_name(alert)].append(minute - judged_from)
    return {"volume": run.volume, "seed": run.seed, "scenario": run.scenario, "fires": fires}


METHODS = ("cusum", "window", "cusum@45d")
"""The rules: cusum promising one false alarm per 90 days, the window rule promising the same,
and cusum promising one per 45 days (its measured rate is about the window rule's)."""


def _name(alert: Any) -> str:
    return "cusum@45d" if alert.method == "cusum" and alert.false_alarm_every == "45d" else str(alert.method)


def _runs(volumes: Iterable[float], seeds: int) -> list[Run]:
    return [Run(v, s, scenario) for v in volumes for scenario in ("steady", "drop") for s in range(seeds)]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per volume and method: false alarms per 90 days, detection delays in days."""
    out: dict[str, Any] = {}
    drop_start = DROP_AFTER_DAYS * DAY
    for volume in sorted({r["volume"] for r in results}):
        row: dict[str, Any] = {}
        for method in METHODS:
            if any(method not in r["fires"] for r in results if r["volume"] == volume):
                continue
            steady = [r for r in results if r["volume"] == volume and r["scenario"] == "steady"]
            drops = [r for r in results if r["volume"] == volume and r["scenario"] == "drop"]
            false_alarms = sum(len(r["fires"][method]) for r in steady)
            delays = []
            for r in drops:
                after = [m for m in r["fires"][method] if m >= drop_start]
                delays.append((after[0] - drop_start) / DAY if after else math.inf)
            row[method] = {
                "steady_runs": len(steady),
                "false_alarms": false_alarms,
                "false_alarms_per_90d": false_alarms / len(steady) if steady else None,
                "drop_runs": len(drops),
                "detected": sum(1 for d in delays if d != math.inf),
                "median_delay_days": _finite(statistics.median(delays)) if delays else None,
                "p90_delay_days": _finite(_quantile(delays, 0.9)) if delays else None,
                "false_fires_before_drop": sum(
                    1 for r in drops for m in r["fires"][method] if m < drop_start
                ),
            }
        out[str(volume)] = row
    return out


def _finite(value: float) -> float | None:
    return None if value == math.inf else round(value, 2)


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| entries/day | method | false alarms per 90 d (runs) | detected | median delay (d) "
        "| p90 delay (d) |",
        "|---|---|---|---|---|---|",
    ]
    for volume, row in summary.items():
        for method, s in row.items():
            lines.append(
                f"| {volume} | {method} | {s['false_alarms_per_90d']:.2f} ({s['steady_runs']}) | "
                f"{s['detected']}/{s['drop_runs']} | {_show(s['median_delay_days'])} | "
                f"{_show(s['p90_delay_days'])} |"
            )
    return "\n".join(lines)


def _show(value: float | None) -> str:
    return "not detected" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--volumes", default=",".join(map(str, VOLUMES)))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    volumes = [float(v) for v in args.volumes.split(",")]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: list[dict[str, Any]] = [r for r in previous.get("runs", []) if r["volume"] not in volumes]
    started = time.monotonic()
    with ProcessPoolExecutor(args.processes) as pool:
        for volume in volumes:  # written after each volume: a long run shows its figures as it goes
            results += pool.map(simulate, _runs([volume], args.seeds), chunksize=1)
            summary = summarize(results)
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "rate": RATE,
                        "drop": DROP,
                        "window_confidence": WINDOW_CONFIDENCE,
                        "seconds": round(time.monotonic() - started),
                        "summary": summary,
                        "runs": results,
                    },
                    indent=1,
                )
            )
            print(table(summary), flush=True)


if __name__ == "__main__":
    main()
