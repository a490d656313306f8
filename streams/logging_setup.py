"""One log format for every command: time, level, logger, message; secrets never in settings lines."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s [%(name)s] %(message)s"


def _expected_outage(record: logging.LogRecord) -> bool:
    """aiokafka logs every failed connection attempt as an ERROR; every caller here retries and
    says so in a warning of its own, so these are warnings too: ERROR stays for what needs a human."""
    if record.levelno == logging.ERROR and str(record.msg).startswith("Unable connect to"):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("aiokafka").addFilter(_expected_outage)
