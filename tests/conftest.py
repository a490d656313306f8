"""Session fixtures: one real broker and one real Redis per test run, unique names per test."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.infra import LOCAL_BROKER_ENV, LocalInfra
from streams.settings import Settings

FAST_GROUP_ENV = {
    **LOCAL_BROKER_ENV,
    "CONVERSIONS_COMMIT_INTERVAL_S": "0.5",
    "CONVERSIONS_WATERMARK_INTERVAL_S": "0.5",
    "CONVERSIONS_WEB_ENABLED": "false",
}


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    """The real broker and Redis: started here on free loopback ports, or the ones the
    environment names (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL)."""
    with LocalInfra(
        kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        redis_url=os.environ.get("REDIS_URL"),
        workdir=tmp_path_factory.mktemp("infra"),
    ) as local:
        yield local


@pytest.fixture
def worker_env(infra: LocalInfra, tmp_path: Path) -> dict[str, str]:
    """Environment for one test's worker(s): its own app id (group, changelog) and topics."""
    unique = f"t{uuid.uuid4().hex[:10]}"
    return {
        **FAST_GROUP_ENV,
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "REDIS_URL": infra.redis_url,
        "CONVERSIONS_APP_ID": unique,
        "CONVERSIONS_TOPIC_PREFIX": f"{unique}.",
        "CONVERSIONS_DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def settings(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture(autouse=True)
def _no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An error logged in-process (an unmocked send, a crashed agent) fails the test."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, "errors were logged: " + "; ".join(r.getMessage() for r in errors)
