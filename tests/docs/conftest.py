"""The docs site's checks: where the site is, and its Markdown pages' fenced blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(
    r"(?:<!-- run: (?P<run>[^>]*) -->\n)?^(?P<indent> *)```(?P<lang>[a-z]*)\n(?P<body>.*?)\n(?P=indent)```",
    re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    body: str
    run: str | None

    def __str__(self) -> str:
        return f"{self.page}: {self.body.splitlines()[0][:60] if self.body else ''}"


def blocks(lang: str | None = None) -> list[Block]:
    """Every fenced block of the docs (indented ones too), in page order."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for match in FENCE.finditer(page.read_text()):
            if lang is None or match["lang"] == lang:
                indent = len(match["indent"])
                body = "\n".join(line[indent:] for line in match["body"].split("\n"))
                found.append(Block(str(page.relative_to(DOCS)), match["lang"], body, match["run"]))
    return found
