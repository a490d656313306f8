"""How much history a configuration needs to answer from its first minute: its longest funnel
window (an attempt that started earlier can still convert), its longest alert baseline (the rate
a window is judged against) and its identity `ttl` (how far back a link may have been made).
`conversions deploy` compares these with what the clickstream topics retain (issue 26)."""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.config.durations import format_duration_ms
from streams.core.config.model import FunnelConfig


@dataclass(frozen=True, slots=True)
class Need:
    what: str
    """What needs it, e.g. `funnel checkout window`."""
    ms: int
    required: bool
    """A funnel window or an alert baseline shorter than the history leaves the first answers
    incomplete (refused without `--accept-short-history`); the identity ttl is an upper bound on
    links to look back for (a warning)."""

    def line(self, retained_ms: int) -> str:
        short = self.ms > retained_ms
        verdict = "SHORT" if short else "ok"
        return f"{verdict:>5}  {self.what}: {format_duration_ms(self.ms)}"


def history_needs(config: FunnelConfig) -> list[Need]:
    """The longest window, the longest baseline and the identity ttl (those the config has)."""
    needs = []
    windows = [(f.window, f.name) for f in config.funnels if f.window is not None]
    if windows:
        window, name = max(windows)
        needs.append(Need(f"funnel {name} window", window, True))
    if config.alerts:
        rule = max(config.alerts, key=lambda r: r.baseline + r.window)
        needs.append(Need(f"alert on {rule.funnel}/{rule.step} baseline", rule.baseline + rule.window, True))
    if config.identity.stitch:
        needs.append(Need("identity ttl", config.identity.ttl, False))
    return needs


def short_needs(needs: list[Need], retained_ms: int) -> tuple[list[Need], list[Need]]:
    """(refused, warned): the needs longer than the retained history."""
    short = [n for n in needs if n.ms > retained_ms]
    return [n for n in short if n.required], [n for n in short if not n.required]
