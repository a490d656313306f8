"""The hand-off offsets of `deploy --history` (issue 26): read from a JSON file, and checked against
what the clickstream partitions still retain before anything is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.generations.history import HistoryError, check_offsets, read_offsets

RETAINED = {"c/0": (100, 500), "c/1": (0, 40)}


def test_offsets_within_what_kafka_retains_are_accepted() -> None:
    assert check_offsets({"c/0": 100, "c/1": 40}, RETAINED) == []
    assert check_offsets({"c/0": 250, "c/1": 0}, RETAINED) == []


def test_a_gap_a_missing_or_unknown_partition_and_an_offset_past_the_end_are_refused() -> None:
    assert check_offsets({"c/0": 60, "c/1": 41, "c/9": 0}, RETAINED) == [
        "c/9: no such clickstream partition",
        "c/0: the archive ends at offset 60 but Kafka keeps only from 100: records 60..99 are in neither",
        "c/1: offset 41 is past the partition's end (40)",
    ]
    assert check_offsets({"c/0": 100}, RETAINED) == ["c/1: not in the offsets file"]


def test_the_offsets_file_is_an_object_of_partitions_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "offsets.json"
    path.write_text('{"c/0": 12, "c/1": 0}')
    assert read_offsets(path) == {"c/0": 12, "c/1": 0}
    for bad in ('{"c/0": -1}', '{"c0": 1}', "[1, 2]", '{"c/0": "1"}', "{"):
        path.write_text(bad)
        with pytest.raises(HistoryError, match="offsets file"):
            read_offsets(path)
