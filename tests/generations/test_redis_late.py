"""A worker started before Redis reads the generations registry once Redis is up: the outage
is waited out, never a crash (issue 26 adds that read to the worker's start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.tools.infra import free_port, start_redis
from streams.tools.worker_process import READY_LINE, WorkerProcess


async def test_the_worker_waits_for_redis_before_joining_its_generation(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{port}"}
    worker = WorkerProcess(env, tmp_path / "worker.log").start(wait_ready_s=0)
    redis = None
    try:
        await asyncio.to_thread(worker.wait_for, "the generations registry is read before", 60)
        await asyncio.sleep(2)
        assert worker.running, worker.tail()
        redis = start_redis(tmp_path / "redis", port=port)
        await asyncio.to_thread(worker.wait_for, READY_LINE, 120)
    finally:
        worker.stop()
        if redis is not None:
            redis.stop()
    assert worker.error_lines() == []
