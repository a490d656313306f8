"""Funnel configuration: the example loads; every broken file is refused with line and reason."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from streams.cli import main
from streams.core.config.durations import format_duration_ms, parse_duration_ms, parse_optional_duration_ms
from streams.core.config.glob import Glob
from streams.core.config.loader import ConfigError, load_config, parse_config
from streams.settings import DEFAULT_FUNNELS

EXAMPLE = DEFAULT_FUNNELS.read_text()


def test_the_example_loads_with_its_defaults() -> None:
    config = load_config(DEFAULT_FUNNELS)
    checkout = config.funnels[0]
    assert checkout.window == 7 * 86_400_000
    assert checkout.steps[1].within == 3_600_000
    assert checkout.steps[-1].match.goal == "purchase"
    assert config.micro[2].match.fields == {"properties.category": "tutorial"}
    assert config.alerts[0].by == ["context.platform"]


def test_minimal_config_takes_defaults() -> None:
    config = parse_config(
        "version: 1\nfunnels:\n  - name: f\n    steps:\n"
        "      - {name: a, match: {event: a}}\n      - {name: b, match: {event: b}}\n"
    )
    funnel = config.funnels[0]
    assert (funnel.scope, funnel.order, funnel.window) == ("user", "sequential", 7 * 86_400_000)
    assert config.session_timeout == 30 * 60_000


# (replace this, with that, expected line, words in the reason)
BROKEN = [
    ("within: 1h", "within: 1x", 19, "invalid duration"),
    ("{goal: purchase}}", "{goal: purchse}}", 22, "unknown goal 'purchse'"),
    ("order: sequential", "order: sideways", 14, "'sequential', 'strict' or 'any'"),
    ("scope: user", "scoep: user", 13, "unknown key 'scoep'"),
    ("step: payment", "step: product_view", 40, "first step"),
    ("step: payment", "step: paymnt", 40, "no step 'paymnt'"),
    ("funnel: checkout\n", "funnel: chekout\n", 39, "unknown funnel"),
    ("version: 1", "version: 2", 2, "Input should be 1"),
    ("{event: refund}", "{evnt: refund}", 24, "unknown match key 'evnt'"),
    ("relative_drop: 0.3", "relative_drop: 3", 44, "less than 1"),
    ("baseline: 24h", "baseline: 5m", 39, "baseline must be longer"),
    ("by: [context.platform]", "by: [context.locale]", 46, "among the funnel's breakdowns"),
    ("breakdowns: [context.platform]", "breakdowns: [platform]", 33, "unknown field path"),
    ("value: properties.value", "value: value", 8, "unknown field path"),
    ("  - name: signup\n", "  - name: purchase\n", 9, "duplicate name 'purchase'"),
    ("{event: video_play,", "{event: [],", 37, "must not be empty"),
    ('url: "/pricing*"}', 'url: ""}', 31, "empty url pattern"),
    ("    relative_drop: 0.3\n    drop_below: 0.2\n", "", 39, "relative_drop, drop_below or both"),
    ("session_timeout: 30m", "session_timeout: -5m", 3, "invalid duration"),
    (
        "- {name: add_to_cart,  match: {event: add_to_cart}, within: 1h}",
        "- {name: add_to_cart,  match: {}, within: 1h}",
        19,
        "at least one condition",
    ),
    ("goals:", "goals: [\n", 7, "invalid YAML"),
]


@pytest.mark.parametrize(("old", "new", "line", "reason"), BROKEN)
def test_broken_configs_are_refused_with_line_and_reason(old: str, new: str, line: int, reason: str) -> None:
    assert old in EXAMPLE
    with pytest.raises(ConfigError) as caught:
        parse_config(EXAMPLE.replace(old, new, 1), "funnels.yaml")
    error = caught.value
    assert error.file == "funnels.yaml"
    assert reason in error.reason, str(error)
    assert error.line == line, str(error)
    assert str(error).startswith(f"funnels.yaml:{line}: ")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("a: &x [*x]\n", "recursive alias"),
        ("version: 1\nname: !foo bar\n", "invalid YAML: could not determine a constructor"),
        ("version: 1\nx: {<<: {a: 1}}\n", "invalid YAML: could not determine a constructor"),
        ("version: 1\nfunnels: [{name: f, steps: [{name: a, match: {event: a}}]}]\n", "at least 2"),
        (
            "version: 1\nfunnels: [{name: f, steps: [{name: a, match: {event: a}, within: 1h}, "
            "{name: b, match: {event: b}}]}]\n",
            "first step cannot have",
        ),
        ("version: 1\ngoals: [{name: g, match: {goal: g}}]\n", "cannot match on another goal"),
        ("version: 1\nmicro: [{name: m, match: {properties.x: {nested: 1}}}]\n", "scalar"),
        ("version: 1\nmicro: [{name: 'bad name!', match: {event: x}}]\n", "should match pattern"),
        ("version: 1\ngoals: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
        ("version: 1\ngoals: " + "[" * 300_000 + "]" * 300_000 + "\n", "nested deeper than 32 levels"),
        (
            "version: 1\n"
            + "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
            + "".join(
                f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                for p, c in zip("abcdefg", "bcdefgh", strict=True)
            ),
            "alias bomb",
        ),
    ],
)
def test_structurally_bad_files(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    assert reason in str(caught.value)
    assert caught.value.line is not None or reason == "empty"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_check_config_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["check-config", str(DEFAULT_FUNNELS)])
    assert ok.exit_code == 0 and "2 funnels" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("within: 1h", "within: soon"))
    refused = runner.invoke(main, ["check-config", str(bad)])
    assert refused.exit_code == 2
    assert f"{bad}:19: funnels[0].steps[1].within: invalid duration 'soon'" in refused.output


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30m", 1_800_000),
        ("1h30m", 5_400_000),
        ("7d", 604_800_000),
        ("250ms", 250),
        ("2w", 1_209_600_000),
        (90, 90_000),
        (" 15 s ", 15_000),
    ],
)
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "m", "5", "1.5h", "-1m", "0s", "1y", "1h 30", True])
def test_bad_durations(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_optional_and_formatted_durations() -> None:
    assert parse_optional_duration_ms("none") is None
    assert parse_optional_duration_ms(None) is None
    assert parse_optional_duration_ms("1d") == 86_400_000
    assert format_duration_ms(900_000) == "15m" and format_duration_ms(1_500) == "1500ms"


glob_text = st.text(alphabet="ab/*?", max_size=12)


@given(pattern=glob_text.filter(bool), text=st.text(alphabet="ab/", max_size=14))
def test_glob_agrees_with_fnmatch(pattern: str, text: str) -> None:
    # fnmatch's "[" classes are not part of our glob; the alphabet leaves them out
    assert Glob(pattern).matches(text) == fnmatch.fnmatchcase(text, pattern)


def test_glob_has_no_catastrophic_case() -> None:
    pattern = "*a" * 200 + "b"
    text = "a" * 5_000
    assert Glob(pattern).matches(text) is False  # a backtracking regex would never return
    assert Glob("/p/*").matches("/p/42") and not Glob("/p/*").matches("/pricing")
