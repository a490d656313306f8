"""Glob matching for URL paths, in linear-ish time with no regular expressions.

`*` matches any run of characters, `?` exactly one. Configuration never reaches the `re`
module, so no pattern can cause catastrophic backtracking: the greedy two-pointer algorithm
below is O(len(text) * len(pattern)) in the worst case.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PATTERN_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Glob:
    pattern: str

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("empty url pattern")
        if len(self.pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"url pattern longer than {MAX_PATTERN_LENGTH} characters")

    def matches(self, text: str) -> bool:
        pattern = self.pattern
        t = p = 0
        star_p = -1
        star_t = 0
        while t < len(text):
            if p < len(pattern) and pattern[p] in ("?", text[t]) and pattern[p] != "*":
                t += 1
                p += 1
            elif p < len(pattern) and pattern[p] == "*":
                star_p = p
                star_t = t
                p += 1
            elif star_p >= 0:
                p = star_p + 1
                star_t += 1
                t = star_t
            else:
                return False
        while p < len(pattern) and pattern[p] == "*":
            p += 1
        return p == len(pattern)
