"""The journeys table's stores, one file per backend (`memory`, `rocksdb`), both read to their
changelog's true end before Faust's recovery (`base`)."""

from __future__ import annotations

from faust import stores

from streams.pipeline.stores.base import ChangelogReader, ReadsItsChangelog
from streams.pipeline.stores.memory import JourneyMemoryStore
from streams.pipeline.stores.rocksdb import JourneyRocksStore

__all__ = ["ChangelogReader", "JourneyMemoryStore", "JourneyRocksStore", "ReadsItsChangelog", "register"]

SCHEME = "journeys-memory"
ROCKS_SCHEME = "journeys-rocksdb"


def register(table_store: str) -> str:
    """Make our stores known to Faust; returns the URL to use for `table_store`."""
    stores.STORES.aliases[SCHEME] = "streams.pipeline.stores.memory:JourneyMemoryStore"
    stores.STORES.aliases[ROCKS_SCHEME] = "streams.pipeline.stores.rocksdb:JourneyRocksStore"
    if table_store.startswith("memory:"):
        return f"{SCHEME}://"
    if table_store.startswith("rocksdb:"):
        return ROCKS_SCHEME + table_store[len("rocksdb") :]
    return table_store
