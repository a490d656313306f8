"""`POST /privacy/forget`: erase a person over HTTP, as `conversions forget` does.

Only behind the web token: without one the server is open to whatever can reach it, and an
erasure cannot be undone, so the route answers 403 and says which setting it needs. The body
must be JSON (`{"user_id": ..., "anonymous_id": ...}`): a browser cannot send that cross-site
without a CORS preflight, which this server never grants, so a page the operator visits cannot
erase anyone through their signed-in session.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from streams.core.records.outputs import Erasure

log = logging.getLogger(__name__)

FORGET_PATH = "/privacy/forget"
Forget = Callable[[str | None, str | None], Awaitable[Erasure]]
"""Records an erasure for a user id and/or an anonymous id (`kafka.erasures.forget`)."""
MAX_ID_LENGTH = 256


def _refusal(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _ids(body: Any) -> tuple[str | None, str | None] | str:
    """The two ids of a request body, or why they cannot be used."""
    if not isinstance(body, dict):
        return "the body must be a JSON object with user_id and/or anonymous_id"
    ids = []
    for name in ("user_id", "anonymous_id"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH):
            return f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters"
        ids.append(value)
    if ids[0] is None and ids[1] is None:
        return "give user_id, anonymous_id or both"
    return ids[0], ids[1]


def forget_handler(forget: Forget, token_set: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if not token_set:
            return _refusal(403, "erasure over HTTP needs CONVERSIONS_WEB_TOKEN; or use `conversions forget`")
        if request.content_type != "application/json":
            return _refusal(415, "send the ids as application/json")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _refusal(400, "the body is not JSON")
        ids = _ids(body)
        if isinstance(ids, str):
            return _refusal(400, ids)
        record = await forget(*ids)
        log.info("erasure %s recorded over HTTP", record.id)
        return web.json_response(orjson.loads(record.to_json()), status=202)

    return handle


def install(web_app: web.Application, forget: Forget, token_set: bool) -> None:
    web_app.router.add_post(FORGET_PATH, forget_handler(forget, token_set))
