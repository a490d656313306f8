"""The worker's read-only web server: the views (`views`) and the dashboard's static files served
at their paths by the Faust app's web server, and the Prometheus metrics at /metrics.

While Redis is down the counters wait (see `counters.redis_store.apply_with_retry`); queries
that need it answer 503 and say so plainly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.core.config.matching import CompiledConfig
from streams.core.measures.cardinality import BREAKDOWN_CAP
from streams.generations.current import Source
from streams.metrics import Metrics
from streams.ports import AlertReader, CounterReader, ExperimentReader
from streams.web import analysis, headers, hosts, privacy, views
from streams.web import experiments as experiment_views
from streams.web.auth import Access, middleware
from streams.web.views import DASHBOARD_FILES, Answer, dashboard_asset

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response, View

log = logging.getLogger(__name__)
Handler = Callable[..., Awaitable["Response"]]
CurrentView = Callable[[], Awaitable[Source]]
"""The current generation's configuration, counters, alerts and experiments (`generations.current`)."""
REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,  # a Redis Cluster with a node down
    TryAgainError,
    SlotNotCoveredError,
)


def redis_outage_as_503(handler: Handler) -> Handler:
    """While Redis is down the counters wait (see `apply_with_retry`); queries say so plainly."""

    @functools.wraps(handler)
    async def wrapped(web: View, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(web, request, *args, **kwargs)
        except REDIS_DOWN as exc:
            log.warning("query %s: Redis unavailable (%s)", request.url, exc.__class__.__name__)
            return web.json({"error": "Redis is unavailable; counters resume when it is back"}, status=503)

    return wrapped


def register_routes(
    app: faust.App,
    counters: CounterReader,
    alert_reader: AlertReader | None,
    config: CompiledConfig,
    metrics: Metrics,
    experiment_reader: ExperimentReader | None = None,
    access: Access | None = None,
    allowed_hosts: frozenset[str] = hosts.LOOPBACK_NAMES,
    cap: int = BREAKDOWN_CAP,
    forget: privacy.Forget | None = None,
    current: CurrentView | None = None,
    generations: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> None:
    """The routes on the app's web server, behind the Host check (`hosts`), the token (`auth`)
    and with the security headers (`headers`) on every answer."""
    web_app = app.web.web_app
    web_app.middlewares.append(hosts.middleware(allowed_hosts))
    if access is not None and access.enabled:
        web_app.middlewares.append(middleware(access))
    headers.install(web_app)
    if forget is not None:
        privacy.install(web_app, forget, token_set=access is not None and access.web_token is not None)

    async def source() -> tuple[CompiledConfig, CounterReader]:
        """The configuration and counters one request answers from: the current generation's
        (issue 26), resolved once so an answer never mixes two."""
        config, counters, _, _ = await resolved()
        return config, counters

    async def resolved() -> tuple[CompiledConfig, CounterReader, AlertReader | None, ExperimentReader | None]:
        """The current generation's configuration, counters and what its evaluators judged (alerts and
        experiments), resolved once."""
        if current is None:
            return config, counters, alert_reader, experiment_reader
        generation = await current()
        reader = generation.counters if generation.counters is not None else counters
        return generation.config, reader, generation.alerts, generation.experiments

    def answer(web: View, result: Answer) -> Response:
        status, body = result
        return web.json(body, status=status)

    @redis_outage_as_503
    async def funnel(web: View, request: Request, name: str) -> Response:
        config, counters = await source()
        return answer(web, await views.funnel(counters, config, name, dict(request.query), cap))

    @redis_outage_as_503
    async def overview(web: View, request: Request) -> Response:
        config, counters = await source()
        return answer(web, await views.overview(counters, config, dict(request.query), cap))

    @redis_outage_as_503
    async def goals(web: View, request: Request) -> Response:
        config, counters = await source()
        return answer(web, await views.goals(counters, config, dict(request.query), cap))

    @redis_outage_as_503
    async def alerts(web: View, request: Request) -> Response:
        config, _, alert_reader, _ = await resolved()
        return web.json(views.alerts(alert_reader, config))

    @redis_outage_as_503
    async def live(web: View, request: Request) -> Response:
        config, counters, alert_reader, _ = await resolved()
        return answer(web, await views.live(counters, config, alert_reader, dict(request.query), cap))

    @redis_outage_as_503
    async def experiments(web: View, request: Request) -> Response:
        config, _, _, experiment_reader = await resolved()
        return answer(web, experiment_views.experiments(experiment_reader, config, dict(request.query)))

    @redis_outage_as_503
    async def series(web: View, request: Request, name: str) -> Response:
        query = dict(request.query)
        config, counters, alert_reader, _ = await resolved()
        return answer(web, await analysis.series(counters, config, alert_reader, name, query))

    @redis_outage_as_503
    async def progress(web: View, request: Request, name: str) -> Response:
        config, counters = await source()
        return answer(web, await analysis.progress_view(counters, config, name, dict(request.query)))

    @redis_outage_as_503
    async def time_to_convert(web: View, request: Request, name: str) -> Response:
        config, counters = await source()
        return answer(web, await analysis.time_to_convert_view(counters, config, name, dict(request.query)))

    @redis_outage_as_503
    async def channels(web: View, request: Request) -> Response:
        config, counters = await source()
        return answer(web, await analysis.channels(counters, config, dict(request.query)))

    async def dashboard(web: View, request: Request) -> Response:
        return web.html(dashboard_asset("index.html").decode())

    async def asset(web: View, request: Request, name: str) -> Response:
        if name not in DASHBOARD_FILES:
            return web.text("not found", status=404)
        return web.text(dashboard_asset(name).decode(), content_type=DASHBOARD_FILES[name])

    async def prometheus(web: View, request: Request) -> Response:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    async def generations_page(web: View, request: Request) -> Response:
        if generations is None:
            return web.json({"current": 0, "generations": []})
        return web.json(await generations())

    app.page("/generations")(generations_page)
    app.page("/funnels/{name}")(funnel)
    app.page("/funnels/{name}/series")(series)
    app.page("/funnels/{name}/progress")(progress)
    app.page("/funnels/{name}/time-to-convert")(time_to_convert)
    app.page("/channels")(channels)
    app.page("/funnels")(overview)
    app.page("/goals")(goals)
    app.page("/metrics")(prometheus)
    app.page("/alerts")(alerts)
    app.page("/live")(live)
    app.page("/experiments")(experiments)
    app.page("/")(dashboard)
    app.page("/dashboard/{name}")(asset)
