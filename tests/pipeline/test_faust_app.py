"""How the settings reach the Faust app and the consumer Faust builds (no broker needed: nothing
here connects)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.pipeline.app import ConversionsApp
from streams.pipeline.stores import JourneyMemoryStore
from streams.pipeline.transport import Transport
from streams.settings import Settings


def conversions_app(tmp_path: Path, **settings: object) -> ConversionsApp:
    configured = Settings(kafka_bootstrap_servers="127.0.0.1:9", data_dir=tmp_path, **settings)  # type: ignore[arg-type]
    config = compile_config(load_config(configured.funnels))
    return ConversionsApp(configured, config, sources=["clickstream:0"])


async def test_the_worker_consumer_waits_on_fetches_as_long_as_the_settings_say(tmp_path: Path) -> None:
    app = conversions_app(tmp_path, fetch_max_wait_ms=42).app
    assert isinstance(app.transport, Transport)
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)  # what Faust starts
    try:
        assert consumer._fetch_max_wait_ms == 42
        assert consumer._client._bootstrap_servers == ["127.0.0.1:9"]
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the consumer thread's own loop, never started here


async def test_standby_replicas_and_the_journeys_store_come_from_the_settings(tmp_path: Path) -> None:
    conversions = conversions_app(tmp_path, table_standby_replicas=2)
    assert conversions.app.conf.table_standby_replicas == 2
    assert isinstance(conversions.journeys_table.data, JourneyMemoryStore)


def test_the_state_version_of_a_rolling_upgrade_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations/upgrading.md: CONVERSIONS_JOURNEY_STATE_VERSION=4 while older workers run."""
    from streams.core.journeys.journey import STATE_VERSION, Journey, write_state_version

    journey = Journey(user_id=None, anonymous_id="a", last_ts=1_700_000_000_000)
    try:
        monkeypatch.setenv("CONVERSIONS_JOURNEY_STATE_VERSION", "4")
        conversions_app(tmp_path)
        assert Journey.loads(journey.dumps()) is not None and journey.dumps().startswith(b"[4,")
        monkeypatch.setenv("CONVERSIONS_JOURNEY_STATE_VERSION", "5")
        conversions_app(tmp_path / "next")
        assert journey.dumps().startswith(f"[{STATE_VERSION},".encode())
        monkeypatch.setenv("CONVERSIONS_JOURNEY_STATE_VERSION", "3")
        with pytest.raises(ValueError, match="journey_state_version"):
            conversions_app(tmp_path / "older")
    finally:
        write_state_version(STATE_VERSION)
