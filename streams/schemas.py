"""JSON Schemas generated from the pydantic models: the authoritative form of the contract, and
beside them a copy of the example configuration shipped in the package (`streams.examples`).

A development command: the schemas live in the repository's `schemas/`, not in the package."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel, TypeAdapter

from streams.core.config import FunnelConfig
from streams.core.events import ClickEvent
from streams.core.outputs import OUTPUT_MODELS, AnyOutput
from streams.examples import FUNNELS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLE = "examples/funnels.yaml"


def generated() -> dict[str, bytes]:
    """File name -> schema bytes, deterministic."""
    models: dict[str, type[BaseModel]] = {
        "clickstream-event.json": ClickEvent,
        "funnel-config.json": FunnelConfig,
    }
    models.update({f"output-{kind}.json": model for kind, model in OUTPUT_MODELS.items()})
    files = {
        name: model.model_json_schema(
            mode="validation" if name.startswith(("click", "funnel")) else "serialization"
        )
        for name, model in models.items()
    }
    files["output-any.json"] = TypeAdapter(AnyOutput).json_schema(mode="serialization")
    out = {
        name: orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        for name, schema in files.items()
    }
    out[EXAMPLE] = FUNNELS.read_bytes()  # a copy: the package's is the one to edit
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    written = []
    for name, content in generated().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            written.append(path)
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that differ from (or are missing next to) the models."""
    return [
        name
        for name, content in generated().items()
        if not (directory / name).exists() or (directory / name).read_bytes() != content
    ]
