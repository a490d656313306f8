"""The HTTP API the docs describe (schemas/openapi.yaml, and docs/reference/http-api.md from it)
is the API the servers have: the routes the worker's web server and the collector's aiohttp
application really register."""

from __future__ import annotations

import faust

from streams import schemas
from streams.collector.server import Collector, collector_config
from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.records.outputs import Erasure
from streams.counters.memory_store import MemoryCounterStore
from streams.metrics import Metrics
from streams.settings import DEFAULT_FUNNELS, Settings
from streams.web.auth import LOGIN_PATH, LOGOUT_PATH
from streams.web.routes import register_routes


def documented(server: str) -> set[tuple[str, str]]:
    return {(method.upper(), path) for s, method, path, *_ in schemas.HTTP_ROUTES if s == server}


def registered(router_routes: object) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)  # type: ignore[attr-defined]
        for route in router_routes  # type: ignore[attr-defined]
        if route.method != "HEAD"  # aiohttp adds HEAD beside every GET
    }


async def _never_called(user_id: str | None, anonymous_id: str | None) -> Erasure:
    raise AssertionError("only the routes are listed here")


def test_the_workers_routes_are_the_documented_ones() -> None:
    app = faust.App("docs-routes", broker="kafka://127.0.0.1:1", web_enabled=True)
    config = compile_config(load_config(DEFAULT_FUNNELS))
    store = MemoryCounterStore(app_id="docs-routes", shards=1, bucket_ms=60_000)
    register_routes(app, store, None, config, Metrics(), forget=_never_called)
    routes = registered(app.web.web_app.router.routes())
    # /login and /logout are answered by the access middleware in front of every route
    # (streams/web/auth.py)
    routes |= {("GET", LOGIN_PATH), ("POST", LOGIN_PATH), ("GET", LOGOUT_PATH), ("POST", LOGOUT_PATH)}
    assert routes == documented("worker")


def test_the_collectors_routes_are_the_documented_ones() -> None:
    collector = Collector(collector_config(Settings()), lambda: None)  # type: ignore[arg-type, return-value]
    assert registered(collector.application().router.routes()) == documented("collector")


def test_the_openapi_document_is_committed_as_generated() -> None:
    assert schemas.OPENAPI not in schemas.drift()
