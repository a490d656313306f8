"""Deterministic ids: the same input always yields the same id, so consumers can deduplicate."""

from __future__ import annotations

from hashlib import blake2b


def output_id(*parts: object) -> str:
    return blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def short_hash(text: str) -> int:
    """A 63-bit fingerprint, for remembering recent event ids compactly."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
