"""A task run beside the agents, as a child service of the Faust app: started with it, asked to
stop with it, closed after. How the worker runs the counters consumer and the alerts service
without their knowing about Faust (`ports.Scheduler.run_alongside`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mode import Service

from streams.ports import Job, Stopping


class BackgroundService(Service):
    def __init__(self, name: str, run: Callable[[Stopping], Awaitable[None]], close: Job) -> None:
        super().__init__()
        self.task_name = name
        self._run = run
        self._close = close

    @Service.task
    async def _run_forever(self) -> None:
        service: Any = self  # mode's Service attributes are invisible to mypy
        await self._run(lambda: bool(service.should_stop))

    async def on_stop(self) -> None:
        await self._close()
