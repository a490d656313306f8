"""Every output the engine emits is valid against its model, and `to_json` writes what the
model's own JSON serialization writes.

The engine builds most outputs without validating them again (`outputs.build`) and serializes
them from their fields (`OutputEvent.to_json`): the models stay the contract, so this checks,
over a simulated run that emits every kind of output (milestones and secondary actions, goals,
drop-offs, stalls, carried attempts, sessions, identity links, dead letters, alerts and experiment updates),
that each one would have passed validation and reads back to the same bytes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.records.outputs import OUTPUT_MODELS, Dropoff, MicroConversion, OutputEvent, build
from streams.core.records.trusted import assemble, given
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Incident, Simulator, VariantSplit

# the example funnels, with the alert made sensitive enough to fire on two simulated days
FUNNELS = (
    DEFAULT_FUNNELS.read_text()
    .replace("min_entered: 50", "min_entered: 5")
    .replace("    window: 15m\n    baseline: 24h", "    window: 3h\n    baseline: 12h")
)
START = datetime(2024, 3, 11, tzinfo=UTC)


def outputs() -> list[OutputEvent]:
    sim = Simulator(
        seed=7,
        users=1_000,
        days=2,
        bad_rate=0.01,
        split=VariantSplit(lift=1.5),
        incident=Incident(
            start=START + timedelta(hours=20), end=START + timedelta(hours=34), payment_rate=0.1
        ),
    )
    lines = list(sim.lines())
    cut = len(lines) * 2 // 3
    run = OfflineRun(compile_config(parse_config(FUNNELS)), partitions=3)
    first = list(run.run(lines[:cut]))
    # then a step renamed: the attempts in flight are carried over to the new version
    renamed = compile_config(parse_config(FUNNELS.replace("{name: shipping,", "{name: ship,")))
    known = [f.definition for f in run.config.funnels if f.definition is not None]
    after = OfflineRun(renamed, partitions=3, store=run.store)
    after.engine.machine.remember(known)
    return [*first, *after.run(lines[cut:]), *after.flush()]


def test_every_emitted_output_validates_against_its_model_and_serializes_as_it_would() -> None:
    emitted = outputs()
    kinds = Counter(o.type for o in emitted)
    assert set(kinds) == set(OUTPUT_MODELS), kinds
    assert {o.kind for o in emitted if isinstance(o, MicroConversion)} == {"milestone", "secondary"}
    for output in emitted:
        model = OUTPUT_MODELS[output.type]
        assert type(output) is model
        raw = output.to_json()
        again = model.model_validate_json(raw)  # extra="forbid": no unknown field, none missing
        assert again == output, output
        assert again.to_json() == raw
        assert output.to_line() == raw + b"\n"  # offline mode's NDJSON line
        # the bytes pydantic's own JSON mode gives, through the dict the engine no longer builds
        assert orjson.dumps(output.model_dump(mode="json")) == raw


def test_build_fills_defaults_in_declaration_order_and_a_missing_field_cannot_be_serialized() -> None:
    at = datetime(2024, 3, 11, 10, tzinfo=UTC)
    fields = {"id": "i", "anonymous_id": "a", "timestamp": at, "kind": "secondary", "name": "n"}
    built = build(MicroConversion, **fields, event="e", event_id="x")
    assert built == MicroConversion(**fields, event="e", event_id="x")
    assert list(orjson.loads(built.to_json())) == list(MicroConversion.model_fields)
    with pytest.raises(TypeError, match="not JSON serializable"):
        build(MicroConversion, **fields).to_json()  # no event, no event_id


def test_assemble_from_every_field_in_order_is_what_build_gives_from_the_ones_set() -> None:
    at = datetime(2024, 3, 11, 10, tzinfo=UTC)
    values = {
        "id": "i",
        "reason": "session_ended",
        "time_in_funnel_ms": 5,
        "anonymous_id": "a",
        "timestamp": at,
        "funnel": "f",
        "step": "s",
        "step_index": 0,
        "started_at": at,
        "breakdowns": {"channel": "direct"},
    }
    built = build(Dropoff, **values)
    fields_set = given(Dropoff, "type", "user_id", "session_id", "funnel_version")
    made = assemble(Dropoff, dict(built.__dict__), fields_set)
    assert made == built == Dropoff(**values)
    assert made.to_json() == built.to_json()
    assert made.model_fields_set == built.model_fields_set == set(values)
    with pytest.raises(ValueError, match="no field"):
        given(Dropoff, "kind")
