"""The rough edges a new user met in the CLI (issue 31, item 4): help texts, check-config's
count, process's configuration, a missing input file, stdin without a hint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli import main

FILES = Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "files"


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("worker", "--partitions"),
        ("worker", "--app-id"),
        ("worker", "--web-port"),
        ("counters", "--partitions"),
        ("counters", "--app-id"),
        ("simulate", "--users"),
        ("simulate", "--seed"),
        ("simulate", "--days"),
        ("process", "--partitions"),
    ],
)
def test_every_option_has_a_help_text(command: str, option: str) -> None:
    params = {opt: p for p in main.commands[command].params for opt in getattr(p, "opts", [])}
    assert (params[option].help or "").strip(), f"{command} {option}"  # type: ignore[attr-defined]


def test_report_help_says_it_needs_redis() -> None:
    result = CliRunner().invoke(main, ["report", "--help"])
    assert "REDIS_URL" in " ".join(result.output.split())


def test_check_config_counts_experiments(tmp_path: Path) -> None:
    config = (FILES / "shop.yaml").read_text() + (
        "experiments:\n  - {name: e, funnel: checkout, variant: properties.variant, control: a}\n"
    )
    path = tmp_path / "f.yaml"
    path.write_text(config)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0
    assert "1 funnels, 0 micro, 0 alerts, 1 experiments" in result.output


def test_process_says_what_input_is_missing_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ndjson"
    result = CliRunner().invoke(main, ["process", "--input", str(missing)])
    assert result.exit_code == 2
    assert f"--input {missing}: no such file" in result.output
    assert "Traceback" not in result.output and result.exception is not None  # SystemExit, nothing else
    assert isinstance(result.exception, SystemExit)


def test_process_reads_conversions_funnels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, process runs the configuration CONVERSIONS_FUNNELS names, as worker and
    counters do (the tutorial's funnel has no `shipping` step; the bundled example has)."""
    monkeypatch.setenv("CONVERSIONS_FUNNELS", str(FILES / "shop.yaml"))
    result = CliRunner().invoke(main, ["process", "--input", str(FILES / "journey.ndjson"), "--flush"])
    assert result.exit_code == 0, result.output
    assert '"funnel":"checkout"' in result.output
    assert '"step":"add_to_cart","step_index":1' in result.output
    monkeypatch.setenv("CONVERSIONS_FUNNELS", str(FILES / "nowhere.yaml"))
    refused = CliRunner().invoke(main, ["process", "--input", str(FILES / "journey.ndjson")])
    assert refused.exit_code == 2
    assert "nowhere.yaml" in refused.output


def test_process_from_a_terminal_says_it_reads_stdin() -> None:
    """stdin a real terminal (a pseudo-terminal): the hint comes first, then Ctrl-D ends input."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVERSIONS_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "process", "--no-progress"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    try:
        assert child.stderr is not None
        hint = child.stderr.readline().decode()
        assert "reading events from stdin" in hint
        os.write(master, b"\x04")  # Ctrl-D: end of input
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0
        assert b"0 lines, 0 events, 0 rejected" in err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)


def test_process_names_the_unknown_fields_it_ignored(tmp_path: Path) -> None:
    from tests.helpers import event

    path = tmp_path / "typo.ndjson"
    lines = [event("page_view", "10:00"), event("add_to_cart", "10:01", propertys={"value": 1})]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    for workers in ("1", "2"):
        result = CliRunner().invoke(main, ["process", "--input", str(path), "--workers", workers])
        assert result.exit_code == 0, result.output
        assert "fields the contract does not have, ignored: 'propertys' (1)" in result.stderr


def test_a_worker_whose_web_port_is_taken_says_so_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found following the live tutorial with a worker left running: the second one started, failed
    to bind inside Faust and stopped 30 s later with an OSError in its log."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        result = CliRunner().invoke(main, ["worker", "--web-port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{port} is taken" in result.output and "--web-port" in result.output
