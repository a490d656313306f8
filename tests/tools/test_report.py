"""`conversions report --experiment`: the experiment judged again from the counters' minutes
equals the evaluator that watched the microconversions (offline mode here), decision change by
decision change; the table and JSON show it; the command reads the real Redis store."""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner
from rich.console import Console

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.config.matching import CompiledConfig, compile_config
from streams.core.input.event import to_epoch_ms
from streams.core.measures.counters import increments
from streams.core.measures.experiments import describe
from streams.core.records.outputs import ExperimentUpdate, OutputEvent
from streams.counters.base import CountedMessage
from streams.counters.memory_store import MemoryCounterStore
from streams.counters.redis_store import CounterStore
from streams.offline.run import OfflineRun
from streams.tools.infra import LocalInfra
from streams.tools.report import ExperimentReport, experiment_from_counters, render_experiment
from streams.tools.simulate import Simulator, VariantSplit
from tests.helpers import experiment_funnels

START = datetime(2024, 3, 1, tzinfo=UTC)
CONFIG = compile_config(parse_config(experiment_funnels()))


@functools.cache
def offline(seed: int) -> tuple[OfflineRun, list[OutputEvent]]:
    """Three days of shop traffic, the treatment's add-to-cart rate 1.6 times the control's,
    and one event a day later that lets offline mode judge every minute of it."""
    sim = Simulator(
        seed=seed, users=800, start=START, days=3, split=VariantSplit(step="add_to_cart", lift=1.6)
    )
    closing = {"event_id": "close", "event": "tick", "user_id": "closer", "timestamp": "2024-03-05T00:00:00Z"}
    run = OfflineRun(CONFIG, partitions=4)
    return run, list(run.run([*sim.lines(), orjson.dumps(closing)]))


async def counted(outputs: list[OutputEvent], config: CompiledConfig, bucket_ms: int) -> MemoryCounterStore:
    """The outputs applied to the counters as the counters consumer applies them: per shard,
    in order, each with its increments (every output twice: the copies change nothing)."""
    store = MemoryCounterStore(app_id="report", shards=4, bucket_ms=bucket_ms)
    offsets: dict[int, int] = defaultdict(int)
    for copy in range(2):
        for output in outputs:
            shard = zlib.crc32((output.identity or "").encode()) % 4
            payload = orjson.loads(output.to_json())
            ops = increments(payload, config, bucket_ms)
            offsets[shard] += 1
            await store.apply(shard, [CountedMessage(f"t{copy}", offsets[shard], output.id, ops)])
    return store


def dumps(updates: list[ExperimentUpdate]) -> list[dict[str, object]]:
    return [u.model_dump(mode="json") for u in updates]


@pytest.mark.parametrize("bucket_s", [60, 20])
async def test_the_counters_replay_equals_the_live_evaluator(bucket_s: int) -> None:
    run, outputs = offline(seed=3)
    live = [o for o in outputs if isinstance(o, ExperimentUpdate) and o.experiment == "cart_button"]
    assert [u.changed for u in live][-1] == ["treatment"]
    assert {v.variant: v.decision for v in live[-1].variants} == {"control": "control", "treatment": "better"}
    store = await counted(outputs, CONFIG, bucket_s * 1000)
    start_ms, end_ms = to_epoch_ms(START), to_epoch_ms(START + timedelta(days=5))
    report = await experiment_from_counters(store, CONFIG, "cart_button", start_ms, end_ms)

    assert dumps(report.changes) == dumps(live), "the same decision changes, figures and ids"
    (now,) = [s for s in run.experiments.snapshot() if s.experiment == "cart_button"]
    assert report.state is not None
    assert report.state.variants == now.variants, "the same state now: counts, p-value, sequence"
    assert (report.state.timestamp, report.state.unassigned) == (now.timestamp, now.unassigned)
    treatment = report.state.variants[1]
    assert treatment.steps["product_view"] == treatment.entered > 300
    assert treatment.p_value is not None and treatment.p_value < 0.05


async def test_a_range_cut_after_the_start_is_a_different_test_and_an_empty_one_says_so() -> None:
    """The sequential test is path-dependent: replayed from the second day it looks at fewer
    minutes (and counts conversions of attempts that entered before the range), so it is not
    the live evaluator's; a range with no attempt has no state."""
    run, outputs = offline(seed=3)
    store = await counted(outputs, CONFIG, 60_000)
    day2 = to_epoch_ms(START + timedelta(days=1))
    cut = await experiment_from_counters(store, CONFIG, "cart_button", day2, day2 + 2 * 86_400_000)
    (now,) = [s for s in run.experiments.snapshot() if s.experiment == "cart_button"]
    assert cut.state is not None
    assert cut.state.variants[1].entered < now.variants[1].entered
    empty = await experiment_from_counters(store, CONFIG, "signup_copy", to_epoch_ms(START), day2)
    assert empty.state is None and empty.changes == []
    assert empty.as_dict()["variants"] == [] and empty.as_dict()["updated_at"] is None
    assert "no attempt" in text(empty)


async def test_table_and_json_show_each_variant_and_the_decision() -> None:
    _, outputs = offline(seed=3)
    store = await counted(outputs, CONFIG, 60_000)
    start_ms, end_ms = to_epoch_ms(START), to_epoch_ms(START + timedelta(days=5))
    report = await experiment_from_counters(store, CONFIG, "cart_button", start_ms, end_ms)
    assert report.state is not None
    body = report.as_dict()
    experiment = CONFIG.source.experiments[0]
    assert body == {
        **describe(CONFIG, experiment, report.state, report.changes),
        "start_ms": start_ms,
        "end_ms": end_ms,
    }
    assert orjson.loads(orjson.dumps(body)) == body, "plain JSON"
    assert body["step"] == "purchase" and body["steps"][0] == "product_view"
    treatment_decisions = (c["decisions"].get("treatment") for c in body["changes"])
    assert [d for d, _ in itertools.groupby(treatment_decisions) if d] == [
        "waiting",
        "inconclusive",
        "better",
    ]
    shown = text(report)
    control, treatment = report.state.variants
    assert treatment.p_value is not None and treatment.lift is not None
    for needle in (
        "cart_button",
        "better",
        "control",
        f"{treatment.lift:+.1%}",
        f"{treatment.p_value:.3g}",
        str(treatment.steps["add_to_cart"]),
        str(control.entered),
    ):
        assert needle in shown, needle


def text(report: ExperimentReport) -> str:
    console = Console(record=True, width=240)
    console.print(render_experiment(report))
    return console.export_text()


def test_the_command_refuses_what_it_cannot_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(experiment_funnels())
    monkeypatch.setenv("CONVERSIONS_FUNNELS", str(funnels))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # refused before any connection
    runner = CliRunner()
    for args, message in (
        (["--experiment", "nope"], "no experiment 'nope'; the configuration has: cart_button, signup_copy"),
        (["checkout", "--experiment", "cart_button"], "leave out the funnel and --by"),
        (["--experiment", "cart_button", "--window", "1x"], "invalid duration"),
        ([], "name a funnel, or an experiment with --experiment NAME"),
    ):
        result = runner.invoke(main, ["report", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


async def test_the_command_reads_the_redis_counters(
    infra: LocalInfra, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`conversions report --experiment cart_button` over the real Redis store: by default all
    the counters hold, the same variants and decision changes as the in-memory replay."""
    _, outputs = offline(seed=3)
    memory = await counted(outputs, CONFIG, 60_000)
    start_ms, end_ms = to_epoch_ms(START), to_epoch_ms(START + timedelta(days=5))
    expected = (await experiment_from_counters(memory, CONFIG, "cart_button", start_ms, end_ms)).as_dict()
    app_id = f"r{uuid.uuid4().hex[:8]}"
    client = aioredis.from_url(infra.redis_url)
    store = CounterStore(client, app_id=app_id, shards=4, bucket_ms=60_000, ttl_s=3_600)
    by_shard: dict[int, list[CountedMessage]] = defaultdict(list)
    for offset, output in enumerate(outputs):
        shard = zlib.crc32((output.identity or "").encode()) % 4
        ops = increments(orjson.loads(output.to_json()), CONFIG, 60_000)
        by_shard[shard].append(CountedMessage("t", offset, output.id, ops))
    for shard, messages in by_shard.items():
        await store.apply(shard, messages)
    await client.aclose()
    funnels = tmp_path / "funnels.yaml"
    funnels.write_text(experiment_funnels())
    for name, value in {
        "CONVERSIONS_FUNNELS": str(funnels),
        "REDIS_URL": infra.redis_url,
        "CONVERSIONS_APP_ID": app_id,
        "CONVERSIONS_PARTITIONS": "4",
    }.items():
        monkeypatch.setenv(name, value)
    command = ["report", "--experiment", "cart_button"]
    result = await asyncio.to_thread(CliRunner().invoke, main, [*command, "--json"])
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.output)
    assert body["end_ms"] - body["start_ms"] == 8 * 86_400_000, "all the counters hold (their TTL)"
    for key in ("variants", "changes", "updated_at", "unassigned"):
        assert body[key] == expected[key], key
    table = await asyncio.to_thread(CliRunner(env={"COLUMNS": "220"}).invoke, main, command)
    assert table.exit_code == 0 and "better" in table.output and "p (always valid)" in table.output


async def test_a_report_before_anything_is_counted_says_so(
    infra: LocalInfra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found following the Segment tutorial: a report asked for before the first outputs were
    counted printed an empty table dated 1969-12-31 23:00 .. 1970-01-01 00:00."""
    monkeypatch.setenv("REDIS_URL", infra.redis_url)
    monkeypatch.setenv("CONVERSIONS_APP_ID", f"empty{uuid.uuid4().hex[:8]}")
    monkeypatch.delenv("CONVERSIONS_FUNNELS", raising=False)
    for command in (["report", "checkout"], ["report", "--experiment", "one_page_checkout"]):
        result = await asyncio.to_thread(CliRunner().invoke, main, command)
        assert result.exit_code == 2, result.output
        assert "nothing counted yet" in result.output and "1970" not in result.output
