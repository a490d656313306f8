"""What both journeys stores share: before Faust's recovery, they read their changelog
partitions themselves, to the true end, with a plain consumer (see `streams.kafka.changelog`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP

ChangelogReader = Callable[[Any, list[int]], Awaitable[None]]


class ReadsItsChangelog:
    """Before Faust's recovery, the app's `reader` reads every assigned changelog partition of
    the store to its true end with a plain consumer (many times faster than Faust's recovery
    here) and hands the records to the store's `apply_read`."""

    reader: ChangelogReader | None = None
    partitions_of: Callable[[set[TP]], list[int]] = staticmethod(lambda assigned: [])
    key_partition: Callable[[str], int] | None = None
    """The changelog partition of a table key (set by the app, as `reader` is)."""

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)  # type: ignore[misc]
        if self.reader is not None:
            await self.reader(self, self.partitions_of(assigned))
