"""Output ids are part of the contract (consumers deduplicate by them): `output_id` must give,
for any parts, the digest of the parts' `str()` joined by the unit separator, as it always has."""

from __future__ import annotations

from enum import StrEnum
from hashlib import blake2b

from streams.core.records.ids import output_id


class Kind(StrEnum):
    MICRO = "micro"


def test_output_id_is_the_blake2b_of_the_parts_as_text() -> None:
    cases: list[tuple[object, ...]] = [
        ("micro", "user-1", "ev-1", "checkout", "payment"),
        ("dropoff", "anon-7", "checkout", 3),
        ("stalled", "u", "f", 2, 1710151200000),
        ("identity", None, "u", "e"),
        (Kind.MICRO, 1.5, True, ""),
        (),
    ]
    for parts in cases:
        text = "\x1f".join(map(str, parts))
        assert output_id(*parts) == blake2b(text.encode(), digest_size=16).hexdigest()
    assert output_id("micro", "u-1", "e", "f", "s") == "84bc011d9a986dc858911bd43271a0e9"
