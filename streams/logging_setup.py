"""One log format for every command: time, level, logger, message; secrets never in settings lines.

Messages name values that come from clients (alert `by` values, variants, Kafka errors quoting
input, request paths): a newline in one would start a line of the attacker's choosing (a fake
`CRITICAL ... web token accepted`), an ANSI escape would rewrite the operator's terminal. So the
formatter escapes every control character of the message (C0, DEL, C1: `\\n`, `\\x1b`, ...); a
traceback after it keeps its lines.
"""

from __future__ import annotations

import logging
import re
import sys

FORMAT = "%(asctime)s %(levelname)-7s [%(name)s] %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u2028`)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or m[0].encode("unicode_escape").decode(), text)


class EscapingFormatter(logging.Formatter):
    """The log format, with the message's control characters escaped (see the module)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def _expected_outage(record: logging.LogRecord) -> bool:
    """aiokafka logs every failed connection attempt as an ERROR; every caller here retries and
    says so in a warning of its own, so these are warnings too: ERROR stays for what needs a human."""
    if record.levelno == logging.ERROR and str(record.msg).startswith("Unable connect to"):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("aiokafka").addFilter(_expected_outage)
