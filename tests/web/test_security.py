"""The web server as an internet-facing service would be probed (issue 29): it will not listen
beyond loopback without a strong token, answers only its own host names (DNS rebinding), puts
the security headers on every answer, and signs in with revocable, expiring sessions whose
failures are throttled and logged in bounded lines.

A real aiohttp server with the worker's guards in front of two pages: the Host check
(`hosts`), the token (`auth`) and the headers (`headers`), as `routes.register_routes` installs
them; the dashboard's browser test checks them on the real worker.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streams.settings import SettingsError, load_settings
from streams.web import headers, hosts
from streams.web.auth import COOKIE, Access, middleware

TOKEN = "Correct-Horse-Battery-0042"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ServerFactory = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    runners: list[web.AppRunner] = []

    async def start(access: Access, extra_hosts: tuple[str, ...] = ()) -> str:
        app = web.Application(
            middlewares=[hosts.middleware(hosts.allowed_hosts("127.0.0.1", extra_hosts)), middleware(access)]
        )
        headers.install(app)

        async def page(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/live", page)
        app.router.add_get("/metrics", page)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def test_the_web_server_refuses_to_listen_beyond_loopback_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "dashboard.internal", "::"):
        monkeypatch.setenv("CONVERSIONS_WEB_HOST", host)
        with pytest.raises(
            SettingsError, match=r"CONVERSIONS_WEB_TOKEN: the web server listens on .*beyond loopback"
        ):
            load_settings()
        assert load_settings(web_token=TOKEN).web_host == host
        assert load_settings(web_enabled=False).web_host == host, "no web server, nothing to refuse"
    for host in ("127.0.0.1", "localhost", "::1"):
        monkeypatch.setenv("CONVERSIONS_WEB_HOST", host)
        assert load_settings().web_token is None


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("a" * 16, r"at least 8 different characters, this one has 1"),
        ("abababababababababab", r"at least 8 different characters, this one has 2"),
        ("short-token", r"at least 16 characters"),
    ],
)
def test_weak_tokens_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, token: str, why: str) -> None:
    for variable in ("CONVERSIONS_WEB_TOKEN", "CONVERSIONS_METRICS_TOKEN"):
        monkeypatch.setenv(variable, token)
        with pytest.raises(SettingsError, match=why):
            load_settings()
        monkeypatch.delenv(variable)
    monkeypatch.setenv("CONVERSIONS_WEB_TOKEN", "3f9a1c07d2e84b6b9e0f55aa12cd7e31")
    assert load_settings().web_token is not None


async def test_only_the_configured_host_names_are_answered(serve: ServerFactory) -> None:
    url = await serve(Access(web_token=None), ("dash.example.com",))
    port = url.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "DASH.example.com.",
            "dash.example.com",
        ):
            async with http.get(url + "/live", headers={"Host": host}) as r:
                assert r.status == 200, host
        for host in (f"evil.example:{port}", "127.0.0.1.evil.example", "dash.example.com.evil", ""):
            async with http.get(url + "/live", headers={"Host": host}) as r:
                assert r.status == 421, host
                assert "CONVERSIONS_WEB_ALLOWED_HOSTS" in (await r.json())["error"]


async def test_every_answer_carries_the_security_headers(serve: ServerFactory) -> None:
    url = await serve(Access(web_token=TOKEN))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        answers = [
            await http.get(url + "/live", headers=bearer),  # the API
            await http.get(url + "/live"),  # refused: 401
            await http.get(url + "/live", headers={"Accept": "text/html"}),  # the sign-in page
            await http.get(url + "/nowhere", headers=bearer),  # the router's 404
            await http.get(url + "/live", headers={"Host": "evil.example"}),  # 421
        ]
        assert [a.status for a in answers] == [200, 401, 401, 404, 421]
        for answer in answers:
            h = answer.headers
            csp = h["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
            assert h["Referrer-Policy"] == "no-referrer" and h["Cache-Control"] == "no-store"
            assert h["Server"] == "conversions", "no aiohttp version"
            answer.release()


async def test_sessions_are_random_expiring_revocable_and_secure_behind_tls(serve: ServerFactory) -> None:
    access = Access(web_token=TOKEN, session_ttl_s=3_600)
    url = await serve(access)

    async def sign_in(http: aiohttp.ClientSession) -> Any:
        async with http.post(url + "/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
            return r.cookies[COOKIE]

    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as first,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as second,
    ):
        one, two = await sign_in(first), await sign_in(second)
        assert one.value != two.value, "a session is not a fixed function of the token"
        assert TOKEN not in one.value
        assert one["max-age"] == "3600" and one["httponly"] and one["samesite"] == "Strict"
        assert not one["secure"], "plain http on loopback"
        for http in (first, second):
            async with http.get(url + "/live") as r:
                assert r.status == 200
        async with first.get(url + "/logout", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with aiohttp.ClientSession() as thief:  # the signed-out cookie, replayed
            async with thief.get(url + "/live", headers={"Cookie": f"{COOKIE}={one.value}"}) as r:
                assert r.status == 401, "a signed-out session is revoked"
            tampered = two.value[:-1] + ("1" if two.value.endswith("0") else "0")  # always another one
            async with thief.get(url + "/live", headers={"Cookie": f"{COOKIE}={tampered}"}) as r:
                assert r.status == 401, "a tampered cookie is refused"
        async with second.get(url + "/live") as r:
            assert r.status == 200, "the other session lives on"
    assert access.session_id(two.value) is not None
    assert access.session_id(two.value, now=10**10) is None, "it expires"

    behind_proxy = await serve(Access(web_token=TOKEN, behind_tls=True))
    async with (
        aiohttp.ClientSession() as http,
        http.post(behind_proxy + "/login", data={"token": TOKEN}, allow_redirects=False) as r,
    ):
        assert r.cookies[COOKIE]["secure"], "Secure when a proxy terminates TLS"


async def test_failed_sign_ins_are_throttled_per_client_and_logged_in_bounded_lines(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = await serve(Access(web_token=TOKEN))
    caplog.set_level(logging.INFO, logger="streams.web.auth")
    statuses = []
    async with aiohttp.ClientSession() as http:
        for attempt in range(200):
            async with http.post(url + "/login", data={"token": f"guess-{attempt:04d}-xxxxxxxx"}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert retry is not None and int(retry) >= 1
        async with http.post(url + "/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 429, "while throttled, not even the right token is tried"
    lines = [r.getMessage() for r in caplog.records if r.name == "streams.web.auth"]
    assert len(lines) == 1 and "127.0.0.1" not in lines[0], lines
