"""Offline mode: the same engine over a file; its funnel counts against an independent count."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from click.testing import CliRunner

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.offline.run import WRITE_BLOCK, OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Incident, Simulator
from tests.helpers import incident_funnels

CHECKOUT = ["product_view", "add_to_cart", "shipping_details", "payment_details", "purchase"]
SEQUENTIAL_NO_WINDOW = compile_config(
    parse_config("""
version: 1
goals: [{name: purchase, match: {event: purchase}}]
funnels:
  - name: checkout
    window: none
    steps:
      - {name: product_view, match: {event: product_view}}
      - {name: add_to_cart, match: {event: add_to_cart}}
      - {name: shipping, match: {event: shipping_details}}
      - {name: payment, match: {event: payment_details}}
      - {name: purchase, match: {goal: purchase}}
""")
)


def independent_reach(lines: list[bytes]) -> list[int]:
    """Users reaching each step: step k when steps 0..k occur in order (no engine code used)."""
    names: dict[str, list[str]] = defaultdict(list)
    seen_ids: set[str] = set()
    for line in lines:
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        identity = body.get("user_id") or body.get("anonymous_id")
        if (
            not isinstance(body, dict)
            or not identity
            or "timestamp" not in body
            or body["event_id"] in seen_ids
        ):
            continue
        if not isinstance(body.get("properties", {}), dict) or body["timestamp"] == "yesterday at noon":
            continue
        seen_ids.add(body["event_id"])
        names[identity].append(body["event"])
    reach = [0] * len(CHECKOUT)
    for sequence in names.values():
        position = 0
        for k, step in enumerate(CHECKOUT):
            if step not in sequence[position:]:
                break
            position = sequence.index(step, position) + 1
            reach[k] += 1
    return reach


def test_offline_funnel_counts_equal_an_independent_count() -> None:
    # one id per person: the independent count knows no identity stitching (tests/core/journeys)
    lines = list(Simulator(seed=3, users=3_000, days=7, bad_rate=0.01, stitched=False).lines())
    run = OfflineRun(SEQUENTIAL_NO_WINDOW, partitions=4)
    users_at_step: list[set[str]] = [set() for _ in CHECKOUT]
    for output in run.run(lines):
        data = output.model_dump()
        if data["type"] == "micro" and data["funnel"] == "checkout":
            users_at_step[data["step_index"]].add(output.identity)
    counted = [len(users) for users in users_at_step]
    assert counted == independent_reach(lines)
    assert counted[0] > 1_000 and counted[-1] > 100, counted
    assert run.rejected > 0 and run.events + run.rejected >= len(lines)


def test_process_command_writes_ndjson_with_a_type(tmp_path: Path) -> None:
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(Simulator(seed=9, users=60, days=1, bad_rate=0.05).lines()) + b"\n")
    result = CliRunner().invoke(
        main, ["process", "--config", str(DEFAULT_FUNNELS), "--input", str(source), "--flush", "--progress"]
    )
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    types = {r["type"] for r in records}
    assert (
        {"micro", "session", "deadletter"}
        <= types
        <= {
            "micro",
            "macro",
            "dropoff",
            "stalled",
            "session",
            "deadletter",
            "alert",
            "identity",
            "experiment",
        }
    )
    # --flush ends each experiment with its final state (this traffic has no variant: none compared)
    assert [(r["experiment"], r["final"], r["variants"]) for r in records if r["type"] == "experiment"] == [
        ("one_page_checkout", True, [])
    ]
    assert all(r["id"] and r["timestamp"] for r in records)
    assert "events," in result.stderr and "rejected" in result.stderr


def test_outputs_written_to_a_file_in_large_blocks_are_the_ones_the_run_gives(tmp_path: Path) -> None:
    """Standard output redirected to a file is written in `WRITE_BLOCK`s (a test's stream, with no
    file descriptor, as Python buffers it): the same bytes, more than a block of them, in order,
    with the stderr summary after."""
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(Simulator(seed=4, users=400, days=1, bad_rate=0.02).lines()) + b"\n")
    arguments = ["process", "--config", str(DEFAULT_FUNNELS), "--input", str(source), "--flush"]
    expected = CliRunner().invoke(main, arguments)
    assert expected.exit_code == 0, expected.output
    written = tmp_path / "outputs.ndjson"
    with written.open("wb") as sink:
        command = [sys.executable, "-m", "streams.cli", *arguments]
        done = subprocess.run(command, stdout=sink, stderr=subprocess.PIPE, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert written.stat().st_size > WRITE_BLOCK
    assert written.read_bytes() == expected.stdout_bytes
    assert b"events," in done.stderr


CHOICE = """
import sys
from streams.offline.run import open_output
out = open_output()
print(type(out).__name__, out is sys.stdout.buffer, file=sys.stderr)
"""


def test_a_regular_file_gets_large_blocks_even_unbuffered_and_a_pipe_what_python_says(tmp_path: Path) -> None:
    """`PYTHONUNBUFFERED=1` (container images set it) made every output line a write: a file
    still gets `WRITE_BLOCK`s, a pipe the unbuffered stream its reader may be waiting on."""
    unbuffered = os.environ | {"PYTHONUNBUFFERED": "1"}
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    chosen = {}
    for name, env in (("unbuffered", unbuffered), ("buffered", buffered)):
        with (tmp_path / f"{name}.out").open("wb") as sink:
            to_file = subprocess.run(
                [sys.executable, "-c", CHOICE], check=True, stdout=sink, stderr=subprocess.PIPE, env=env
            )
        to_pipe = subprocess.run([sys.executable, "-c", CHOICE], check=True, capture_output=True, env=env)
        chosen[name] = (to_file.stderr.decode().split(), to_pipe.stderr.decode().split())
    assert chosen == {
        "unbuffered": (["BufferedWriter", "False"], ["FileIO", "True"]),
        "buffered": (["BufferedWriter", "False"], ["BufferedWriter", "True"]),
    }


def test_process_reads_stdin_and_refuses_a_bad_config(tmp_path: Path) -> None:
    line = orjson.dumps(
        {"event_id": "1", "event": "newsletter_signup", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}
    )
    result = CliRunner().invoke(main, ["process", "--input", "-"], input=line + b"\n")
    assert result.exit_code == 0
    assert [orjson.loads(x)["type"] for x in result.stdout.splitlines()] == ["micro"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nfunnels: 3\n")
    refused = CliRunner().invoke(main, ["process", "--config", str(bad), "--input", "-"], input=b"")
    assert refused.exit_code == 2 and f"{bad}:2: funnels:" in refused.output


def test_flush_closes_what_is_still_open() -> None:
    lines = list(Simulator(seed=4, users=50, days=1).lines())
    run = OfflineRun(compile_config(parse_config(DEFAULT_FUNNELS.read_text())), partitions=2)
    list(run.run(lines))
    flushed = run.flush()
    closed = [o for o in flushed if o.type != "experiment"]
    assert closed and {o.type for o in closed} <= {"session", "dropoff", "stalled", "alert"}
    assert [o.type for o in flushed[len(closed) :]] == ["experiment"]  # its final state, last
    assert all(run.engine.load(identity).session is None for identity in run.store)  # type: ignore[union-attr]


def test_the_rejected_count_is_the_dead_letters_written(tmp_path: Path) -> None:
    """Lines refused by decoding and events refused by the engine (late) both count: the summary
    said 11 rejected beside 12 dead letters when one event was late."""
    from tests.helpers import event

    lines = [
        orjson.dumps(event("product_view", "12:00", "late-user")),
        orjson.dumps(event("product_view", "09:00", "late-user")),  # hours behind its journey
        b"{not json",
        orjson.dumps({"event": "no id or time"}),
    ]
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(lines) + b"\n")
    for extra in ([], ["--workers", "2"]):
        result = CliRunner().invoke(
            main, ["process", "--config", str(DEFAULT_FUNNELS), "--input", str(source), *extra]
        )
        assert result.exit_code == 0, result.output
        records = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        letters = sorted(r["reason"] for r in records if r["type"] == "deadletter")
        assert letters == ["invalid_event", "invalid_json", "late_event"], extra
        # each where it came from: the line number, the late one's too
        lines_of = {r["reason"]: r["source_offset"] for r in records if r["type"] == "deadletter"}
        assert lines_of == {"late_event": 2, "invalid_json": 3, "invalid_event": 4}
        # and with the line as it was, not the event re-encoded
        [late] = [r for r in records if r["type"] == "deadletter" and r["reason"] == "late_event"]
        assert base64.b64decode(late["original_b64"]) == lines[1], extra
        assert "3 rejected" in result.stderr, (extra, result.stderr)


def test_a_run_that_does_not_judge_gives_the_same_outputs_but_alerts() -> None:
    """`deploy --history`'s offline run (`OfflineRun(judge=False)`): its generation judges alerts
    and experiments again from the microconversions."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    incident = Incident(start + timedelta(days=2), start + timedelta(days=4), "mobile", 0.3)
    lines = list(Simulator(seed=8, users=1_000, start=start, days=5, incident=incident).lines())
    config = compile_config(parse_config(incident_funnels(baseline="1d", min_entered=10)))
    judging = list(OfflineRun(config, partitions=2).run(lines))
    assert "alert" in {o.type for o in judging}, "the incident raises an alert"
    plain = list(OfflineRun(config, partitions=2, judge=False).run(lines))
    assert [o.id for o in plain] == [o.id for o in judging if o.type not in ("alert", "experiment")]
