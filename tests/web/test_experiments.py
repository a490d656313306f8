"""`GET /experiments` as a plain function over an `ExperimentReader`: here the alerts service
itself, judging a stream of microconversions with nothing running (no broker, no web server)."""

from __future__ import annotations

import orjson

from streams.alerts.service import Alerting
from streams.web.experiments import experiments
from tests.alerts.test_experiments_service import CONFIG, judge, micro_stream, service
from tests.alerts.test_service import Recorder


async def judged() -> Alerting:
    alerting = service(Recorder(True))
    await judge(alerting, micro_stream())
    return alerting


async def test_every_experiment_with_its_variants_and_decision_changes() -> None:
    reader = await judged()
    status, body = experiments(reader, CONFIG, {})
    assert status == 200
    assert orjson.loads(orjson.dumps(body)) == body, "plain JSON"
    assert body["watermark_ms"] == reader.watermark()
    cart, signup = body["experiments"]
    assert [cart["name"], signup["name"]] == ["cart_button", "signup_copy"], "in configuration order"
    (state,) = reader.experiments()
    assert cart["updated_at"] == state.timestamp.isoformat()
    assert cart["variants"] == [v.model_dump(mode="json") for v in state.variants]
    assert [v["variant"] for v in cart["variants"]] == ["control", "treatment"]
    treatment = cart["variants"][1]
    assert treatment["decision"] == "better" and treatment["p_value"] < 0.05
    assert treatment["difference_low"] > 0 and treatment["lift"] > 0
    assert treatment["steps"]["product_view"] == treatment["entered"]
    assert (cart["funnel"], cart["step"], cart["control"], cart["variant_field"]) == (
        "checkout",
        "purchase",
        "control",
        "properties.variant",
    )
    assert cart["steps"] == ["product_view", "add_to_cart", "shipping", "payment", "purchase"]
    assert (cart["alpha"], cart["mixing_sd"], cart["min_entered"]) == (0.05, 0.02, 30)
    changes = cart["changes"]
    assert [c["id"] for c in changes] == [u.id for u in reader.experiment_changes], "newest first"
    assert changes[0]["decisions"] == {"control": "control", "treatment": "better"}
    assert changes[0]["changed"] == ["treatment"]
    assert signup == {
        **signup,
        "updated_at": None,
        "variants": [],
        "changes": [],
        "unassigned": 0,
        "funnel": "newsletter",
    }, "configured, no attempt yet: listed as waiting, not missing"


async def test_one_experiment_by_name_or_those_of_a_funnel() -> None:
    reader = await judged()
    status, body = experiments(reader, CONFIG, {"name": "signup_copy"})
    assert status == 200 and [e["name"] for e in body["experiments"]] == ["signup_copy"]
    status, body = experiments(reader, CONFIG, {"funnel": "checkout"})
    assert status == 200 and [e["name"] for e in body["experiments"]] == ["cart_button"]
    status, body = experiments(reader, CONFIG, {"funnel": "newsletter", "name": "cart_button"})
    assert status == 200 and body["experiments"] == []


async def test_clear_refusals() -> None:
    reader = await judged()
    assert experiments(reader, CONFIG, {"name": "nope"}) == (
        404,
        {"error": "no experiment 'nope'", "experiments": ["cart_button", "signup_copy"]},
    )
    assert experiments(reader, CONFIG, {"funnel": "nope"}) == (
        404,
        {"error": "no funnel 'nope'", "funnels": ["checkout", "newsletter"]},
    )
    assert experiments(reader, CONFIG, {"window": "1h"}) == (
        400,
        {"error": "unknown parameter 'window'", "parameters": ["name", "funnel"]},
    )


def test_without_an_evaluator_the_configuration_still_shows() -> None:
    status, body = experiments(None, CONFIG, {})
    assert status == 200 and body["watermark_ms"] is None
    assert [(e["name"], e["variants"], e["updated_at"]) for e in body["experiments"]] == [
        ("cart_button", [], None),
        ("signup_copy", [], None),
    ]
