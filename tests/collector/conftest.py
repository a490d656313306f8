"""A real worker running its own collector (`CONVERSIONS_COLLECTOR_ENABLED`), as deployed: the
end-to-end tests point the tracking libraries at it and read what comes out of the worker."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streams.tools.infra import free_port
from streams.tools.worker_process import WorkerProcess


@dataclass
class CollectingWorker:
    worker: WorkerProcess
    url: str
    """The collector's address, e.g. http://127.0.0.1:6067 (the API is under /v1)."""
    web_port: int

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the worker's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    async def acknowledged(self, kind: str, count: int, timeout_s: float = 30.0) -> None:
        """Wait until the collector has had `count` messages of `kind` acknowledged by the broker."""
        name = "conversions_collector_messages_total"
        for _ in range(int(timeout_s / 0.2)):
            if await asyncio.to_thread(self.metric, name, type=kind) >= count:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the collector did not get {count} {kind} messages acknowledged")


StartCollecting = Callable[..., Coroutine[Any, Any, CollectingWorker]]


@pytest.fixture
def start_collecting_worker(start_worker: Callable[..., WorkerProcess], tmp_path: Path) -> StartCollecting:
    async def start(funnels: str, write_key: str, **env: str) -> CollectingWorker:
        path = tmp_path / "funnels.yaml"
        path.write_text(funnels)
        port, web_port = free_port(), free_port()
        worker = await asyncio.to_thread(
            start_worker,
            env={
                "CONVERSIONS_FUNNELS": str(path),
                "CONVERSIONS_COLLECTOR_ENABLED": "true",
                "CONVERSIONS_COLLECTOR_PORT": str(port),
                "CONVERSIONS_COLLECTOR_WRITE_KEYS": write_key,
                "CONVERSIONS_WEB_ENABLED": "true",
                "CONVERSIONS_WEB_PORT": str(web_port),
                **env,
            },
        )
        await asyncio.to_thread(worker.wait_for, "collector ready", 60.0)
        return CollectingWorker(worker, f"http://127.0.0.1:{port}", web_port)

    return start
