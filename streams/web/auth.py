"""The optional access token of the worker's web server (`CONVERSIONS_WEB_TOKEN`).

The server listens on loopback unless told otherwise; a deployment that exposes it sets a token,
and then every request needs it, the dashboard's and the JSON API's alike, and whatever else the
web server answers (Faust's own pages too: this is a middleware in front of all routes):

- `Authorization: Bearer <token>`, for scripts and tools; or
- the cookie that signing in at `/login` sets (a form: the browser's way). The cookie holds an
  HMAC of the token, not the token, is HttpOnly and SameSite=Strict.

`/metrics` is configured apart, as Prometheus scrapes it with its own credentials:
`CONVERSIONS_METRICS_TOKEN` (a bearer token just for it), else the web token;
`CONVERSIONS_METRICS_PUBLIC=true` leaves it open. Every comparison is constant-time
(`hmac.compare_digest`), and no token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from streams.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "conversions_session"
LOGIN_PATH = "/login"
METRICS_PATH = "/metrics"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    """Which token each path needs (None: open)."""

    web_token: str | None
    metrics_token: str | None = None
    metrics_public: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        web_token, metrics_token = settings.web_token, settings.metrics_token
        return cls(
            web_token.get_secret_value() if web_token is not None else None,
            metrics_token.get_secret_value() if metrics_token is not None else None,
            settings.metrics_public,
        )

    @property
    def enabled(self) -> bool:
        return self.web_token is not None or self.metrics_token is not None

    def required(self, path: str) -> str | None:
        if path == METRICS_PATH:
            return None if self.metrics_public else (self.metrics_token or self.web_token)
        return self.web_token

    def allows(self, path: str, authorization: str | None, cookie: str | None) -> bool:
        token = self.required(path)
        if token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
        return cookie is not None and token == self.web_token and _same(cookie, session_value(token))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def session_value(token: str) -> str:
    """What the cookie holds: a keyed hash of the token, so the cookie is not the token itself."""
    return hmac.new(token.encode(), b"conversions dashboard session", hashlib.sha256).hexdigest()


def login_page(message: str = "") -> str:
    """The sign-in form (`dashboard/login.html`), with a message when there is one."""
    page = resources.files("streams.web").joinpath("dashboard", "login.html").read_text()
    note = f'<p class="error" data-testid="login-error">{html.escape(message)}</p>' if message else ""
    return page.replace("<!--message-->", note)


def _refuse(request: web.Request) -> web.StreamResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="conversions"', "Cache-Control": "no-store"}
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=401, text=login_page(), content_type="text/html", headers=headers)
    body = '{"error": "this server needs a token: Authorization: Bearer <token>, or sign in at /login"}'
    return web.Response(status=401, text=body, content_type="application/json", headers=headers)


async def _login(request: web.Request, access: Access) -> web.StreamResponse:
    token = access.web_token
    if token is None:
        return web.Response(status=303, headers={"Location": "/"})
    if request.method != "POST":
        return web.Response(
            text=login_page(), content_type="text/html", headers={"Cache-Control": "no-store"}
        )
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not _same(given, token):
        log.warning("web: refused a sign-in from %s", request.remote)
        return web.Response(
            status=401,
            text=login_page("That token is not the one this server needs."),
            content_type="text/html",
        )
    response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE, session_value(token), httponly=True, samesite="Strict", path="/", secure=request.secure
    )
    return response


def middleware(access: Access) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that guards every route with `access`."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == LOGIN_PATH:
            return await _login(request, access)
        if not access.allows(request.path, request.headers.get("Authorization"), request.cookies.get(COOKIE)):
            return _refuse(request)
        return await handler(request)

    return guard
