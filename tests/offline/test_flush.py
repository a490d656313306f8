"""`conversions process --flush` judges the input to its end (issue 31, item 4, first rough
edge): the alert and experiment evaluators judge the last `late_tolerance` of event time and
what the flush released, each experiment ends with a record marked final, and the run says each
funnel's counts on stderr and in `--summary FILE`. One process, `--workers`, and `--state` (a
resumable run does not judge its tail; `--flush` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from streams.cli import main
from tests.helpers import event

CONFIG = """
version: 1
session_timeout: 30m
late_tolerance: 10m
goals:
  - {name: purchase, match: {event: purchase}}
funnels:
  - name: checkout
    window: 1d
    steps:
      - {name: view, match: {event: product_view}}
      - {name: cart, match: {event: add_to_cart}}
      - {name: buy,  match: {goal: purchase}}
alerts:
  - {funnel: checkout, step: cart, window: 15m, baseline: 24h, min_entered: 2, drop_below: 0.5}
experiments:
  - {name: button, funnel: checkout, variant: properties.variant, control: control, min_entered: 1}
"""


def journey(user: str, variant: str | None, steps: list[tuple[str, str]]) -> list[dict[str, Any]]:
    properties = {"variant": variant} if variant else {}
    return [event(name, at, user, session_id=f"s-{user}", properties=properties) for name, at in steps]


# Both variants enter at 10:00 and buy at 10:30 and 10:31; two more people only look at 10:31:
# the input ends at 10:31, so without the flush the evaluators judge only to 10:21.
EVENTS = sorted(
    [
        *journey(
            "c1", "control", [("product_view", "10:00"), ("add_to_cart", "10:00:30"), ("purchase", "10:30")]
        ),
        *journey(
            "t1", "treatment", [("product_view", "10:00"), ("add_to_cart", "10:00:30"), ("purchase", "10:31")]
        ),
        *journey("x1", None, [("product_view", "10:31")]),
        *journey("x2", None, [("product_view", "10:31")]),
    ],
    key=lambda e: str(e["timestamp"]),
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "funnels.yaml").write_text(CONFIG)
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS))
    (tmp_path / "head.ndjson").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS[:4]))
    (tmp_path / "tail.ndjson").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS[4:]))
    return tmp_path


def process(files: Path, *args: str, data: str = "in.ndjson") -> tuple[Result, list[dict[str, Any]]]:
    result = CliRunner().invoke(
        main, ["process", "--config", str(files / "funnels.yaml"), "--input", str(files / data), *args]
    )
    assert result.exit_code == 0, result.output
    return result, [orjson.loads(line) for line in result.stdout_bytes.splitlines()]


def of(outputs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in outputs if o["type"] == kind]


def converted(update: dict[str, Any]) -> dict[str, int]:
    return {v["variant"]: v["converted"] for v in update["variants"]}


def test_without_the_flush_the_tail_is_not_judged(files: Path) -> None:
    """What a resumable run does (and what --flush did before): the experiment's last line says
    nobody converted, and the alert on the two look-only visitors is not judged."""
    _, outputs = process(files)
    experiments = of(outputs, "experiment")
    assert converted(experiments[-1]) == {"control": 0, "treatment": 0}
    assert not any(e["final"] for e in experiments)
    assert of(outputs, "alert") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flush_judges_to_the_end_and_ends_each_experiment_with_its_final_state(
    files: Path, workers: int
) -> None:
    result, outputs = process(files, "--flush", "--workers", str(workers))
    final = [e for e in of(outputs, "experiment") if e["final"]]
    assert len(final) == 1
    assert converted(final[0]) == {"control": 1, "treatment": 1}
    assert final[0]["timestamp"] == "2024-03-13T10:32:00Z"  # every minute up to the last event's
    assert final[0]["id"] not in {e["id"] for e in of(outputs, "experiment") if not e["final"]}
    # the two visitors at 10:31 who did not add to cart: 0 of 2 in the window, below 0.5
    alerts = of(outputs, "alert")
    assert [(a["state"], a["step"], a["entered"], a["rate"], a["timestamp"]) for a in alerts] == [
        ("fired", "cart", 2, 0.0, "2024-03-13T10:32:00Z")
    ]
    assert "funnel checkout (" in result.stderr
    assert "4 entered, 2 completed, 2 dropped, 0 open; view 4 (2 dropped), cart 2, buy 2" in result.stderr


def test_workers_write_the_same_bytes_as_one_process(files: Path) -> None:
    one, _ = process(files, "--flush")
    two, _ = process(files, "--flush", "--workers", "2")
    assert sorted(one.stdout_bytes.splitlines()) == sorted(two.stdout_bytes.splitlines())


def test_the_summary_file(files: Path) -> None:
    _, outputs = process(files, "--flush", "--summary", str(files / "summary.json"))
    summary = orjson.loads((files / "summary.json").read_bytes())
    version = of(outputs, "micro")[0]["funnel_version"]
    assert summary == {
        "lines": 8,
        "events": 8,
        "rejected": 0,
        "unknown_fields": {},
        "flushed": True,
        "funnels": [
            {
                "funnel": "checkout",
                "funnel_version": version,
                "entered": 4,
                "completed": 2,
                "dropped": 2,
                "carried_in": 0,
                "carried_out": 0,
                "open": 0,
                "steps": [
                    {"step": "view", "step_index": 0, "reached": 4, "dropped": 2},
                    {"step": "cart", "step_index": 1, "reached": 2, "dropped": 0},
                    {"step": "buy", "step_index": 2, "reached": 2, "dropped": 0},
                ],
            }
        ],
    }
    _, _ = process(files, "--summary", str(files / "open.json"))
    assert orjson.loads((files / "open.json").read_bytes())["funnels"][0]["open"] == 2


def test_a_resumable_run_does_not_judge_its_tail_and_the_flush_after_it_does(files: Path) -> None:
    state = str(files / "state")
    _, first = process(files, "--state", state, data="head.ndjson")
    _, second = process(files, "--state", state, "--flush", data="tail.ndjson")
    _, whole = process(files, "--flush")
    assert not any(e["final"] for e in of(first, "experiment"))
    assert sorted(orjson.dumps(o) for o in first + second) == sorted(orjson.dumps(o) for o in whole)
