"""`conversions infra` and `conversions demo` leave no broker, Redis or worker behind: stopped by
SIGTERM, SIGINT or SIGHUP they stop their children; killed outright (SIGKILL, nothing of theirs
runs), the children are told by the kernel (PR_SET_PDEATHSIG) and stop on their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ENV_WITHOUT_GIVEN_PARTS = {
    k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
}


def start(
    args: list[str], tmp_path: Path, ready: str, timeout_s: float
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "out.log"
    env = {**ENV_WITHOUT_GIVEN_PARTS, "CONVERSIONS_DATA_DIR": str(tmp_path / "data")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + timeout_s
    while ready not in log.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.1)
    return process, log


def left_behind(children: list[psutil.Process], timeout_s: float) -> list[str]:
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for process in alive:  # do not leave them to the next test
        process.kill()
    return [" ".join(p.cmdline()[:2]) for p in alive if p.is_running()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_infra_leaves_no_child(signum: int, tmp_path: Path) -> None:
    process, _ = start(["infra"], tmp_path, "export KAFKA_BOOTSTRAP_SERVERS=", timeout_s=60)
    children = psutil.Process(process.pid).children(recursive=True)
    names = sorted(p.name().split("-")[0] for p in children)
    assert names == ["redis", "tansu"], names
    process.send_signal(signum)
    process.wait(30)
    assert left_behind(children, timeout_s=15) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_demo_leaves_no_child(signum: int, tmp_path: Path) -> None:
    process, _ = start(["demo", "--rate", "20"], tmp_path, "open the live dashboard", timeout_s=150)
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 3, [p.cmdline()[:3] for p in children]  # broker, Redis, worker
    process.send_signal(signum)
    process.wait(60)
    assert left_behind(children, timeout_s=45) == []
