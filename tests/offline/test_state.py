"""`conversions process --state`: a history processed in consecutive parts, each run continuing
the state the previous one saved, gives exactly the outputs of one run over the whole; a state
file that cannot be used is refused with exit 2 and left as it was."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.config.versions import Definition
from streams.offline.run import OfflineRun
from streams.offline.state import read, restore, write
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Simulator, VariantSplit
from tests.helpers import comparable

FUNNELS = DEFAULT_FUNNELS.read_text().replace("min_entered: 50", "min_entered: 5")
CONFIG = compile_config(parse_config(FUNNELS))
LINES = list(Simulator(seed=3, users=60, days=1, bad_rate=0.02, split=VariantSplit(lift=1.5)).lines())


def whole(lines: list[bytes]) -> list[dict[str, Any]]:
    run = OfflineRun(CONFIG, partitions=3)
    return [orjson.loads(o.to_json()) for o in run.run(lines)]


def in_parts(lines: list[bytes], cuts: list[int], path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bounds = [0, *sorted(set(cuts)), len(lines)]
    path.unlink(missing_ok=True)
    for start, end in itertools.pairwise(bounds):
        run = OfflineRun(CONFIG, partitions=3)
        payload = read(path)
        known: list[Definition] = []
        if payload is not None:
            resumed, known = restore(run, payload)
            out += [orjson.loads(o.to_json()) for o in resumed.outputs]
        out += [orjson.loads(o.to_json()) for o in run.run(lines[start:end])]
        write(path, run, known)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(LINES)), max_size=3))
def test_any_split_into_consecutive_parts_gives_the_outputs_of_the_whole(
    tmp_path: Path, cuts: list[int]
) -> None:
    expected = whole(LINES)
    assert {o["type"] for o in expected} >= {
        "micro",
        "macro",
        "dropoff",
        "session",
        "experiment",
        "deadletter",
    }
    assert in_parts(LINES, cuts, tmp_path / "state") == expected


def test_late_events_across_the_boundary_count_as_in_one_run(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(
            {"event_id": "a", "event": "product_view", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}
        ),
        orjson.dumps(
            {"event_id": "b", "event": "page_view", "user_id": "v", "timestamp": "2024-03-13T10:20:00Z"}
        ),
        # late by 15 minutes (within the 10 min tolerance of u's own journey, later than the file's)
        orjson.dumps(
            {"event_id": "c", "event": "add_to_cart", "user_id": "u", "timestamp": "2024-03-13T10:05:00Z"}
        ),
        orjson.dumps(
            {"event_id": "a", "event": "product_view", "user_id": "u", "timestamp": "2024-03-13T10:00:00Z"}
        ),
    ]
    expected = whole(lines)
    assert any(o.get("step") == "add_to_cart" for o in expected)
    for cut in range(len(lines) + 1):
        assert in_parts(lines, [cut], tmp_path / "s") == expected


def test_the_command_resumes_refuses_bad_state_files_and_says_what_flush_does(tmp_path: Path) -> None:
    config = tmp_path / "funnels.yaml"
    config.write_text(FUNNELS)
    cut = len(LINES) // 2
    (tmp_path / "a.ndjson").write_bytes(b"\n".join(LINES[:cut]) + b"\n")
    (tmp_path / "b.ndjson").write_bytes(b"\n".join(LINES[cut:]) + b"\n")
    (tmp_path / "ab.ndjson").write_bytes(b"\n".join(LINES) + b"\n")
    state = tmp_path / "state"

    def process(name: str, *extra: str) -> Any:
        return CliRunner().invoke(
            main, ["process", "--config", str(config), "--input", str(tmp_path / name), *extra]
        )

    first, second = process("a.ndjson", "--state", str(state)), process("b.ndjson", "--state", str(state))
    together = process("ab.ndjson")
    assert first.exit_code == second.exit_code == together.exit_code == 0
    parts = [comparable(orjson.loads(x)) for x in (first.stdout + second.stdout).splitlines()]
    assert parts == [comparable(orjson.loads(x)) for x in together.stdout.splitlines()]

    flushed = process("b.ndjson", "--state", str(tmp_path / "other"), "--flush")
    assert "--flush: every open session and attempt was closed" in flushed.stderr

    saved = state.read_bytes()
    header, _, body = saved.partition(b"\n")
    for broken, says in [
        (saved[: len(saved) - 10], "corrupt or truncated"),
        (header + b"\n" + bytes([body[0] ^ 1]) + body[1:], "corrupt or truncated"),
        (header.replace(b"state 1 ", b"state 9 ") + b"\n" + body, "newer release"),
        (b"hello\n", "not a conversions state file"),
    ]:
        state.write_bytes(broken)
        refused = process("b.ndjson", "--state", str(state))
        assert refused.exit_code == 2, refused.output
        assert says in refused.stderr
        assert state.read_bytes() == broken  # nothing overwritten


def test_a_state_saved_under_another_configuration_goes_through_the_version_rules(tmp_path: Path) -> None:
    config = tmp_path / "funnels.yaml"
    config.write_text(FUNNELS)
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(FUNNELS.replace("window: 7d", "window: 2d", 1))
    (tmp_path / "a.ndjson").write_bytes(b"\n".join(LINES[: len(LINES) // 2]) + b"\n")
    state = tmp_path / "state"
    CliRunner().invoke(
        main,
        ["process", "--config", str(config), "--input", str(tmp_path / "a.ndjson"), "--state", str(state)],
    )
    later = CliRunner().invoke(
        main,
        ["process", "--config", str(renamed), "--input", str(tmp_path / "a.ndjson"), "--state", str(state)],
    )
    assert later.exit_code == 0, later.output
    assert "since the state was saved: funnel checkout: incompatible" in later.stderr
    reasons = [orjson.loads(x).get("reason") for x in later.stdout.splitlines()]
    assert "definition_changed" in reasons


@pytest.mark.parametrize("workers", ["2"])
def test_state_is_refused_with_workers(tmp_path: Path, workers: str) -> None:
    result = CliRunner().invoke(
        main, ["process", "--input", "-", "--state", str(tmp_path / "s"), "--workers", workers], input=b""
    )
    assert result.exit_code == 2
    assert "one process" in result.stderr
