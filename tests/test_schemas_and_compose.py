"""The committed contract files: JSON Schemas in step with the models, a sound compose file."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import yaml

from streams import schemas
from streams.core.records.outputs import OUTPUT_MODELS
from streams.settings import Settings
from tests.helpers import event

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schemas_match_the_models() -> None:
    assert schemas.drift() == [], "run `conversions schemas` and commit the result"


def test_schemas_validate_real_documents() -> None:
    event_schema = orjson.loads((ROOT / "schemas" / "clickstream-event.json").read_bytes())
    for timestamp in ("2024-03-13T10:21:14Z", "2024-03-13 10:21:14", 1710325274000):
        jsonschema.validate({**event("page_view", "10:00"), "timestamp": timestamp}, event_schema)
    config_schema = orjson.loads((ROOT / "schemas" / "funnel-config.json").read_bytes())
    jsonschema.validate(
        yaml.safe_load((ROOT / "schemas" / "examples" / "funnels.yaml").read_text()), config_schema
    )
    assert {f"output-{kind}.json" for kind in OUTPUT_MODELS} <= {p.name for p in (ROOT / "schemas").iterdir()}


def test_compose_brings_up_kraft_kafka_persistent_redis_and_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in kafka
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert any(
        v["target"] if isinstance(v, dict) else v.endswith(":/data") for v in services["redis"]["volumes"]
    )
    assert services["topics"]["command"] == ["topics"]
    known = {f"CONVERSIONS_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "worker-2"):
        worker = services[name]
        assert worker["build"] == "." and (ROOT / "Dockerfile").exists()
        env = worker["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["REDIS_URL"].startswith(
            "redis://redis:"
        )
        assert {k for k in env if k.startswith("CONVERSIONS_")} <= known, (
            "compose names a setting that does not exist"
        )
        assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["ports"] == ["127.0.0.1:6066:6066"]
    # the counters are a service of their own, the workers' are off
    assert services["counters"]["command"][0] == "counters"
    assert services["counters"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert all(
        services[name]["environment"]["CONVERSIONS_COUNTERS_ENABLED"] == "false"
        for name in ("worker", "worker-2")
    )
