"""Running the Faust worker for real: topics first, then the app, with clear logs."""

from __future__ import annotations

import asyncio
import logging

import faust

from streams.core.config_loader import load_config
from streams.core.matching import compile_config
from streams.kafka import ensure_topics, source_partitions
from streams.pipeline.app import ConversionsApp
from streams.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Blocks until the worker is stopped (SIGTERM / Ctrl-C)."""
    config = compile_config(load_config(settings.funnels))
    log.info("starting worker %s with settings %s", settings.app_id, settings.redacted())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if settings.create_topics:
        loop.run_until_complete(ensure_topics(settings))
    sources = loop.run_until_complete(source_partitions(settings))
    log.info("event time waits for %d source partitions: %s", len(sources), ", ".join(sources))
    conversions = ConversionsApp(settings, config, sources)
    worker = faust.Worker(
        conversions.app,
        loop=loop,
        loglevel=settings.log_level.lower(),
        quiet=True,
        override_logging=False,
    )
    worker.execute_from_commandline()
