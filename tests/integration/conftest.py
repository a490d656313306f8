from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


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
