"""ClickHouse itself against the engine and the reference (optional: not collected by pytest).

chdb runs ClickHouse in process; its wheel is large, so it is no dependency of the project:

    .venv/bin/pip install chdb
    .venv/bin/python -m tests.core.journeys.clickhouse_check [EVENTS.ndjson ...]

1. Random step sequences (ties, gaps around the windows): per person, `windowFunnel(window)` and
   `windowFunnel(window, 'strict_once')` against `furthest_sequential` and the engine.
2. Each NDJSON file (e.g. `conversions simulate` output), windows 30m and 7d: users reaching
   each checkout step, ClickHouse against the engine (offline, as `conversions process`).
Prints the figures; exits 1 on any difference.
"""

from __future__ import annotations

import csv
import random
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import chdb
import orjson

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.event import ClickEvent
from streams.offline.run import OfflineRun
from tests.core.journeys.window_funnel_reference import furthest_sequential

CHECKOUT = ["product_view", "add_to_cart", "shipping_details", "payment_details", "purchase"]


def funnel_config(window: str) -> str:
    steps = "\n".join(f"      - {{name: {name}, match: {{event: {name}}}}}" for name in CHECKOUT)
    return f"version: 1\nfunnels:\n  - name: checkout\n    window: {window}\n    steps:\n{steps}\n"


def clickhouse_levels(rows: list[tuple[str, int, str]], window_ms: int, mode: str = "") -> dict[str, int]:
    """Per person, windowFunnel's level (0: step 1 never happened) over (person, epoch ms, event)."""
    with tempfile.NamedTemporaryFile("w", suffix=".csv", newline="", delete=False) as f:
        csv.writer(f).writerows(rows)
        path = f.name
    conditions = ", ".join(f"event = '{name}'" for name in CHECKOUT)
    option = f", '{mode}'" if mode else ""
    result = chdb.query(  # type: ignore[no-untyped-call]
        f"SELECT person, windowFunnel({window_ms}{option})(ts, {conditions}) "
        f"FROM file('{path}', CSV, 'person String, ts UInt64, event String') GROUP BY person",
        "CSV",
    )
    Path(path).unlink()
    levels = {}
    for line in str(result).splitlines():
        person, level = line.rsplit(",", 1)
        levels[person.strip('"')] = int(level)
    return levels


def engine_levels(lines: list[bytes], window: str) -> dict[str, int]:
    run = OfflineRun(compile_config(parse_config(funnel_config(window))), partitions=1)
    levels: dict[str, int] = defaultdict(int)
    for output in [*run.run(lines), *run.flush()]:
        data = output.model_dump()
        if data["type"] == "micro" and data.get("funnel") == "checkout":
            identity = output.identity or ""
            levels[identity] = max(levels[identity], data["step_index"] + 1)
    return levels


def random_people(seed: int, people: int) -> tuple[list[bytes], list[tuple[str, int, str]]]:
    rng = random.Random(seed)
    lines: list[tuple[int, int, bytes]] = []
    rows = []
    start = int(datetime(2024, 3, 13, tzinfo=UTC).timestamp() * 1000)
    for p in range(people):
        at = start
        for i in range(rng.randint(1, 25)):
            at += rng.choice([0, 0, 1, 1_000, 60_000, 600_000, 1_799_999, 1_800_000, 1_800_001, 3_600_000])
            name = rng.choice([*CHECKOUT, CHECKOUT[0], CHECKOUT[1], "page_view"])
            event = {"event_id": f"r{p}-{i}", "event": name, "user_id": f"p{p}", "timestamp": at}
            lines.append((at, len(lines), orjson.dumps(event)))
            rows.append((f"p{p}", at, name))
    return [line for _, _, line in sorted(lines)], rows  # in time order, as a partition's input is


def check_random(window: str, window_ms: int) -> int:
    lines, rows = random_people(seed=window_ms, people=3_000)
    plain = clickhouse_levels(rows, window_ms)
    once = clickhouse_levels(rows, window_ms, "strict_once")
    engine = engine_levels(lines, window)
    steps = defaultdict(list)
    for person, at, name in rows:
        if name in CHECKOUT:
            steps[person].append((at, CHECKOUT.index(name)))
    wrong = 0
    for person, level in plain.items():
        reference = furthest_sequential(steps[person], len(CHECKOUT), window_ms, [None] * len(CHECKOUT)) + 1
        if not level == once[person] == reference == engine.get(person, 0):
            wrong += 1
            print(
                f"  {person}: clickhouse {level}, strict_once {once[person]}, reference {reference}, "
                f"engine {engine.get(person, 0)}: {steps[person]}"
            )
    print(f"random people, window {window}: {len(plain)} people, {wrong} differ")
    return wrong


def per_step(levels: dict[str, int]) -> list[int]:
    return [sum(1 for level in levels.values() if level > k) for k in range(len(CHECKOUT))]


def check_file(path: str) -> int:
    lines = Path(path).read_bytes().splitlines()
    rows = []
    for line in lines:
        event = ClickEvent.model_validate_json(line)
        rows.append((event.identity, event.ts_ms, event.event))
    wrong = 0
    for window, window_ms in (("30m", 1_800_000), ("7d", 7 * 86_400_000)):
        clickhouse, engine = (
            per_step(clickhouse_levels(rows, window_ms)),
            per_step(engine_levels(lines, window)),
        )
        print(f"{path}, window {window}: users per step: clickhouse {clickhouse}, engine {engine}")
        wrong += clickhouse != engine
    return wrong


def main() -> int:
    wrong = sum(check_random(w, ms) for w, ms in (("10m", 600_000), ("30m", 1_800_000), ("1h", 3_600_000)))
    wrong += sum(check_file(path) for path in sys.argv[1:])
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
