"""Rejected input as dead-letter records: original bytes, reason, and where it came from."""

from __future__ import annotations

import hashlib
from binascii import b2a_base64
from datetime import datetime

from streams.core.input.rejection import Rejection
from streams.core.records.ids import output_id
from streams.core.records.outputs import DeadLetter, OutputEvent

MAX_ORIGINAL_BYTES = 256 * 1024


def dead_letter(
    rejection: Rejection,
    *,
    source_topic: str,
    source_partition: int | None,
    source_offset: int | None,
    source_offset_last: int | None = None,
    timestamp: datetime,
    max_original_bytes: int = MAX_ORIGINAL_BYTES,
) -> DeadLetter:
    """The id is the message's position (and index in a batch), so a redelivery repeats it.

    An original larger than `max_original_bytes` (the too-large message itself) is cut to that
    size and flagged, with its full size and SHA-256: the record must still fit in a Kafka
    message, and the whole original stays in the source topic at the recorded offset.
    """
    original = rejection.original
    return DeadLetter(
        id=output_id("deadletter", source_topic, source_partition, source_offset, rejection.index),
        timestamp=timestamp,
        reason=rejection.reason,
        detail=rejection.detail[:2_000],
        errors=rejection.errors[:20],
        original_b64=b2a_base64(original[:max_original_bytes], newline=False).decode(),
        original_size=len(original),
        original_sha256=hashlib.sha256(original).hexdigest(),
        original_truncated=len(original) > max_original_bytes,
        batch_index=rejection.index,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        source_offset_last=source_offset_last,
    )


def placed(
    outputs: list[OutputEvent],
    topic: str,
    partition: int | None,
    offset: int | None,
    original: bytes | None = None,
) -> list[OutputEvent]:
    """The outputs of one event, its dead letters (an event the engine refused: `late_event`)
    given what the engine does not know: where the event was read, and with `original`, the
    message as it arrived there (the engine only has the event, re-encoded)."""
    return [
        with_original(
            output.model_copy(
                update={"source_topic": topic, "source_partition": partition, "source_offset": offset}
            ),
            original,
        )
        if isinstance(output, DeadLetter)
        and (
            output.source_topic is None  # placed by the engine already when the event was held
            or (output.source_topic, output.source_partition, output.source_offset)
            == (topic, partition, offset)
        )
        else output
        for output in outputs
    ]


def with_original(letter: DeadLetter, original: bytes | None) -> DeadLetter:
    """The dead letter carrying `original` (the source message's bytes) in place of the copy the
    engine re-encoded; as it was when `original` is None (the message could not be read back)."""
    if original is None:
        return letter
    return letter.model_copy(
        update={
            "original_b64": b2a_base64(original[:MAX_ORIGINAL_BYTES], newline=False).decode(),
            "original_size": len(original),
            "original_sha256": hashlib.sha256(original).hexdigest(),
            "original_truncated": len(original) > MAX_ORIGINAL_BYTES,
        }
    )
