"""What an offline run says at its end (on stderr, and as JSON with `process --summary FILE`):
its line, event and dead-letter counts and, per funnel version, the attempts its outputs opened,
completed and dropped, step by step.

The counts are of the run's own outputs, so one process and `--workers N` give the same (each
worker counts its people's; the parent adds them up). An attempt carried over to a new version
(docs/howto/changing-funnels.md) leaves the old version's books and enters the new one's. With
`--state`, an attempt opened in an earlier run and ended in this one counts only where it ends:
`open` is then this run's change in open attempts, not their number."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.core.records.outputs import OutputEvent

Key = tuple[str, str]
"""(funnel, funnel version)"""


@dataclass
class Books:
    """One funnel version's attempts: per step index, how many reached it and how many dropped
    off there."""

    steps: dict[int, str] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    entered: int = 0
    completed: int = 0
    carried_in: int = 0
    carried_out: int = 0

    def add(self, other: Books) -> None:
        self.steps.update(other.steps)
        for mine, theirs in ((self.reached, other.reached), (self.dropped, other.dropped)):
            for index, count in theirs.items():
                mine[index] = mine.get(index, 0) + count
        self.entered += other.entered
        self.completed += other.completed
        self.carried_in += other.carried_in
        self.carried_out += other.carried_out

    @property
    def open(self) -> int:
        return self.entered + self.carried_in - self.completed - sum(self.dropped.values()) - self.carried_out


@dataclass
class FunnelCounts:
    books: dict[Key, Books] = field(default_factory=dict)
    _by_funnel: dict[str, dict[str | None, Books]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )
    """`books` by funnel, then by version as outputs carry it (None and "" apart, the same
    `Books`): each output's books in two string-keyed lookups, no key tuple made and hashed. An
    index of `books`, whose entries are only ever added, never replaced."""

    def _books(self, funnel: str, version: str | None) -> Books:
        versions = self._by_funnel.get(funnel)
        if versions is None:
            versions = self._by_funnel[funnel] = {}
        books = versions.get(version)
        if books is None:
            key = (funnel, version or "")
            books = self.books.get(key)
            if books is None:
                books = self.books[key] = Books()
            versions[version] = books
        return books

    def add_outputs(self, outputs: Iterable[OutputEvent]) -> None:
        for output in outputs:
            fields = output.__dict__  # one attribute lookup, then the fields by dict lookups
            kind: str = fields["type"]
            if kind not in ("micro", "dropoff", "carried"):
                continue
            funnel = fields.get("funnel")
            if funnel is None:
                continue  # a secondary microconversion
            index = fields["step_index"]
            books = self._books(funnel, fields.get("funnel_version"))
            books.steps.setdefault(index, fields["step"])
            if kind == "micro":
                books.reached[index] = books.reached.get(index, 0) + 1
                if index == 0:
                    books.entered += 1
                if fields["final"]:
                    books.completed += 1
            elif kind == "dropoff":
                books.dropped[index] = books.dropped.get(index, 0) + 1
            else:
                books.carried_in += 1
                for k in fields["reached"]:
                    books.reached[k] = books.reached.get(k, 0) + 1
                previous = self._books(funnel, fields.get("previous_version"))
                previous.carried_out += 1

    def add(self, other: FunnelCounts) -> None:
        for key, theirs in other.books.items():
            mine = self.books.get(key)
            if mine is None:
                mine = self.books[key] = Books()
            mine.add(theirs)

    def to_json(self) -> list[dict[str, Any]]:
        rows = []
        for (funnel, version), books in sorted(self.books.items()):
            indexes = sorted({*books.steps, *books.reached, *books.dropped})
            rows.append(
                {
                    "funnel": funnel,
                    "funnel_version": version or None,
                    "entered": books.entered,
                    "completed": books.completed,
                    "dropped": sum(books.dropped.values()),
                    "carried_in": books.carried_in,
                    "carried_out": books.carried_out,
                    "open": books.open,
                    "steps": [
                        {
                            "step": books.steps.get(k, f"#{k}"),
                            "step_index": k,
                            "reached": books.reached.get(k, 0),
                            "dropped": books.dropped.get(k, 0),
                        }
                        for k in indexes
                    ],
                }
            )
        return rows

    def lines(self) -> list[str]:
        """One line per funnel version, for stderr."""
        out = []
        for row in self.to_json():
            steps = ", ".join(
                f"{s['step']} {s['reached']}" + (f" ({s['dropped']} dropped)" if s["dropped"] else "")
                for s in row["steps"]
            )
            carried = (
                f", {row['carried_in']} carried in, {row['carried_out']} carried out"
                if row["carried_in"] or row["carried_out"]
                else ""
            )
            version = row["funnel_version"] or "no version"
            out.append(
                f"funnel {row['funnel']} ({version}): {row['entered']} entered, {row['completed']} "
                f"completed, {row['dropped']} dropped{carried}, {row['open']} open; {steps}"
            )
        return out
