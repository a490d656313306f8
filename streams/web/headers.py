"""The security headers of every answer of the web server, errors and Faust's own pages included
(an `on_response_prepare` hook, which runs for every response, not a middleware, which an
exception raised by the router can pass by).

- `Content-Security-Policy`: scripts, styles, images and requests from this server only, no
  inline script or style (the dashboard has none), no plugins, no framing, forms post here only:
  an injected value that slipped past the dashboard's escaping still could not run.
- `X-Frame-Options: DENY` (the same for older browsers), `X-Content-Type-Options: nosniff`,
  `Referrer-Policy: no-referrer` (the dashboard's query strings stay on this server).
- `Cache-Control: no-store` on everything but the dashboard's static files: the JSON and the
  HTML hold live counts (and, signed in, they are private).
- `Server` says `conversions`, not aiohttp's version.
"""

from __future__ import annotations

from aiohttp import web

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SERVER = "conversions"
STATIC_PREFIX = "/dashboard/"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's `on_response_prepare` signal: every answer gets the headers above."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = SERVER
    static = request.path.startswith(STATIC_PREFIX) and response.status == 200
    response.headers["Cache-Control"] = "no-cache" if static else "no-store"


def install(app: web.Application) -> None:
    app.on_response_prepare.append(add_security_headers)
