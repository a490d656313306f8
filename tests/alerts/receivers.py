"""Fixtures of the receiver tests: a local HTTP receiver that keeps what is POSTed (and can be
told to fail), and a real Alertmanager (Debian's prometheus-alertmanager) on a free port."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.tools.infra import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"


@dataclass
class Receiver:
    """POSTs on loopback, kept with their path; the first `fail` answered with `status`."""

    url: str = ""
    received: list[tuple[str, Any]] = field(default_factory=list)
    fail: int = 0
    status: int = 503
    runner: web.AppRunner | None = None

    def bodies(self, path: str | None = None) -> list[Any]:
        return [body for p, body in self.received if path is None or p == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def take(request: web.Request) -> web.Response:
        if state.fail > 0:
            state.fail -= 1
            return web.Response(status=state.status)
        state.received.append((request.path, await request.json()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/{tail:.*}", take)
    state.runner = web.AppRunner(app, access_log=None)  # its log would show the secret URLs
    await state.runner.setup()
    port = free_port()
    await web.TCPSite(state.runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await state.runner.cleanup()


AM_CONFIG = """\
route:
  receiver: nobody
  group_by: [alertname, funnel]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: nobody
"""


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port (no clustering), its storage in tmp."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(AM_CONFIG)
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "alertmanager did not start: " + (tmp_path / "alertmanager.log").read_text()
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


async def am_get(url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url + path) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def eventually(probe: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.3)
