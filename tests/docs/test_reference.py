"""The generated reference pages equal what the code generates now (they fail when the docs lag
the code, as Flink's configuration tables do), every setting has a description, and the Grafana
dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re

from streams.cli import main
from streams.metrics import Metrics
from streams.tools import docs_reference
from tests.docs.conftest import DOCS


def test_reference_pages_are_up_to_date() -> None:
    assert docs_reference.drift(main) == [], "run `conversions docs-reference` and commit docs/reference/"


def test_every_setting_has_a_description() -> None:
    assert docs_reference.undocumented_settings() == []


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    page = (DOCS / "reference" / "cli.md").read_text()
    for name, command in main.commands.items():
        assert f"## `conversions {name}`" in page
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in page, (name, opt)


def test_the_grafana_dashboard_queries_metrics_that_exist() -> None:
    dashboard = json.loads((DOCS / "operations" / "grafana-dashboard.json").read_text())
    known = {name for name, *_ in docs_reference._families(Metrics().registry)}
    known |= {"conversions_collector_requests_total", "conversions_collector_messages_total"}
    known |= {f"{n}_bucket" for n in known}
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"conversions_[a-z_]+", target["expr"])
    }
    assert used and used <= known, used - known
