"""Deterministic ids: the same input always yields the same id, so consumers can deduplicate."""

from __future__ import annotations

from hashlib import blake2b


def output_id(*parts: object) -> str:
    # str() only for what is not a string already (most parts are): a tenth less than map(str)
    text = "\x1f".join([part if part.__class__ is str else str(part) for part in parts])
    return blake2b(text.encode(), digest_size=16).hexdigest()


def short_hash(text: str) -> int:
    """A 63-bit fingerprint, for remembering recent event ids compactly."""
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big") >> 1
