"""The docs site builds strictly: a broken link, a missing anchor or a page outside the nav fails
`make test` (mkdocs.yml turns each into a warning, and --strict makes a warning fatal)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.docs.conftest import ROOT


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "concepts" / "funnel-semantics" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """--strict is not idle: the same configuration refuses a page with a dead link."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](nowhere.md) and [anchor](#no-such-anchor)\n")
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:")[0]
    (tmp_path / "mkdocs.yml").write_text(config + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
        check=False,
    )
    assert result.returncode != 0
    assert "nowhere.md" in result.stderr
    assert "no-such-anchor" in result.stderr


def test_readme_is_short_and_links_into_the_site() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme
    for link in ("docs/tutorials/first-funnel.md", "docs/concepts/funnel-semantics.md", "docs/reference/"):
        assert link in readme, link
