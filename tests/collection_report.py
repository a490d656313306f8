"""A pytest plugin for `tests/test_layout.py`: with `-p tests.collection_report`, writes what a
collection selected (node id, fixtures, markers) as JSON to `$COLLECTION_REPORT`."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    target = os.environ.get("COLLECTION_REPORT")
    if not target:
        return
    items = [
        {
            "id": item.nodeid,
            "fixtures": sorted(getattr(item, "fixturenames", ())),
            "markers": sorted({mark.name for mark in item.iter_markers()}),
        }
        for item in session.items
    ]
    Path(target).write_bytes(orjson.dumps(items))
