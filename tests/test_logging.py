"""Log lines cannot be forged (issue 29): values from clients are logged with their control
characters escaped, so a breakdown value holding a newline and a fake log line stays inside the
line that names it, and ANSI escapes reach no terminal.

The alerts service logs an alert whose `by` value is the forging payload, in a process of its
own with the logging every command sets up (`setup_logging`), as a worker would.
"""

from __future__ import annotations

import subprocess
import sys

from streams.logging_setup import escape_control

FORGED = "x\n2026-11-24 12:00:00,000 CRITICAL [streams.web.auth] web token accepted for admin"
PAYLOAD = f"\x1b[2K\r{FORGED}\x1b[31m\u2028\x85\x00"

SCRIPT = """
import asyncio, sys
from streams.alerts.service import Alerting
from streams.logging_setup import setup_logging
from streams.metrics import Metrics
from streams.settings import Settings
from tests.counters.conftest import CONFIG
from tests.web.test_flood import Recorder
from tests.web.test_views import alert

setup_logging("INFO")
payload = sys.stdin.read()
settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
alerting = Alerting(settings, CONFIG, Metrics(), Recorder(), Recorder())
asyncio.run(alerting._publish([alert().model_copy(update={"by": {"campaign.source": payload}})]))
"""


def test_a_forging_value_stays_in_its_own_escaped_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], input=PAYLOAD, capture_output=True, text=True, check=True, timeout=60
    )
    lines = [
        line for line in done.stderr.splitlines() if "[streams.alerts.service]" in line or "CRITICAL" in line
    ]
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert line.startswith(tuple("0123456789")) and " WARNING " in line and "alert fired" in line
    assert "\\n2026-11-24 12:00:00,000 CRITICAL [streams.web.auth] web token accepted for admin" in line
    assert "\x1b" not in done.stderr and "\\x1b[2K\\r" in line and "\\u2028\\x85\\x00" in line
    assert len(done.stderr.splitlines()) == 1, "nothing else was written: no second line"


def test_escaping_keeps_printable_text() -> None:
    assert escape_control("shop.example/é?q=1 ✓ 東京") == "shop.example/é?q=1 ✓ 東京"
    assert escape_control("a\tb\r\nc\x7f") == "a\\tb\\r\\nc\\x7f"
