"""Human durations ("30m", "7d", "1h30m", "none") as integer milliseconds."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w))+")


def parse_duration_ms(text: str | int) -> int:
    """Parse "90s", "15m", "1h30m", "7d" (or a bare number of seconds) to milliseconds."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return text * 1_000
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.fullmatch(compact):
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ms, s, m, h, d, w), e.g. 30m or 1h30m"
        )
    total = sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(compact))
    if total <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return total


def parse_optional_duration_ms(text: str | int | None) -> int | None:
    """Like parse_duration_ms, but "none" (or null) means unlimited and gives None."""
    if text is None or (isinstance(text, str) and text.strip().lower() in {"none", "unlimited"}):
        return None
    return parse_duration_ms(text)


def format_duration_ms(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
