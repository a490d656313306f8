"""A progress bar on stderr for long offline runs (by bytes when the size is known).

rich is imported only when the bar is shown: its import is about a tenth of a short run's
start-up, and `--no-progress` (or output to a pipe) never draws it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def line_progress(stream: BinaryIO, name: str, show: bool) -> Iterator[Iterator[bytes]]:
    if not show:
        yield iter(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    total: int | None = None
    with contextlib.suppress(OSError, ValueError):
        total = os.fstat(stream.fileno()).st_size or None
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(name, total=total)

        def lines() -> Iterator[bytes]:
            pending = 0
            for line in stream:
                pending += len(line)
                if pending >= 1 << 20:
                    progress.advance(task, pending)
                    pending = 0
                yield line
            progress.advance(task, pending)

        yield lines()
