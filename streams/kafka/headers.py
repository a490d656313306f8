"""Names of the Kafka record headers the project writes and reads."""

from __future__ import annotations

WATERMARK_HEADER = "conversions-watermark"
"""On an output topic's record: the event-time watermark of the journey partition that wrote it;
everything that partition will emit earlier than it is already before this record."""
