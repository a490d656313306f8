"""The collector as any HTTP client sees it: `curl` (a subprocess, nothing of Python's) posts
Segment-spec calls with the write key as Basic auth, plain and gzipped, and the worker behind the
collector turns them into a macroconversion."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
from datetime import UTC, datetime, timedelta

import orjson

from streams.settings import Settings
from tests.collector.conftest import StartCollecting
from tests.collector.test_collector_clients import FUNNELS, WRITE_KEY
from tests.helpers import read_topics


def curl(url: str, body: bytes, *headers: str, user: str = f"{WRITE_KEY}:") -> tuple[int, bytes]:
    """POST with curl; the status code and the body it got back."""
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-u", user, "--data-binary", "@-", url]
    for header in ("Content-Type: application/json", *headers):
        args[1:1] = ["-H", header]
    done = subprocess.run(args, input=body, capture_output=True, check=True, timeout=30)
    answer, _, code = done.stdout.rpartition(b"\n")
    return int(code), answer


async def test_curl_posts_to_the_collector(
    settings: Settings, start_collecting_worker: StartCollecting
) -> None:
    running = await start_collecting_worker(FUNNELS, WRITE_KEY)
    start = datetime.now(UTC) - timedelta(minutes=5)

    def call(kind: str, minute: int, **fields: object) -> dict[str, object]:
        moment = (start + timedelta(minutes=minute)).isoformat()
        return {"type": kind, "userId": "curl_user", "timestamp": moment, "messageId": f"c{minute}", **fields}

    page = call("page", 0, name="Home", properties={"url": "https://shop.example/"})
    view = call("track", 1, event="Product Viewed")
    order = call("track", 2, event="Order Completed", properties={"revenue": 25.0})

    code, _ = await asyncio.to_thread(curl, f"{running.url}/v1/page", orjson.dumps(page))
    assert code == 200
    batch = gzip.compress(orjson.dumps({"batch": [view, order]}))
    code, _ = await asyncio.to_thread(curl, f"{running.url}/v1/batch", batch, "Content-Encoding: gzip")
    assert code == 200
    code, answer = await asyncio.to_thread(curl, f"{running.url}/v1/track", orjson.dumps(view), user="wrong:")
    assert code == 401, answer

    macros = await read_topics(settings, [settings.topic(settings.topic_macro)], expect=1, quiet_s=1)
    assert [(m["user_id"], m["value"]) for m in macros] == [("curl_user", 25.0)]
