"""The examples of the docs are checked against the code: every YAML block that looks like a
funnel configuration loads with the configuration loader; every JSON block that is an event
validates as one (and every other JSON block parses); every shell block a tutorial marks with
`<!-- run: exit N, expect "..." -->` runs as written, from the repository's root, with that exit
code and that line in its output. The live tutorial's commands need long-running processes
(broker, worker): for those, each `conversions` command and option they use must exist, and each
`export`ed setting must be accepted by the settings model (the integration tests run the same
path for real)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.input.event import ClickEvent
from streams.settings import load_settings
from tests.docs.conftest import ROOT, Block, blocks

CONFIG_KEYS = {"funnels", "goals", "micro", "experiments", "alerts"}


def _configs() -> list[Block]:
    found = []
    for block in blocks("yaml"):
        data = yaml.safe_load(block.body)
        if isinstance(data, dict) and data.keys() & CONFIG_KEYS and "groups" not in data:
            found.append(block)
    return found


def test_the_docs_have_examples_of_each_kind() -> None:
    assert len(_configs()) >= 3
    assert [b for b in blocks() if b.run]


@pytest.mark.parametrize("block", _configs(), ids=str)
def test_each_funnel_configuration_loads(block: Block) -> None:
    data = yaml.safe_load(block.body)
    if "version" not in data:  # a fragment of a file: the rest of a configuration around it
        data = {"version": 1, **data}
        if "funnels" not in data and "experiments" in data:
            data["funnels"] = [
                {"name": "checkout", "steps": [{"name": s, "match": {"event": s}} for s in ("a", "purchase")]}
            ]
    parse_config(yaml.safe_dump(data), block.page)


@pytest.mark.parametrize("block", blocks("json"), ids=str)
def test_each_json_example_parses_and_events_validate(block: Block) -> None:
    for line in block.body.splitlines() if block.body.lstrip().startswith('{"event_id"') else [block.body]:
        value = json.loads(line)
        if isinstance(value, dict) and "event_id" in value:
            ClickEvent.model_validate(value)


RUN = re.compile(r'exit (?P<code>\d+)(?:, expect "(?P<expect>[^"]*)")?')


@pytest.mark.parametrize("block", [b for b in blocks() if b.run], ids=str)
def test_each_marked_shell_block_runs_as_written(block: Block) -> None:
    spec = RUN.fullmatch(block.run or "")
    assert spec, f"bad run marker: {block.run}"
    (ROOT / "var").mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVERSIONS_")}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.body],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )
    assert result.returncode == int(spec["code"]), result.stderr[-2000:]
    if spec["expect"]:
        assert spec["expect"] in result.stdout + result.stderr


def _commands_of_the_live_tutorials() -> list[list[str]]:
    found = []
    for block in blocks("sh"):
        if not block.page.startswith("tutorials/") or block.run:
            continue
        for line in block.body.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("conversions"):
                found.append(words[1:])
    return found


def test_the_live_tutorials_commands_exist() -> None:
    commands = _commands_of_the_live_tutorials()
    assert len(commands) >= 4
    for words in commands:
        command = main.commands[words[0]]
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        options |= {opt for param in command.params for opt in getattr(param, "secondary_opts", [])}
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, (words, word)


def test_the_tutorials_settings_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    exported = {}
    for block in blocks("sh"):
        if block.page.startswith("tutorials/"):
            for line in block.body.splitlines():
                if line.startswith("export "):
                    for pair in shlex.split(line)[1:]:
                        name, _, value = pair.partition("=")
                        if name.startswith("CONVERSIONS_"):
                            exported[name] = value
    assert "CONVERSIONS_INPUT_FORMAT" in exported
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    load_settings()
