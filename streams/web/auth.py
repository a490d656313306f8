"""The optional access token of the worker's web server (`CONVERSIONS_WEB_TOKEN`).

The server listens on loopback unless told otherwise; beyond loopback it needs a token (the
settings refuse to start without one), and then every request needs it, the dashboard's and the
JSON API's alike, and whatever else the web server answers (Faust's own pages too: this is a
middleware in front of all routes):

- `Authorization: Bearer <token>`, for scripts and tools; or
- the cookie that signing in at `/login` sets (a form: the browser's way). The cookie holds a
  random session id and its expiry, signed with a key derived from the token: not the token,
  not a fixed function of it, so signing out at `/logout` revokes that one cookie (its id is
  kept in a revocation list until it would have expired) without rotating the token. It is
  HttpOnly, SameSite=Strict, expires after `CONVERSIONS_WEB_SESSION_TTL_S`, and is `Secure`
  when the request came over TLS or `CONVERSIONS_WEB_BEHIND_TLS` says a proxy terminates TLS.

Failed sign-ins are throttled per client address (5 at once, then one a minute: 429 with
Retry-After), and logged once a minute at most, with a count, not once per attempt.

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
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

from streams.ratelimit import RateLimiter, retry_after
from streams.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "conversions_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
METRICS_PATH = "/metrics"
PUBLIC_PATHS = frozenset(("/dashboard/login.css",))
"""What the sign-in page itself loads: open, it holds nothing."""
SIGN_IN_BURST = 5
SIGN_IN_PER_MINUTE = 1
REFUSALS_LOGGED_EVERY_S = 60.0
MAX_REVOKED = 100_000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    """Which token each path needs (None: open), and the signed-in sessions."""

    web_token: str | None
    metrics_token: str | None = None
    metrics_public: bool = False
    session_ttl_s: int = 12 * 3_600
    behind_tls: bool = False
    revoked: dict[str, float] = field(default_factory=dict, compare=False)
    """Signed-out session ids, until their cookie would have expired anyway (epoch s)."""
    sign_ins: RateLimiter = field(
        default_factory=lambda: RateLimiter(SIGN_IN_PER_MINUTE / 60, SIGN_IN_BURST, max_buckets=10_000),
        compare=False,
    )
    refusals: dict[str, float] = field(default_factory=lambda: {"count": 0, "logged_at": 0.0}, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        web_token, metrics_token = settings.web_token, settings.metrics_token
        return cls(
            web_token.get_secret_value() if web_token is not None else None,
            metrics_token.get_secret_value() if metrics_token is not None else None,
            settings.metrics_public,
            session_ttl_s=settings.web_session_ttl_s,
            behind_tls=settings.web_behind_tls,
        )

    @property
    def enabled(self) -> bool:
        return self.web_token is not None or self.metrics_token is not None

    def required(self, path: str) -> str | None:
        if path == METRICS_PATH:
            return None if self.metrics_public else (self.metrics_token or self.web_token)
        if path in PUBLIC_PATHS:
            return None
        return self.web_token

    def allows(self, path: str, authorization: str | None, cookie: str | None) -> bool:
        token = self.required(path)
        if token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), token):
            return True
        return cookie is not None and token == self.web_token and self.session_id(cookie) is not None

    # ---- sessions -------------------------------------------------------------------------

    def new_session(self, now: float | None = None) -> str:
        """A cookie value: a random id and its expiry, signed."""
        assert self.web_token is not None
        expires = int((time.time() if now is None else now) + self.session_ttl_s)
        unsigned = f"{secrets.token_urlsafe(24)}.{expires}"
        return f"{unsigned}.{_sign(self.web_token, unsigned)}"

    def session_id(self, cookie: str, now: float | None = None) -> str | None:
        """The session id of a valid cookie (signed, unexpired, not signed out), else None."""
        if self.web_token is None:
            return None
        unsigned, _, signature = cookie.rpartition(".")
        sid, _, expires = unsigned.partition(".")
        if not sid or not expires.isdigit() or not _same(signature, _sign(self.web_token, unsigned)):
            return None
        moment = time.time() if now is None else now
        if int(expires) <= moment or sid in self.revoked:
            return None
        return sid

    def sign_out(self, cookie: str | None, now: float | None = None) -> None:
        """Revoke the cookie's session, if it is a valid one."""
        moment = time.time() if now is None else now
        sid = self.session_id(cookie, moment) if cookie else None
        if sid is None:
            return
        for old in [s for s, until in self.revoked.items() if until <= moment]:
            del self.revoked[old]
        if len(self.revoked) >= MAX_REVOKED:  # never more than the sessions a TTL can hold
            del self.revoked[next(iter(self.revoked))]
        self.revoked[sid] = int(cookie.rsplit(".", 2)[1]) if cookie else moment

    def secure(self, request: web.Request) -> bool:
        return self.behind_tls or request.secure


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _sign(token: str, value: str) -> str:
    key = hashlib.sha256(b"conversions dashboard sessions\0" + token.encode()).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def login_page(message: str = "") -> str:
    """The sign-in form (`dashboard/login.html`), with a message when there is one."""
    page = resources.files("streams.web").joinpath("dashboard", "login.html").read_text()
    note = f'<p class="error" data-testid="login-error">{html.escape(message)}</p>' if message else ""
    return page.replace("<!--message-->", note)


def _refuse(request: web.Request) -> web.StreamResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="conversions"'}
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        return web.Response(status=401, text=login_page(), content_type="text/html", headers=headers)
    body = '{"error": "this server needs a token: Authorization: Bearer <token>, or sign in at /login"}'
    return web.Response(status=401, text=body, content_type="application/json", headers=headers)


def _log_refusal(access: Access) -> None:
    """One line a minute at most, with how many sign-ins were refused: an attacker's thousand
    attempts are one line, and no client address is logged."""
    refusals = access.refusals
    refusals["count"] += 1
    now = time.monotonic()
    if now - refusals["logged_at"] >= REFUSALS_LOGGED_EVERY_S:
        log.warning("web: %d sign-ins refused (wrong token) since the last report", int(refusals["count"]))
        refusals["count"], refusals["logged_at"] = 0, now


async def _login(request: web.Request, access: Access) -> web.StreamResponse:
    token = access.web_token
    if token is None:
        return web.Response(status=303, headers={"Location": "/"})
    if request.method != "POST":
        return web.Response(text=login_page(), content_type="text/html")
    client = request.remote or ""
    wait = access.sign_ins.wait(client)  # only wrong tokens spend the client's allowance
    if wait:
        return web.Response(
            status=429,
            text=login_page("Too many wrong tokens from here: wait a minute."),
            content_type="text/html",
            headers={"Retry-After": retry_after(wait)},
        )
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not _same(given, token):
        access.sign_ins.take(client)
        _log_refusal(access)
        return web.Response(
            status=401,
            text=login_page("That token is not the one this server needs."),
            content_type="text/html",
        )
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(
        COOKIE,
        access.new_session(),
        httponly=True,
        samesite="Strict",
        path="/",
        secure=access.secure(request),
        max_age=access.session_ttl_s,
    )
    return response


def _logout(request: web.Request, access: Access) -> web.StreamResponse:
    access.sign_out(request.cookies.get(COOKIE))
    response = web.Response(status=303, headers={"Location": LOGIN_PATH})
    response.del_cookie(COOKIE, path="/", secure=access.secure(request), httponly=True, samesite="Strict")
    return response


def middleware(access: Access) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware that guards every route with `access`."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == LOGIN_PATH:
            return await _login(request, access)
        if request.path == LOGOUT_PATH:
            return _logout(request, access)
        if not access.allows(request.path, request.headers.get("Authorization"), request.cookies.get(COOKIE)):
            return _refuse(request)
        return await handler(request)

    return guard
