"""Which browser origins may post to the collector, and what its CORS answers say.

A browser sends `Origin` with every cross-origin POST, the "simple" ones included (a `text/plain`
body needs no preflight), and CORS alone only hides the answer from the page: the events would
still be produced. So a request whose origin is not allowed is refused outright (403), before
anything is produced:

- with write keys: the configured origins (`CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS`), any origin
  only when `*` is configured, and then the answer says `*`, never an echo;
- without write keys (a developer's loopback collector): only the listed origins, never `*`, so a
  page the developer visits cannot post into it;
- an origin of `null` (sandboxed frames, `file:` pages, some redirects) is never allowed.

A request without `Origin` is not a browser's cross-origin one (the server libraries, curl) and
is judged by its write key alone.
"""

from __future__ import annotations

from collections.abc import Collection

ANY = "*"


def allowed_origin(origin: str | None, allowed: Collection[str], keyed: bool) -> str | None:
    """The `Access-Control-Allow-Origin` to answer a request from `origin`, or None: refused."""
    if origin is None or origin == "null":
        return None
    if origin in allowed:
        return origin
    if keyed and ANY in allowed:
        return ANY
    return None


def refused(origin: str | None, allowed: Collection[str], keyed: bool) -> bool:
    """Whether a request is refused for its origin (a browser's, from a page not allowed)."""
    return origin is not None and allowed_origin(origin, allowed, keyed) is None
