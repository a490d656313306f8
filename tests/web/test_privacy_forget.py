"""`POST /privacy/forget` (issue 28): erasure over HTTP, only behind the web token, only as JSON.

The guards are tested on a real aiohttp server with the worker's auth in front and a recorder in
place of the Kafka write; a real worker then takes one erasure through to the erasures topic.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.core.records.outputs import Erasure, build
from streams.kafka import ensure_topics
from streams.settings import Settings
from streams.tools.worker_process import WorkerProcess
from streams.web import privacy
from streams.web.auth import Access, middleware
from tests.helpers import read_topics

TOKEN = "Correct-Horse-Battery-0042"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Access], Any]]:
    runners: list[web.AppRunner] = []
    recorded: list[tuple[str | None, str | None]] = []

    async def forget(user_id: str | None, anonymous_id: str | None) -> Erasure:
        recorded.append((user_id, anonymous_id))
        return build(
            Erasure, id="e1", user_id=user_id, anonymous_id=anonymous_id, timestamp=datetime.now(UTC)
        )

    async def start(access: Access) -> tuple[str, list[tuple[str | None, str | None]]]:
        app = web.Application(middlewares=[middleware(access)] if access.enabled else [])
        privacy.install(app, forget, token_set=access.web_token is not None)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}{privacy.FORGET_PATH}", recorded

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_without_a_web_token_nobody_can_erase_over_http(server: Any) -> None:
    url, recorded = await server(Access(web_token=None))
    async with aiohttp.ClientSession() as http, http.post(url, json={"user_id": "u1"}) as answer:
        assert answer.status == 403
        assert "CONVERSIONS_WEB_TOKEN" in (await answer.json())["error"]
    assert recorded == []


async def test_with_the_token_a_json_request_erases_and_nothing_else_does(server: Any) -> None:
    url, recorded = await server(Access(web_token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"user_id": "u1"}) as answer:
            assert answer.status == 401  # no token
        # what a cross-site form can send: never acted on
        async with http.post(
            url, data="user_id=u1", headers={**bearer, "Content-Type": "text/plain"}
        ) as answer:
            assert answer.status == 415
        for body in ({}, {"user_id": 7}, {"anonymous_id": ""}, ["u1"]):
            async with http.post(url, json=body, headers=bearer) as answer:
                assert answer.status == 400, body
        assert recorded == []
        async with http.post(url, json={"user_id": "u1", "anonymous_id": "a1"}, headers=bearer) as answer:
            assert answer.status == 202
            assert (await answer.json())["type"] == "erasure"
    assert recorded == [("u1", "a1")]


async def test_a_worker_records_an_erasure_posted_to_it(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    await ensure_topics(settings)
    port = _free_port()
    start_worker(
        env={
            "CONVERSIONS_WEB_ENABLED": "true",
            "CONVERSIONS_WEB_PORT": str(port),
            "CONVERSIONS_WEB_TOKEN": TOKEN,
        }
    )
    url = f"http://127.0.0.1:{port}{privacy.FORGET_PATH}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.post(
                    url, json={"user_id": "http-gone"}, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as answer:
                    assert answer.status == 202, await answer.text()
                    posted = await answer.json()
                    break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "the worker's web server never answered"
    records = await read_topics(settings, [settings.topic(settings.topic_erasures)], expect=1, quiet_s=1)
    assert [(r["id"], r["user_id"], r["requested_by"]) for r in records] == [
        (posted["id"], "http-gone", "http")
    ]
    erased = await read_topics(settings, [settings.topic(settings.topic_erased)], expect=1, quiet_s=1)
    assert [r["id"] for r in erased] == ["http-gone"]
