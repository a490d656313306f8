"""The `Host` names the web server answers to: loopback's, the address it listens on, and the
names configured (`CONVERSIONS_WEB_ALLOWED_HOSTS`). Any other is refused with 421 before any
route runs.

Without this, DNS rebinding reads the API: a page at http://evil.example:6066 has its name
re-pointed at 127.0.0.1, and the browser, which judges origins by name, lets the page read the
answers of the server on the developer's loopback. The request still names `evil.example`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
WILDCARD_ADDRESSES = frozenset(("0.0.0.0", "::", ""))
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allowed_hosts(listen_host: str, configured: Iterable[str] = ()) -> frozenset[str]:
    names = {_name(listen_host)} - WILDCARD_ADDRESSES
    return LOOPBACK_NAMES | names | {_name(h) for h in configured if h.strip()}


def _name(host: str) -> str:
    """A host name compared as the browser sends it: lower case, no trailing dot, no brackets."""
    return host.strip().lower().rstrip(".").strip("[]")


def host_name(header: str | None) -> str | None:
    """The name of a `Host` header, without its port (`[::1]:6066` -> `::1`)."""
    if not header:
        return None
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        return _name(header[: end + 1]) if end > 0 else None
    name, _, port = header.rpartition(":") if header.count(":") == 1 else (header, "", "")
    return _name(name) if not port or port.isdigit() else None


def middleware(allowed: frozenset[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if host_name(request.headers.get("Host")) not in allowed:
            return web.json_response(
                {"error": "this server does not answer to that host name (CONVERSIONS_WEB_ALLOWED_HOSTS)"},
                status=421,
            )
        return await handler(request)

    return check_host
