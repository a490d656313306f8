"""Output ids are part of the contract (consumers deduplicate by them): `output_id` must give,
for any parts, the digest of the parts' `str()` joined by the unit separator, as it always has.
`short_hash`'s values are stored in journey state (the event ids a journey remembers), so they
must not change either."""

from __future__ import annotations

from enum import StrEnum
from hashlib import blake2b
from struct import unpack

from streams.core.records.ids import output_id, short_hash


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


def test_short_hash_is_the_top_63_bits_of_an_8_byte_blake2b() -> None:
    for text in ("ev-1", "ev-1-17330-0-1", "", "é\x1f", "x" * 300):
        digest = blake2b(text.encode(), digest_size=8).digest()
        assert short_hash(text) == unpack(">Q", digest)[0] >> 1
    assert short_hash("ev-1") == 1848750460682243374
    assert short_hash("") == 8238016292129134938


def test_hashes_do_not_carry_state_from_one_call_to_the_next() -> None:
    # each call starts from a copy of a prepared hasher: the prepared one must stay untouched
    first = output_id("a", "b"), short_hash("a")
    for i in range(3):
        output_id("noise", i)
        short_hash(f"noise-{i}")
    assert (output_id("a", "b"), short_hash("a")) == first
