"""The experiments in the alerts service, at its seams: judged beside the alerts from the same
microconversions, published only by the leader (and what a follower judged, once it leads), a
redelivered microconversion counted once, the always-valid p-values in /metrics."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from streams.alerts.service import Alerting
from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.records.outputs import ExperimentUpdate
from streams.metrics import Metrics
from streams.settings import Settings
from tests.alerts.test_service import Recorder
from tests.helpers import experiment_funnels

CONFIG = compile_config(parse_config(experiment_funnels()))
T0 = int(datetime(2024, 3, 4, tzinfo=UTC).timestamp() * 1000)
MINUTE = 60_000


def service(pipeline: Recorder) -> Alerting:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9")
    return Alerting(settings, CONFIG, Metrics(), publisher=pipeline, leader=pipeline)


def micro_stream(seed: int = 1, attempts: int = 1_200) -> list[dict[str, Any]]:
    """Milestones of checkout attempts over 600 minutes: one in ten converts on control, one in
    four on treatment (entry at step 0, purchase at step 4 a few minutes later), time-ordered."""
    rng = random.Random(seed)
    out: list[tuple[float, dict[str, Any]]] = []
    for i in range(attempts):
        at = rng.uniform(0, 600)
        variant = rng.choice(("control", "treatment"))
        steps = [(0, at)]
        if rng.random() < (0.25 if variant == "treatment" else 0.10):
            steps.append((4, at + rng.uniform(1, 20)))
        for step, moment in steps:
            out.append(
                (
                    moment,
                    {
                        "id": f"m-{i}-{step}",
                        "type": "micro",
                        "kind": "milestone",
                        "funnel": "checkout",
                        "step_index": step,
                        "timestamp": datetime.fromtimestamp((T0 + moment * MINUTE) / 1000, UTC).isoformat(),
                        "breakdowns": {"context.platform": "web", "properties.variant": variant},
                    },
                )
            )
    out.sort(key=lambda item: item[0])
    return [output for _, output in out]


async def judge(alerting: Alerting, stream: list[dict[str, Any]], every: int = 50) -> None:
    """As the service's loop does: observe what came, then advance to the watermark (here the
    latest moment seen, less a minute), publishing what changed; at the end, past everything."""
    latest = T0
    for i, output in enumerate(stream, 1):
        alerting.experiment_evaluator.observe(output)
        latest = max(latest, int(datetime.fromisoformat(output["timestamp"]).timestamp() * 1000))
        if i % every == 0:
            await advance(alerting, latest - MINUTE)
    await advance(alerting, T0 + 700 * MINUTE)


async def advance(alerting: Alerting, watermark: int) -> None:
    await alerting._publish_experiments(alerting.experiment_evaluator.advance(watermark))
    alerting._experiment_metrics(watermark)


async def test_only_the_leader_publishes_decision_changes_but_every_worker_knows_them() -> None:
    stream = micro_stream()
    leader, follower = Recorder(True), Recorder(False)
    first, second = service(leader), service(follower)
    await judge(first, stream)
    await judge(second, stream)
    published = [o for o in leader.published if isinstance(o, ExperimentUpdate)]
    assert len(published) >= 3 and follower.published == []
    for alerting in (first, second):
        assert [u.id for u in reversed(alerting.experiment_changes)] == [u.id for u in published]
    assert {v.variant: v.decision for v in published[-1].variants}["treatment"] == "better"
    assert all(u.identity == "cart_button" for u in published), "keyed by the experiment"
    # the follower becomes the leader (the old one died, maybe before sending its last update):
    # what it judged while following goes out now, the same updates with the same ids
    follower.leader = True
    await second._publish_experiments([])
    assert [u.model_dump() for u in follower.published] == [u.model_dump() for u in published]
    await second._publish_experiments([])
    assert len(follower.published) == len(published), "once"


async def test_a_redelivered_microconversion_counts_once() -> None:
    """The same stream with a third of its records repeated, each copy some records after the
    original (a republished run), and some copies after their minute was judged: the same
    decision changes, the same state, ids and all."""
    stream = micro_stream(seed=2)
    rng = random.Random(5)
    redelivered = list(stream)
    for output in rng.sample(stream, len(stream) // 3):
        position = redelivered.index(output) + rng.randrange(1, 400)
        redelivered.insert(min(position, len(redelivered)), dict(output))
    once, twice = service(Recorder(True)), service(Recorder(True))
    await judge(once, stream)
    await judge(twice, redelivered)
    assert [u.model_dump() for u in twice.experiment_changes] == [
        u.model_dump() for u in once.experiment_changes
    ]
    assert twice.experiments() == once.experiments()
    evaluator = twice.experiment_evaluator
    assert evaluator.duplicates > 0 and evaluator.ignored_late > 0, "copies caught both ways"
    assert evaluator.duplicates + evaluator.ignored_late == len(stream) // 3


async def test_the_always_valid_p_value_is_in_the_metrics() -> None:
    alerting = service(Recorder(True))
    await judge(alerting, micro_stream())
    (state,) = alerting.experiments()
    treatment = state.variants[1]
    assert treatment.variant == "treatment" and treatment.p_value is not None and treatment.p_value < 0.05
    text = alerting.metrics.render().decode()
    labels = 'experiment="cart_button",variant="treatment"'
    (line,) = [
        line for line in text.splitlines() if line.startswith(f"conversions_experiment_p_value{{{labels}}}")
    ]
    assert float(line.split()[-1]) == treatment.p_value
    assert 'variant="control"' not in text, "the control has no p-value"
