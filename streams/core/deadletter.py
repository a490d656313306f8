"""Rejected input as dead-letter records: original bytes, reason, and where it came from."""

from __future__ import annotations

import base64
from datetime import datetime

from streams.core.events import Rejection
from streams.core.ids import output_id
from streams.core.outputs import DeadLetter


def dead_letter(
    rejection: Rejection,
    *,
    source_topic: str,
    source_partition: int | None,
    source_offset: int | None,
    timestamp: datetime,
) -> DeadLetter:
    """The id is the message's position (and index in a batch), so a redelivery repeats it."""
    return DeadLetter(
        id=output_id("deadletter", source_topic, source_partition, source_offset, rejection.index),
        timestamp=timestamp,
        reason=rejection.reason,
        detail=rejection.detail[:2_000],
        errors=rejection.errors[:20],
        original_b64=base64.b64encode(rejection.original).decode(),
        batch_index=rejection.index,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
    )
