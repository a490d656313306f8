"""Client-chosen values are bounded (streams/core/measures/cardinality.py): the top values and `(other)`
in answers, the first values and `other` in state, alerts and experiments, one cap for all."""

from __future__ import annotations

from datetime import timedelta

from streams.core.measures.alerts import AlertEvaluator
from streams.core.measures.cardinality import OTHER, Admitted, fold_by_dimension, fold_fields, top_values
from streams.core.measures.experiments import MINUTE_MS as EXPERIMENT_MINUTE_MS
from streams.core.measures.experiments import ExperimentEvaluator
from streams.settings import Settings
from tests.core.measures.test_alerts import CONFIG as ALERTS
from tests.core.measures.test_alerts import T0, milestones
from tests.core.measures.test_experiments import CONFIG as EXPERIMENTS
from tests.core.measures.test_experiments import T0 as EXPERIMENTS_T0
from tests.core.measures.test_experiments import milestone


def test_the_top_values_are_kept_and_the_rest_summed() -> None:
    counts = {"b": 5.0, "a": 5.0, "c": 9.0, "d": 1.0}
    assert top_values(counts, 2) == (["c", "a"], ["b", "d"]), "largest first, ties by name"
    assert top_values(counts, 10) == (["c", "a", "b", "d"], [])
    fields = {"e:0": 20.0, "e:0|src=b": 5.0, "e:1|src=b": 2.0, "e:0|src=d": 1.0, "e:0|src=a": 5.0}
    assert fold_fields(fields, "src", {"b", "d"}) == {f"e:0|src={OTHER}": 6.0, f"e:1|src={OTHER}": 2.0}
    by = {"src=a": 3, "src=b": 2, "src=c": 1, "platform=web": 7}
    assert fold_by_dimension(by, 1) == {"src=a": 3, f"src={OTHER}": 3, "platform=web": 7}


def test_admitted_keeps_the_first_values_then_other() -> None:
    labels: Admitted[str] = Admitted(2, "other")
    assert [labels(v) for v in ("x", "y", "z", "x", "w", "y")] == ["x", "y", "other", "x", "other", "y"]
    assert len(labels) == 2


def test_one_setting_caps_every_client_chosen_value() -> None:
    assert Settings().breakdown_cap == 50
    assert Settings(breakdown_cap=7).breakdown_cap == 7


def test_alert_by_values_past_the_cap_are_judged_together_as_other() -> None:
    """10,000 distinct platforms: the evaluator keeps cells for the first `cap` and `(other)`,
    and no alert names more values than that."""
    evaluator = AlertEvaluator(ALERTS, by_cap=20)
    for minute in range(3):
        moment = T0 + timedelta(minutes=minute)
        for i in range(10_000):
            for output in milestones(moment, 1, 0, platform=f"p{i}"):
                evaluator.observe(output)
    alerts = evaluator.advance(int((T0 + timedelta(hours=2)).timestamp() * 1000))
    judged = evaluator.rule_counts(0)
    assert len(judged) <= 21 and (OTHER,) in judged
    assert {a.by["context.platform"] for a in alerts} <= {f"p{i}" for i in range(10_000)} | {OTHER}
    assert len({a.by["context.platform"] for a in alerts}) <= 21


def test_experiment_variants_use_the_same_cap() -> None:
    evaluator = ExperimentEvaluator(EXPERIMENTS, max_variants=5)
    evaluator.observe(milestone(5, 0, "A"))
    for i in range(200):
        evaluator.observe(milestone(5, 0, f"v{i:03d}"))
    (update,) = evaluator.advance(EXPERIMENTS_T0 + 6 * EXPERIMENT_MINUTE_MS)
    assert len(update.variants) == 5 and update.variants[0].variant == "A"
    assert update.unassigned == 200 - 4
