"""The layout holds: import-linter's contracts are kept, and the markers select what they say.

`pytest -m integration` must select exactly the tests that need the real broker and Redis (those
using the `infra` fixture, plus the few that start their own and say so), `-m browser` exactly
the tests marked so (the dashboard's among them), `-m wheel` the wheel test, and `make unit`'s
selection nothing that starts anything. Each selection is a real `pytest --collect-only` run
in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTEST_COLLECT = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
PYTEST_COLLECT += ["-p", "tests.collection_report"]
UNIT = "not integration and not browser and not wheel"


def lint_imports() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_import_linter_contracts_are_kept() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "5 kept" in done.stdout


def import_cycles(*packages: str) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others (Tarjan's
    strongly connected components over grimp's graph; imports for annotations only left out,
    as import-linter leaves them). A package's `__init__` importing its own modules is no
    circle, and neither is a module importing its own package's `__init__`."""
    import grimp

    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True)

    def arrows(module: str) -> list[str]:
        return [
            other
            for other in graph.find_modules_directly_imported_by(module)
            if not other.startswith(module + ".") and not module.startswith(other + ".")
        ]

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in arrows(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others() -> None:
    assert import_cycles("streams", "bench") == []


def test_the_cycle_check_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle import b\n")
    (package / "b.py").write_text("from circle import c\n")
    (package / "c.py").write_text("import circle.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circle") == [["circle.a", "circle.b", "circle.c"]]


def collect(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    report = tmp_path / f"collected-{len(list(tmp_path.iterdir()))}.json"
    subprocess.run(
        [*PYTEST_COLLECT, *args, "tests"],
        cwd=ROOT,
        env={**os.environ, "COLLECTION_REPORT": str(report)},
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert report.exists(), f"pytest {' '.join(args)} collected nothing"
    return {item["id"]: item for item in orjson.loads(report.read_bytes())}


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return collect(tmp_path_factory.mktemp("all"))


def test_every_test_using_the_real_broker_and_redis_is_marked_integration(
    everything: dict[str, dict[str, Any]],
) -> None:
    unmarked = [
        i
        for i, item in everything.items()
        if "infra" in item["fixtures"] and "integration" not in item["markers"]
    ]
    assert not unmarked


def test_minus_m_integration_selects_exactly_the_integration_tests(
    everything: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    selected = collect(tmp_path, "-m", "integration")
    marked = {i for i, item in everything.items() if "integration" in item["markers"]}
    uses_infra = {i for i, item in everything.items() if "infra" in item["fixtures"]}
    assert set(selected) == marked and uses_infra <= marked
    files = {i.split("::")[0] for i in selected}
    assert {
        "tests/pipeline/test_journeys_kafka.py",
        "tests/pipeline/test_scale_out.py",
        "tests/counters/test_counters_worker.py",
        "tests/alerts/test_alerts_kafka.py",
        "tests/worker/test_outages.py",
        "tests/tools/test_infra.py",
    } <= files
    assert not any(i.startswith("tests/core/") for i in selected), "the pure core needs nothing running"


def test_the_unit_selection_starts_nothing_and_the_others_are_what_they_say(
    everything: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    unit = collect(tmp_path, "-m", UNIT)  # `make unit`
    assert unit and not any("infra" in item["fixtures"] for item in unit.values())
    assert not any("[redis]" in i for i in unit)
    browser = collect(tmp_path, "-m", "browser")
    assert set(browser) == {i for i, item in everything.items() if "browser" in item["markers"]}
    assert "tests/web/test_dashboard.py" in {i.split("::")[0] for i in browser}
    wheel = collect(tmp_path, "-m", "wheel")
    assert wheel and {i.split("::")[0] for i in wheel} == {"tests/test_wheel.py", "tests/test_compiled.py"}
    integration = {i for i, item in everything.items() if "integration" in item["markers"]}
    assert set(unit) | set(browser) | set(wheel) | integration == set(everything)
