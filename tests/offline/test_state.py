"""`conversions process --state`: a history processed in consecutive parts, each run continuing
the state the previous one saved, gives exactly the outputs of one run over the whole; a state
file that cannot be used is refused with exit 2 and left as it was."""

from __future__ import annotations

import hashlib
import itertools
import pickle
import zlib
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.config.model import FunnelConfig
from streams.core.config.versions import Definition
from streams.offline.run import OfflineRun
from streams.offline.state import FORMAT, StateFileError, read, restore, write
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Incident, Simulator, VariantSplit
from tests.helpers import comparable

CUSUM_RULE = """  - funnel: checkout
    step: payment
    method: cusum
    window: 30m
    baseline: 4h
    min_entered: 5
    relative_drop: 0.5
    false_alarm_every: 1d
    resolve_after: 30m
    by: [context.platform]
experiments:"""
# the example's window rule and experiment, and a cusum rule that fires during the planted drop
FUNNELS = (
    DEFAULT_FUNNELS.read_text()
    .replace("min_entered: 50", "min_entered: 5")
    .replace("window: 15m\n    baseline: 24h", "window: 30m\n    baseline: 4h")
    .replace("experiments:", CUSUM_RULE, 1)
)
CONFIG = compile_config(parse_config(FUNNELS))
START = datetime(2024, 3, 11, tzinfo=UTC)
LINES = list(
    Simulator(
        seed=3,
        users=150,
        days=1,
        bad_rate=0.02,
        split=VariantSplit(lift=1.5),
        incident=Incident(START + timedelta(hours=10), START + timedelta(hours=16), "web", 0.0),
    ).lines()
)


def whole(lines: list[bytes]) -> list[dict[str, Any]]:
    run = OfflineRun(CONFIG, partitions=3)
    return [orjson.loads(o.to_json()) for o in run.run(lines)]


@cache
def whole_shop() -> list[dict[str, Any]]:
    return whole(LINES)


def in_parts(
    lines: list[bytes], cuts: list[int], path: Path, configs: list[CompiledConfig] | None = None
) -> list[dict[str, Any]]:
    """The outputs of the parts of `lines` between `cuts`, each run on the state the previous one
    saved (under `configs[k]` for part k when given)."""
    out: list[dict[str, Any]] = []
    bounds = [0, *sorted(set(cuts)), len(lines)]
    path.unlink(missing_ok=True)
    for k, (start, end) in enumerate(itertools.pairwise(bounds)):
        run = OfflineRun(configs[k] if configs else CONFIG, partitions=3)
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
    expected = whole_shop()
    assert {o["type"] for o in expected} >= {
        "micro",
        "macro",
        "dropoff",
        "session",
        "experiment",
        "deadletter",
        "alert",
    }
    assert ("cusum", "fired") in {(o["method"], o["state"]) for o in expected if o["type"] == "alert"}
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
        (header.replace(b"state 2 ", b"state 9 ") + b"\n" + body, "newer release"),
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


class _Touch:
    """Unpickled, it would create a file: what a crafted state file would make a pickle loader run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _state_file(path: Path, body: bytes, format_number: int) -> None:
    digest = hashlib.sha256(body).hexdigest().encode()
    path.write_bytes(b"conversions-state %d %s %d\n" % (format_number, digest, len(body)) + body)


@pytest.mark.parametrize("format_number", [1, FORMAT])
def test_a_state_file_naming_a_function_is_refused_without_running_it(
    tmp_path: Path, format_number: int
) -> None:
    created = tmp_path / "created"
    payload = {"store": {}, "alerts": _Touch(created), "definitions": []}
    state = tmp_path / "state"
    _state_file(state, zlib.compress(pickle.dumps(payload)), format_number)
    with pytest.raises(StateFileError) as refused:
        read(state)
    assert not created.exists()
    if format_number == 1:
        assert "run the history again" in str(refused.value)
    else:
        assert "unreadable state" in str(refused.value)
    config = tmp_path / "funnels.yaml"
    config.write_text(FUNNELS)
    result = CliRunner().invoke(
        main, ["process", "--config", str(config), "--input", "-", "--state", str(state)], input=b""
    )
    assert result.exit_code == 2
    assert not created.exists()


def test_a_state_file_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _state_file(state, zlib.compress(orjson.dumps({"store": {"u": "not base64!"}})), FORMAT)
    payload = read(state)
    assert payload is not None
    with pytest.raises(StateFileError, match="unreadable state"):
        restore(OfflineRun(CONFIG, partitions=3), payload)


def _cut_while_cusum_fires() -> tuple[int, dict[str, Any]]:
    """A line after which the cusum rule's incident is open, and its `fired` alert."""
    run = OfflineRun(CONFIG, partitions=3)
    fired = None
    for i, line in enumerate(LINES):
        for output in run.feed(line):
            if output.type == "alert" and output.__dict__["method"] == "cusum" and fired is None:
                fired = orjson.loads(output.to_json())
                return i + 20, fired
    raise AssertionError("the cusum rule never fired")


def test_an_incident_under_a_changed_funnel_version_is_resolved_at_the_cut_over(tmp_path: Path) -> None:
    cut, fired = _cut_while_cusum_fires()
    state = tmp_path / "state"
    run = OfflineRun(CONFIG, partitions=3)
    list(run.run(LINES[:cut]))
    write(state, run, [])
    changed = compile_config(parse_config(FUNNELS.replace("window: 7d", "window: 2d", 1)))
    later = OfflineRun(changed, partitions=3)
    payload = read(state)
    assert payload is not None
    resumed, _ = restore(later, payload)
    ended = [o for o in resumed.outputs if o.type == "alert"]
    assert [(a.state, a.reason, a.incident_id, a.method, a.funnel_version, a.by) for a in ended] == [  # type: ignore[attr-defined]
        (
            "resolved",
            "definition_changed",
            fired["incident_id"],
            "cusum",
            fired["funnel_version"],
            fired["by"],
        )
    ]
    assert fired["funnel_version"] != changed.funnels_by_name["checkout"].version
    # the new version's rule starts from nothing: the same drop pages again only on its own evidence
    after = [o for o in later.run(LINES[cut:]) if o.type == "alert"]
    assert all(a.incident_id != fired["incident_id"] for a in after)  # type: ignore[attr-defined]


def test_an_unchanged_rule_keeps_its_incident_across_an_unrelated_change(tmp_path: Path) -> None:
    cut, fired = _cut_while_cusum_fires()
    unrelated = compile_config(parse_config(FUNNELS.replace("window: 1h", "window: 2h", 1)))
    assert unrelated.funnels_by_name["checkout"].version == CONFIG.funnels_by_name["checkout"].version
    parts = in_parts(LINES, [cut], tmp_path / "state", [CONFIG, unrelated])
    alerts = [o for o in whole_shop() if o["type"] == "alert"]
    assert fired in alerts
    assert [o for o in parts if o["type"] == "alert"] == alerts  # not resolved, not paged twice


def test_a_saved_configuration_reads_back_as_the_same_configuration() -> None:
    # durations dump as milliseconds; read as a file's bare numbers (seconds) they were 1000 times
    # longer, so every funnel and alert looked changed after a restart
    assert FunnelConfig.from_dump(CONFIG.source.model_dump(mode="json")) == CONFIG.source
