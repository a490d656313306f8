"""Applied markers: the journeys-table entries that say how far each input partition has been
applied to a journeys partition, and how far its event time had got then.

After a crash, whatever ingest or the journeys agent see again at or below a marker's offset is
skipped (redelivery is harmless), and a recovered partition is reminded of the watermark its
sources had reached. A marker lives in the journeys table itself, in the changelog partition of
the journeys it covers, written after them; its key starts with a control character, which an
identity can never contain, so it never collides with a journey.
"""

from __future__ import annotations

from streams.core.journeys.engine import partition_for

MARKER_PREFIX = "\x00"


def applied_marker(partition: int, source: str) -> str:
    """The journeys-table key holding the highest source offset applied to a partition."""
    return f"{MARKER_PREFIX}applied:{partition}:{source}"


def is_marker(key: str) -> bool:
    return key.startswith(MARKER_PREFIX)


def config_marker(partition: int) -> str:
    """The journeys-table key holding the configuration a partition's journeys were written
    under and the definitions of the funnel versions they may refer to (`config.versions`)."""
    return f"{MARKER_PREFIX}config:{partition}"


def is_config_marker(key: str) -> bool:
    return key.startswith(f"{MARKER_PREFIX}config:")


def marker_source(key: str) -> str:
    """The source ("topic/partition") an applied marker's key names."""
    return key.split(":", 2)[2]


def marker_value(offset: int, watermark: int | None) -> bytes:
    """An applied marker's value: the source offset applied, and the source's watermark then."""
    return f"{offset} {watermark}".encode() if watermark is not None else str(offset).encode()


def parse_marker(raw: bytes) -> tuple[int, int | None]:
    """(offset applied, the source's watermark then or None) from a marker's value."""
    offset, _, watermark = raw.decode().partition(" ")
    return int(offset), int(watermark) if watermark else None


def partition_of_key(key: str, partitions: int) -> int:
    """The journeys-table partition a key belongs to: a marker names it, an identity hashes to it."""
    if is_marker(key):
        return int(key.split(":", 2)[1])
    return partition_for(key, partitions)
