"""A worker in a child process: how the demo, the tests and the benchmarks run the real thing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from streams.tools.infra import dies_with_parent, kill_group, terminate

READY_LINE = "Worker ready"
READY_LINES = {"counters": "counters: consuming"}
ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ", re.MULTILINE)


class WorkerProcess:
    """`conversions worker` (or another long-running command, e.g. `counters`) with the given
    environment, its log in a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        extra_args: list[str] | None = None,
        command: str = "worker",
        python: str | None = None,
    ) -> None:
        """`python`: the interpreter to run it with (another virtualenv's, e.g. the compiled
        package's), else this one."""
        self.env = env
        self.python = python or sys.executable
        self.command = command
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, wait_ready_s: float = 60.0) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.python, "-m", "streams.cli", self.command, *self.extra_args],
                env={**os.environ, **self.env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_parent(),  # noqa: PLW1509 (one prctl call, no lock taken)
            )
        if wait_ready_s:
            self.wait_for(READY_LINES.get(self.command, READY_LINE), wait_ready_s)
        return self

    def log_text(self) -> str:
        """The log of this run (since the last start)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode(errors="replace")

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.command} exited with {self.process.returncode} before {text!r}:\n{self.tail()}"
                )
            time.sleep(0.1)
        raise TimeoutError(f"{self.command} did not log {text!r} within {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 4_000) -> str:
        return self.log_text()[-chars:]

    def error_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if ERROR_LINE.match(line)]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as an orchestrator would; SIGKILL if it will not go."""
        return None if self.process is None else terminate(self.process, self.command, timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash, with nothing flushed or committed."""
        if self.process is not None:
            kill_group(self.process)
