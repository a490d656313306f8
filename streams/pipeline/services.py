"""A task run beside the agents, as a child service of the Faust app: started with it, asked to
stop with it, closed after. How the worker runs the counters consumer and the alerts service
without their knowing about Faust (`ports.Scheduler.run_alongside`).

The app stops its producer and consumers around these tasks, so work in hand when the worker is
asked to stop (SIGTERM, or its generation retired under live traffic) can fail on a stopped
client: that is the shutdown, not a crash. It is said as a warning; what the task had not
committed is read again by the next owner, as after any stop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mode import Service

from streams.ports import Job, Stopping

log = logging.getLogger(__name__)


class BackgroundService(Service):
    def __init__(
        self,
        name: str,
        run: Callable[[Stopping], Awaitable[None]],
        close: Job,
        app_stopping: Stopping | None = None,
    ) -> None:
        super().__init__()
        self.task_name = name
        self._run = run
        self._close = close
        self._app_stopping = app_stopping or (lambda: False)

    @Service.task
    async def _run_forever(self) -> None:
        service: Any = self  # mode's Service attributes are invisible to mypy

        def stopping() -> bool:
            return bool(service.should_stop) or self._app_stopping()

        try:
            await self._run(stopping)
        except Exception as exc:
            if not stopping():
                raise
            log.warning(
                "%s: stopped with work in hand (%s: %s); what it had not committed is read again",
                self.task_name,
                exc.__class__.__name__,
                exc,
            )

    async def on_stop(self) -> None:
        await self._close()
