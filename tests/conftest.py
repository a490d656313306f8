"""Fixtures every test area shares: one real broker and one real Redis per test run (started on
first use), unique names per test, real worker processes, and the `integration` marker.

A test is an integration test when it needs the real broker and Redis, that is when it uses the
`infra` fixture (directly or through `worker_env`, `settings`, `start_worker`, ...); the
collection hook below marks exactly those, so `pytest -m integration` selects them and
`-m "not integration and not browser"` runs with nothing started. (A `pytestmark` in a
conftest.py has no effect: pytest reads it from test modules only.) A module that starts its
own processes without the fixture says so with `pytestmark = pytest.mark.integration`.
`tests/test_layout.py` checks the selection.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from streams.settings import Settings
from streams.tools.infra import LOCAL_BROKER_ENV, LocalInfra
from streams.tools.worker_process import WorkerProcess

FAST_GROUP_ENV = {
    **LOCAL_BROKER_ENV,
    "CONVERSIONS_COMMIT_INTERVAL_S": "0.5",
    "CONVERSIONS_WATERMARK_INTERVAL_S": "0.5",
    "CONVERSIONS_WEB_ENABLED": "false",
}

# The property tests assert behaviour, never time: hypothesis's default 200 ms deadline per
# example and its too-slow health check failed them on a loaded machine (CI has 2 cores shared
# with the broker, Redis and the workers of the integration tests). A test's own settings
# decorator still overrides these.
hypothesis_settings.register_profile(
    "conversions", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("conversions")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "infra" in getattr(item, "fixturenames", ()) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


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


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes for this test; on teardown they stop, and any ERROR they
    logged fails the test (unless the test declared the errors it expects)."""
    started: list[WorkerProcess] = []

    def start(name: str = "worker", env: dict[str, str] | None = None, ready: bool = True) -> WorkerProcess:
        process = WorkerProcess({**worker_env, **(env or {})}, tmp_path / f"{name}.log")
        started.append(process)
        return process.start(wait_ready_s=90.0 if ready else 0)

    yield start
    for process in started:
        process.stop()
    errors = [line for process in started for line in process.error_lines()]
    assert not errors, "workers logged errors:\n" + "\n".join(errors[:20])
