from __future__ import annotations

import pytest

from streams.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("CONVERSIONS_", "KAFKA_", "REDIS_")):
            monkeypatch.delenv(name)


def test_defaults_are_local_and_safe() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap_servers is None and settings.redis_url is None
    assert settings.web_host == "127.0.0.1"
    assert settings.processing_guarantee == "at_least_once"
    assert settings.output_topics["micro"] == "conversions.micro"


def test_conventional_names_prefixed_names_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("REDIS_URL", "redis://:secret@r:6379/0")
    monkeypatch.setenv("CONVERSIONS_TOPIC_CLICKSTREAM", "web.events, app.events")
    monkeypatch.setenv("CONVERSIONS_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("CONVERSIONS_PARTITIONS", "12")
    settings = load_settings(partitions=24)
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.topic_clickstream == ["web.events", "app.events"]
    assert settings.partitions == 24
    assert settings.output_topics["dropoff"] == "prod.funnel.dropoffs"
    assert "secret" not in str(settings.redacted()) and "secret" not in repr(settings)


def test_unknown_setting_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERSIONS_PARTITONS", "3")
    with pytest.raises(
        SettingsError,
        match=r"CONVERSIONS_PARTITONS: unknown setting \(did you mean CONVERSIONS_PARTITIONS\?\)",
    ):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CONVERSIONS_PARTITIONS", "lots", "partitions: Input should be a valid integer"),
        ("CONVERSIONS_PARTITIONS", "0", "greater than or equal to 1"),
        ("KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON", "KAFKA_SECURITY_PROTOCOL"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "KAFKA_SASL_MECHANISM is required"),
        ("CONVERSIONS_APP_ID", "has spaces", "app_id"),
        ("CONVERSIONS_WEB_PORT", "70000", "web_port"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        load_settings()
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in str(settings.redacted())


def test_kafka_client_options_carry_security(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.kafka import kafka_client_options

    settings = Settings(
        kafka_bootstrap_servers="k:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_username"] == "u" and options["sasl_plain_password"] == "p"
    assert options["ssl_context"] is not None


def test_input_format_is_checked_against_the_clickstream_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERSIONS_TOPIC_CLICKSTREAM", "clickstream,snowplow-enriched")
    monkeypatch.setenv("CONVERSIONS_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("CONVERSIONS_INPUT_FORMAT", "contract,snowplow-enriched=snowplow")
    settings = load_settings()
    # by the full topic names ingest sees on its messages
    assert settings.input_formats == {None: "contract", "prod.snowplow-enriched": "snowplow"}
    assert load_settings(input_format="auto").input_formats == {None: "auto"}
    monkeypatch.setenv("CONVERSIONS_INPUT_FORMAT", "clikstream=segment")
    with pytest.raises(
        SettingsError, match=r"CONVERSIONS_INPUT_FORMAT: 'clikstream=segment': 'clikstream' is not"
    ):
        load_settings()
    monkeypatch.setenv("CONVERSIONS_INPUT_FORMAT", "segmnet")
    with pytest.raises(SettingsError, match=r"CONVERSIONS_INPUT_FORMAT: .*one of auto, contract, segment"):
        load_settings()


def test_collector_settings_default_to_off_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert not settings.collector_enabled
    assert (settings.collector_host, settings.collector_port) == ("127.0.0.1", 6067)
    assert settings.collector_write_keys == [] and settings.collector_allowed_origins == [], (
        "no browser origin unless listed"
    )
    assert settings.collector_target == "clickstream"
    monkeypatch.setenv("CONVERSIONS_TOPIC_CLICKSTREAM", "web,app")
    monkeypatch.setenv("CONVERSIONS_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_ENABLED", "true")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_WRITE_KEYS", "wk_live_one, wk_live_two")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_ALLOWED_ORIGINS", "https://shop.example,https://m.shop.example")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_HOST", "0.0.0.0")
    settings = load_settings()
    assert settings.collector_target == "prod.web"
    assert [k.get_secret_value() for k in settings.collector_write_keys] == ["wk_live_one", "wk_live_two"]
    assert settings.collector_allowed_origins == ["https://shop.example", "https://m.shop.example"]
    logged = str(settings.redacted()) + repr(settings)
    assert "wk_live" not in logged and settings.redacted()["collector_write_keys"] == ["**********"] * 2
    assert load_settings(collector_topic="app").collector_target == "prod.app"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "collector.internal", "::"])
def test_collector_beyond_loopback_needs_write_keys(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_ENABLED", "true")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_HOST", host)
    with pytest.raises(SettingsError, match=r"CONVERSIONS_COLLECTOR_WRITE_KEYS: the collector listens on"):
        load_settings()
    assert load_settings(collector_write_keys="k").collector_host == host
    assert not load_settings(collector_enabled=False).collector_enabled  # off: nothing to refuse


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_collector_on_loopback_may_run_without_write_keys(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_ENABLED", "true")
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_HOST", host)
    assert load_settings().collector_write_keys == []


def test_collector_topic_must_be_read_as_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVERSIONS_COLLECTOR_ENABLED", "true")
    with pytest.raises(
        SettingsError, match=r"CONVERSIONS_COLLECTOR_TOPIC: 'clikstream' is not a clickstream"
    ):
        load_settings(collector_topic="clikstream")
    with pytest.raises(SettingsError, match=r"CONVERSIONS_INPUT_FORMAT: the collector produces Segment"):
        load_settings(input_format="snowplow")
    assert load_settings(input_format="clickstream=segment").input_formats["clickstream"] == "segment"
