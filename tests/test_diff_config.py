"""`conversions diff-config OLD NEW` (issue 25, item 4): per funnel, goal, micro, alert and
experiment, one line saying unchanged, compatible or incompatible (or added, removed) and what
happens to in-flight attempts, counters and baselines; exit 0 when nothing is incompatible, 1
otherwise, 2 on a bad file with its file, line and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from streams.cli import main
from streams.settings import DEFAULT_FUNNELS

OLD = DEFAULT_FUNNELS.read_text()
LINE = re.compile(
    r"^(funnel|goal|micro|alert|experiment) (\S+)(?: \[\w+\])?: "
    r"(unchanged|compatible|incompatible|added|removed) \((\w+|-) -> (\w+|-)\): .+$"
)


def edited(*replacements: tuple[str, str]) -> str:
    text = OLD
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    return text


def diff(tmp_path: Path, new: str, old: str = OLD) -> tuple[Result, dict[str, tuple[str, str, str]]]:
    """The command's result and, per `kind name`, its status, versions and detail."""
    (tmp_path / "old.yaml").write_text(old)
    (tmp_path / "new.yaml").write_text(new)
    result = CliRunner().invoke(main, ["diff-config", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")])
    lines: dict[str, tuple[str, str, str]] = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        assert match, line
        kind, name, status, before, after = match.groups()
        lines[f"{kind} {name}"] = (status, f"{before} -> {after}", line.split("): ", 1)[1])
    return result, lines


EVERYTHING = {
    "funnel checkout",
    "funnel onboarding",
    "goal purchase",
    "goal signup",
    "micro newsletter_signup",
    "micro share",
    "micro watched_tutorial",
    "alert checkout/payment",
    "experiment one_page_checkout",
}


def statuses(lines: dict[str, tuple[str, str, str]]) -> dict[str, str]:
    return {name: status for name, (status, _, _) in lines.items()}


def test_the_same_configuration_is_unchanged_everywhere_and_exits_0(tmp_path: Path) -> None:
    result, lines = diff(tmp_path, OLD)
    assert result.exit_code == 0
    assert set(lines) == EVERYTHING
    assert set(statuses(lines).values()) == {"unchanged"}
    for _, versions, _ in lines.values():
        before, after = versions.split(" -> ")
        assert before == after and len(before) == 10
    assert result.stderr == f"0 incompatible of {len(EVERYTHING)}\n"


def test_a_secondary_micro_edited_is_compatible_and_exits_0(tmp_path: Path) -> None:
    result, lines = diff(
        tmp_path, edited(('"properties.category": tutorial', '"properties.category": howto'))
    )
    assert result.exit_code == 0
    assert {k: v for k, v in statuses(lines).items() if v != "unchanged"} == {
        "micro watched_tutorial": "compatible"
    }
    assert "counted under the new match from now on" in lines["micro watched_tutorial"][2]


def test_a_step_appended_to_a_funnel_with_no_alert_or_experiment_is_compatible(tmp_path: Path) -> None:
    new = edited(
        (
            "      - {name: signup,       match: {goal: signup}}\n",
            "      - {name: signup,       match: {goal: signup}}\n"
            "      - {name: invite, match: {event: invite}}\n",
        )
    )
    result, lines = diff(tmp_path, new)
    assert result.exit_code == 0
    assert {k: v for k, v in statuses(lines).items() if v != "unchanged"} == {
        "funnel onboarding": "compatible"
    }
    _, versions, detail = lines["funnel onboarding"]
    assert detail.startswith("steps appended: in-flight attempts continue (carried over)")
    assert f"counters start under version {versions.split(' -> ')[1]}" in detail


def test_a_step_renamed_continues_attempts_but_restarts_the_funnels_alert_baseline_and_experiment(
    tmp_path: Path,
) -> None:
    result, lines = diff(tmp_path, edited(("{name: add_to_cart,  match", "{name: basket, match")))
    assert result.exit_code == 1
    assert {k: v for k, v in statuses(lines).items() if v != "unchanged"} == {
        "funnel checkout": "compatible",
        "alert checkout/payment": "incompatible",
        "experiment one_page_checkout": "incompatible",
    }
    assert lines["funnel checkout"][2].startswith("steps renamed: in-flight attempts continue")
    assert "its identity towards receivers stays the same" in lines["alert checkout/payment"][2]
    assert "never mixed" in lines["experiment one_page_checkout"][2]
    # the alert's version follows its funnel's, its identity (in brackets) does not
    old_alert = next(line for line in diff(tmp_path, OLD)[0].stdout.splitlines() if line.startswith("alert"))
    new_alert = next(line for line in result.stdout.splitlines() if line.startswith("alert"))
    assert old_alert.split(":")[0] == new_alert.split(":")[0]
    assert result.stderr == f"2 incompatible of {len(EVERYTHING)}\n"


def test_steps_swapped_say_which_attempts_continue(tmp_path: Path) -> None:
    new = edited(
        ("      - {name: shipping,     match: {event: shipping_details}}\n", ""),
        (
            "      - {name: payment,      match: {event: payment_details}}\n",
            "      - {name: payment,      match: {event: payment_details}}\n"
            "      - {name: shipping,     match: {event: shipping_details}}\n",
        ),
    )
    result, lines = diff(tmp_path, new)
    assert result.exit_code == 1
    assert lines["funnel checkout"][0] == "incompatible"
    assert "attempts that reached at most step 1 (product_view) continue" in lines["funnel checkout"][2]


def test_a_goal_edited_changes_the_funnels_whose_steps_match_it(tmp_path: Path) -> None:
    result, lines = diff(tmp_path, edited(("match: {event: signup}", "match: {event: sign_up}")))
    assert result.exit_code == 1
    assert {k: v for k, v in statuses(lines).items() if v != "unchanged"} == {
        "goal signup": "compatible",
        "funnel onboarding": "incompatible",  # its last step is `goal: signup`
    }
    assert "every in-flight attempt ends with definition_changed" in lines["funnel onboarding"][2]


def test_a_funnel_window_changed_ends_attempts_and_its_alert_and_experiment_restart(tmp_path: Path) -> None:
    result, lines = diff(tmp_path, edited(("    window: 7d\n", "    window: 2d\n")))
    assert result.exit_code == 1
    assert {k: v for k, v in statuses(lines).items() if v != "unchanged"} == {
        "funnel checkout": "incompatible",
        "alert checkout/payment": "incompatible",
        "experiment one_page_checkout": "incompatible",
    }


def test_an_alert_rule_edited_is_another_rule(tmp_path: Path) -> None:
    result, lines = diff(tmp_path, edited(("    min_entered: 50\n", "    min_entered: 40\n")))
    assert result.exit_code == 1
    changed = {k: v for k, v in statuses(lines).items() if v != "unchanged"}
    assert changed == {"alert checkout/payment": "removed"} or sorted(changed.values()) == [
        "added",
        "removed",
    ]
    assert result.stdout.count("alert checkout/payment") == 2
    assert "no verdict until it has its own baseline" in result.stdout
    assert "no longer judged" in result.stdout


def test_an_experiment_edited_added_and_removed(tmp_path: Path) -> None:
    result, lines = diff(tmp_path, edited(("    control: control\n", "    control: baseline\n")))
    assert result.exit_code == 1
    assert statuses(lines)["experiment one_page_checkout"] == "incompatible"
    assert "evaluated again from zero" in lines["experiment one_page_checkout"][2]

    without = OLD.split("experiments:")[0]
    result, lines = diff(tmp_path, without)
    assert result.exit_code == 1
    assert lines["experiment one_page_checkout"][:2] == (
        "removed",
        f"{lines['experiment one_page_checkout'][1].split(' -> ')[0]} -> -",
    )
    result, lines = diff(tmp_path, OLD, old=without)
    assert result.exit_code == 0  # added: nothing in flight ends
    assert statuses(lines)["experiment one_page_checkout"] == "added"
    assert "evaluated from its first attempt" in lines["experiment one_page_checkout"][2]


def test_a_funnel_removed_or_added(tmp_path: Path) -> None:
    onboarding = OLD.index("  - name: onboarding")
    without = OLD[:onboarding] + OLD[OLD.index("micro:") :]
    result, lines = diff(tmp_path, without)
    assert result.exit_code == 1
    assert statuses(lines)["funnel onboarding"] == "removed"
    assert "every in-flight attempt ends with definition_changed" in lines["funnel onboarding"][2]
    result, lines = diff(tmp_path, OLD, old=without)
    assert result.exit_code == 0
    assert statuses(lines)["funnel onboarding"] == "added"


@pytest.mark.parametrize("which", ["old", "new"])
@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "version: 1\nfunnels:\n  - name: x\n    steps: 3\n",
            4,
            "funnels[0].steps: Input should be a valid list",
        ),
        ("version: 1\nfunnels: [\n", 3, "invalid YAML"),
        (
            OLD.replace("    step: payment\n", "    step: paymnt\n"),
            40,
            "alerts[0].step: funnel checkout has no step 'paymnt'",
        ),
    ],
)
def test_a_bad_file_exits_2_with_its_file_line_and_reason(
    tmp_path: Path, which: str, text: str, line: int | None, reason: str
) -> None:
    files = {"old": OLD, "new": OLD, which: text}
    result, _ = diff(tmp_path, files["new"], old=files["old"])
    assert result.exit_code == 2
    assert result.stdout == ""
    bad = str(tmp_path / f"{which}.yaml")
    assert result.stderr.startswith(f"{bad}:{line}: " if line is not None else f"{bad}:")
    assert reason in result.stderr


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(OLD)
    result = CliRunner().invoke(
        main, ["diff-config", str(tmp_path / "old.yaml"), str(tmp_path / "nope.yaml")]
    )
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'nope.yaml'}: no such file\n"
