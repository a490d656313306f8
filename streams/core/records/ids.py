"""Deterministic ids: the same input always yields the same id, so consumers can deduplicate."""

from __future__ import annotations

from hashlib import blake2b
from struct import Struct
from typing import Final

_blake2b: Final = blake2b  # compiled: a C static, not a lookup in the module's dict per call
_unpack_u64: Final = Struct(">Q").unpack


def output_id(*parts: object) -> str:
    # str() only for what is not a string already (most parts are): a tenth less than map(str);
    # type() is a pointer read where `.__class__` is an attribute lookup (and a str subclass, an
    # enum member, still goes through str() as before)
    text = "\x1f".join([part if type(part) is str else str(part) for part in parts])
    return _blake2b(text.encode(), digest_size=16).hexdigest()


def short_hash(text: str) -> int:
    """A 63-bit fingerprint, for remembering recent event ids compactly."""
    value: int = _unpack_u64(_blake2b(text.encode(), digest_size=8).digest())[0]
    return value >> 1
