"""`conversions process --workers N`: the outputs of one process, as a multiset, in one order.

The reference is offline mode itself (`OfflineRun`, one process, four partitions), sorted the
way the workers' merge sorts. The inputs are the simulated shop with identity stitching (anonymous
browsing, sign-in at checkout, backend orders with the user id alone, second devices), malformed
lines, batch lines that mix people, blank lines, an anonymous id that a second user tries to
claim (a refused link), alerts and an experiment that judge every microconversion; and the same
input with its lines shuffled, so that event time goes back and forth (late events, dead letters
stamped with the file's event time, deadlines that fire between a person's events)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.core.config.loader import parse_config
from streams.core.config.matching import compile_config
from streams.core.input.audience import EnrichmentSpec
from streams.core.journeys.identity import IdentityRules
from streams.offline.parallel import (
    Job,
    _fewer_runs,
    _Runs,
    line_keys,
    persons,
    process_file,
    read_run,
    run_parallel,
)
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.simulate import Incident, Simulator, VariantSplit

FUNNELS = (
    DEFAULT_FUNNELS.read_text()
    .replace("min_entered: 50", "min_entered: 5")
    .replace("    window: 15m\n    baseline: 24h", "    window: 3h\n    baseline: 12h")
)
CONFIG = compile_config(parse_config(FUNNELS))
START = datetime(2024, 3, 11, tzinfo=UTC)


def shop_lines(seed: int = 3) -> list[bytes]:
    sim = Simulator(
        seed=seed,
        users=400,
        days=2,
        bad_rate=0.02,
        split=VariantSplit(lift=1.5),
        incident=Incident(
            start=START + timedelta(hours=20), end=START + timedelta(hours=34), payment_rate=0.1
        ),
    )
    lines = [line.rstrip(b"\n") for line in sim.lines()]
    rng = random.Random(seed)
    out: list[bytes] = []
    i = 0
    while i < len(lines):  # some lines become batches of the next few events, whoever they are
        if rng.random() < 0.1:
            size = rng.randint(2, 6)
            batch = [event for x in lines[i : i + size] if isinstance(event := _object(x), dict)]
            out.append(orjson.dumps(batch) if batch else lines[i])
            i += size
        else:
            out.append(lines[i])
            i += 1
        if rng.random() < 0.01:
            out.append(b"")
    # a shared computer: the anonymous id of a signed-in user, then another user on it
    first = next(
        e for x in out if isinstance(e := _object(x), dict) and e.get("user_id") and e.get("anonymous_id")
    )
    claim = {**first, "event_id": "claim-1", "user_id": "someone-else"}
    out.insert(len(out) * 3 // 4, orjson.dumps(claim))
    return out


def _object(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def one_process(
    lines: list[bytes], flush: bool, partitions: int = 4, source: str = "file:x", enrich: bool = False
) -> list[bytes]:
    """One process's outputs; `enrich`: with the default audience enrichment, as the command runs."""
    run = OfflineRun(CONFIG, partitions, source=source, enrichment=EnrichmentSpec() if enrich else None)
    outputs = list(run.run(lines)) + (run.flush() if flush else [])
    keyed = sorted(
        ((o.timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1), o.id, o.to_json())
        for o in outputs
    )
    return [raw for _, _, raw in keyed]


def workers(tmp_path: Path, lines: list[bytes], n: int, flush: bool, **sizes: int) -> list[bytes]:
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = BytesIO()
    job = Job(
        CONFIG, str(path), "file:x", partitions=4, workers=n, flush=flush, tmpdir=str(tmp_path), **sizes
    )
    totals = process_file(job, out)
    assert totals.lines == len(lines)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("shuffled", [False, True], ids=["in order", "shuffled"])
def test_workers_write_what_one_process_writes_in_one_order(tmp_path: Path, shuffled: bool) -> None:
    lines = shop_lines()
    if shuffled:  # event time goes back and forth: windows of lines in random order
        rng = random.Random(9)
        chunks = [lines[i : i + 40] for i in range(0, len(lines), 40)]
        for chunk in chunks:
            rng.shuffle(chunk)
        lines = [line for chunk in chunks for line in chunk]
    expected = one_process(lines, flush=True)
    kinds = {orjson.loads(raw)["type"] for raw in expected}
    everything = {"micro", "macro", "dropoff", "stalled", "session", "identity", "deadletter", "experiment"}
    assert kinds >= everything | ({"alert"} if not shuffled else set()), kinds
    assert any(b'"refused"' in raw for raw in expected)
    if shuffled:
        assert any(b'"late_event"' in raw for raw in expected)
    two = workers(tmp_path, lines, 2, flush=True, block_lines=37, run_outputs=500, merge_in_memory=0)
    assert two == expected
    assert workers(tmp_path, lines, 3, flush=True, block_lines=64) == expected


def test_cusum_alerts_are_judged_as_one_process_judges_them(tmp_path: Path) -> None:
    """A cusum rule's trials are keyed by the attempt's start and the person's ids and timed from
    the step before: the parent's evaluators get those fields of every milestone too."""
    rule = "    by: [context.platform]\n"
    config = compile_config(parse_config(FUNNELS.replace(rule, rule + "    method: cusum\n", 1)))
    lines = shop_lines()
    run = OfflineRun(config, 4, source="file:x")
    outputs = list(run.run(lines)) + run.flush()
    epoch, micro = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
    expected = [
        raw for _, _, raw in sorted(((o.timestamp - epoch) // micro, o.id, o.to_json()) for o in outputs)
    ]
    assert sum(b'"type":"alert"' in raw for raw in expected) >= 2
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = BytesIO()
    job = Job(config, str(path), "file:x", partitions=4, workers=2, flush=True, tmpdir=str(tmp_path))
    process_file(job, out)
    assert out.getvalue().splitlines() == expected


def test_without_flush_and_with_one_partition_the_outputs_are_the_same(tmp_path: Path) -> None:
    lines = shop_lines(seed=5)
    expected = one_process(lines, flush=False)
    assert one_process(lines, flush=False, partitions=1) == expected  # what each worker runs
    assert workers(tmp_path, lines, 2, flush=False, block_lines=100) == expected
    # runs written while the workers go on, loaded by the parent as they are reported
    assert workers(tmp_path, lines, 2, flush=False, block_lines=100, run_outputs=300) == expected


@pytest.mark.parametrize("stitch", [True, False], ids=["stitching", "no stitching"])
def test_routing_reads_the_ids_of_an_object_as_a_full_parse_does(stitch: bool) -> None:
    """The first pass reads a JSON object's ids without parsing the rest (`_Head`): the same
    keys and pairs as the general path (taken here by a leading space, which JSON allows), for
    ids nested, escaped, repeated, null or of another type, Segment messages, bad lines and lines
    nested too deep to read."""
    rules = IdentityRules(stitch=stitch)
    job = Job(CONFIG, "", "file:x", partitions=4, workers=2)
    lines = [
        *shop_lines(seed=13)[:200],
        b'{"event_id":"e","anonymous_id":"a","user_id":"u","properties":{"user_id":"v"}}',
        b'{"event_id":"e","properties":{"anonymous_id":"n","user_id":"v"}}',
        b'{"event_id":"e","\\u0061nonymous_id":"escaped","user_id":"u"}',
        b'{"event_id":"e","user_id":"first","user_id":"second"}',
        b'{"event_id":"e","anonymous_id":null,"user_id":"u"}',
        b'{"event_id":"e","anonymous_id":7,"user_id":["u"]}',
        b'{"event_id":"e","anonymous_id":"a","type":"track"}',
        b'{"type":"track","event":"Viewed","anonymousId":"seg-a","userId":"seg-u","messageId":"m",'
        b'"timestamp":"2024-03-11T00:00:00Z"}',
        b'{"batch":[{"type":"page","anonymousId":"seg-b","messageId":"m2","timestamp":"2024-03-11T00:00:00Z"}]}',
        b'{"anonymous_id":"a","userId":"seg"}',
        b'{"anonymous_id":"cut-',
        b'{"anonymous_id":NaN}',
        b"{}",
        # nested past Python's recursion limit (msgspec skips recursively), and past orjson's 1024
        b'{"event_id":"e","anonymous_id":"a","properties":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"event_id":"e","anonymous_id":"a","properties":' + b"[" * 1100 + b"]" * 1100 + b"}",
    ]
    assert len(lines) > 200
    for raw in lines:
        assert line_keys(raw, rules, job) == line_keys(b" " + raw, rules, job), raw


def test_people_are_every_id_linked_to_another() -> None:
    roots = persons([("a1", "u1"), ("a2", "u1"), ("a3", "u2"), ("a3", "u3"), ("a4", "u4")])
    assert roots["a1"] == roots["a2"] == roots["u1"]
    assert roots["a3"] == roots["u2"] == roots["u3"] != roots["u1"]
    assert roots["a4"] == roots["u4"] != roots["a3"]


def test_the_command_reads_a_file_or_standard_input(tmp_path: Path) -> None:
    lines = shop_lines(seed=7)[:600]
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "funnels.yaml"
    config.write_text(FUNNELS)
    expected = one_process(lines, flush=True, source=f"file:{path}", enrich=True)
    from_file = CliRunner().invoke(
        main, ["process", "--config", str(config), "--input", str(path), "--workers", "2", "--flush"]
    )
    assert from_file.exit_code == 0, from_file.output
    assert from_file.stdout_bytes.splitlines() == expected
    assert f"{len(lines)} lines" in from_file.stderr
    from_stdin = CliRunner().invoke(
        main,
        ["process", "--config", str(config), "--input", "-", "--workers", "3", "--flush"],
        input=path.read_bytes(),
    )
    assert from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.stdout_bytes.splitlines() == one_process(
        lines, flush=True, source="file:-", enrich=True
    )


def test_an_empty_file_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.ndjson"
    path.write_bytes(b"")
    out = BytesIO()
    totals = run_parallel(Job(CONFIG, str(path), "file:x", partitions=4, workers=2), out)
    assert (totals.lines, totals.events, out.getvalue()) == (0, 0, b"")


def test_workers_read_lines_as_one_process_splits_them(tmp_path: Path) -> None:
    """The workers read their lines at the offsets the first pass found: CRLF endings, blank and
    whitespace-only lines, a malformed line and a last line without its newline, as one process."""
    lines = shop_lines(seed=11)[:300]
    lines[150:150] = [b"   ", b"", b'{"event_id": "cut-', b"\t"]
    body = b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(lines))
    body += b'{"not": "an event"}'  # no newline after the last line
    path = tmp_path / "in.ndjson"
    path.write_bytes(body)
    expected = one_process(list(BytesIO(body)), flush=True)
    assert any(b'"deadletter"' in raw for raw in expected)
    for n in (2, 3):
        out = BytesIO()
        job = Job(CONFIG, str(path), "file:x", partitions=4, workers=n, flush=True, block_lines=29)
        totals = run_parallel(job, out)
        assert totals.lines == len(lines) + 1
        assert out.getvalue().splitlines() == expected


def test_many_runs_are_merged_in_groups_before_the_streamed_merge(tmp_path: Path) -> None:
    """However many runs the workers wrote, the streamed merge opens at most `fan_in` of them,
    and the longer runs hold every record once, in order."""
    rng = random.Random(5)
    records = [rng.randrange(10**9).to_bytes(8, "big") + b"line %d" % i for i in range(2_000)]
    runs = _Runs(str(tmp_path), "w", 70)  # 29 runs
    for at in range(0, len(records), 70):
        runs.records = list(records[at : at + 70])
        runs.spill()
    assert len(runs.paths) == 29
    fewer = _fewer_runs(list(runs.paths), fan_in=3)
    assert len(fewer) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(f).name for f in fewer)
    merged = [record for path in fewer for record in read_run(path)]
    assert sorted(merged) == sorted(records)
    assert all(list(read_run(path)) == sorted(read_run(path)) for path in fewer)
