"""Offline mode on several processes (`conversions process --workers N`), split by person.

Identity stitching makes a person's events depend on each other across ids: an anonymous id's
journey merges into its user's, a refused link needs the anonymous id's stub and the other
user's journey. So the split is by *person*:

1. **Links and routes, in parallel.** Each worker reads one byte range of the file, reads each
   line once (not validated; of a JSON object, only its ids: `_Head`) for the home key of each
   event it may hold, and collects every
   (anonymous id, user id) pair an event carries. The parent unites the pairs (union-find): a
   person is every id linked, directly or not, to another. This is a superset of what the engine
   will link (first link wins, `link_on`, expiry): ids it keeps apart only share a worker. With
   the people known, each worker says for each line of its range which workers it concerns (a
   person's worker is a hash of the person), and the parent hands each worker its own flags for
   the whole file, with where each line starts: a line is parsed once in all, not once by every
   worker.
2. **People, in parallel.** Every worker reads only the lines its flags name (at the offsets the
   first pass found, the file mapped in memory) and decodes them in full, applying only its own
   events. A batch line with several people is decoded by each of their workers. Dead letters of
   a line belong to the worker of the line's first event (of the line number, without one).

Offline mode's outputs depend on the file's event time after each line (the latest valid
event's, across all people): it fires deadlines, releases held items, stamps dead letters, and
drives the alert and experiment evaluators. So the workers go in steps of `BLOCK_LINES` lines:
each decodes a block and reports, per line, the latest time of its own valid events; the parent
sends back the file's event time at every line of the block, and only then does a worker apply
the block, catching up before each of its lines with the event time the lines it skipped had
reached. Each decodes the next block while the parent gathers, so the step costs little waiting.
Every person's journey therefore sees exactly the calls of one process, at the same event times.

The evaluators need every microconversion: the workers send them, tagged with their line, and
the parent judges line by line as one process does. The outputs (every worker's, the parent's
alerts and experiment updates) are written sorted by event time, then id, then content: the
same bytes for any number of workers, the same multiset as one process (tests/offline/test_parallel.py).
Each worker keeps its outputs sorted in runs of at most `RUN_OUTPUTS` on disk, each output one
bytes object that sorts as its (event time, id, JSON) would (`_record`), and names each new run
to the parent with a block's milestones; the parent loads the runs as they come (`_Gathered`),
so that when the workers end it has little left to read before it merges.
"""

from __future__ import annotations

import heapq
import marshal
import mmap
import multiprocessing
import os
import shutil
import struct
import sys
import tempfile
import traceback
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from multiprocessing.connection import Connection
from operator import itemgetter
from typing import Any, BinaryIO
from zlib import crc32

import msgspec
import orjson
from msgspec import UNSET, Raw, UnsetType

from streams.core.config.matching import CompiledConfig
from streams.core.input.audience import Enricher, EnrichmentSpec
from streams.core.input.decode import decode_message
from streams.core.input.event import MAX_NESTING, ClickEvent
from streams.core.input.formats.detect import looks_like_segment, looks_like_tsv
from streams.core.input.rejection import Decoded, Rejection
from streams.core.journeys.identity import IdentityRules
from streams.core.measures.cardinality import BREAKDOWN_CAP
from streams.core.records.outputs import OutputEvent
from streams.errors import ConversionsError
from streams.offline import collector
from streams.offline.run import Judges, OfflineRun
from streams.offline.summary import FunnelCounts

BLOCK_LINES = 2_048
LOOKAHEAD = 4
"""Blocks a worker decodes ahead of the one it applies: a worker or the parent that the machine
runs late holds the others up only after this many blocks."""
RUN_OUTPUTS = 25_000
"""Outputs a worker keeps in memory before it writes them, sorted, as one run on disk (the parent
loads each run as soon as it is told of it, while the workers go on: `_Gathered`)."""
MERGE_IN_MEMORY = 1_000_000
"""Outputs the parent holds in memory (an upper bound: `RUN_OUTPUTS` per run); beyond, it merges
the runs it could not load as a stream at the end."""
MERGE_FAN_IN = 64
"""Run files the streamed merge reads at once, at most: each holds a file open and a chunk in
memory; more are first merged in groups into longer runs (`_fewer_runs`)."""
_CHUNK = 4_096  # records per marshal chunk of a run file
_READ = 8 << 20  # bytes of its share a worker's first pass reads at a time
_SKIP, _EVENTS, _REJECTS, _KEYLESS, _BLANK_LINE = 0, 1, 3, 2, 4
"""A line's flag for one worker: skip it; decode it for its events; decode it for its events
and its dead letters (the worker of its first event); a line without any event's key, whose dead
letters go by its line number (which only the parent knows); a blank line (every worker's: it
reports it, see `_BLANK`)."""
_ALL_MINE = 8
"""Or'ed into `_EVENTS` or `_REJECTS`: every key of the line is this worker's, so each of its
events is (a worker then keeps them without asking `Router.owner` again)."""
_NONE = -1  # no valid event (yet): an event time is never negative here
_BLANK = -2  # a blank line: one process skips it entirely (no event time, no judging)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Record = bytes
"""An output as the merge sorts it: its sort key (`_record`) then its JSON, one bytes object."""
Decoded_block = tuple[int, int, list[tuple[int, list[ClickEvent], list[Rejection], bytes | None]]]
"""A block as a worker decoded it: its number, its first line's number, and per line of the
worker's (by index in the block) its events, the dead letters it owes, and the line itself when
it has events (an event the engine refuses is dead-lettered with it)."""


class WorkerFailed(ConversionsError, RuntimeError):
    """A worker process stopped with an error (its traceback is the message)."""


@dataclass(frozen=True)
class Job:
    """What every worker needs: the same settings as one process's OfflineRun."""

    config: CompiledConfig
    path: str
    source: str
    partitions: int
    workers: int
    max_message_bytes: int = 1_000_000
    max_batch_events: int = 10_000
    max_nesting: int = MAX_NESTING
    breakdown_cap: int = BREAKDOWN_CAP
    latest_ms: int | None = None
    flush: bool = False
    tmpdir: str = ""
    block_lines: int = BLOCK_LINES
    run_outputs: int = RUN_OUTPUTS
    lookahead: int = LOOKAHEAD
    merge_in_memory: int = MERGE_IN_MEMORY
    enrichment: EnrichmentSpec | None = None


@dataclass
class Totals:
    lines: int = 0
    events: int = 0
    rejected: int = 0
    unknown_fields: dict[str, int] = field(default_factory=dict)
    funnels: FunnelCounts = field(default_factory=FunnelCounts)


# ---- routing ------------------------------------------------------------------------------


def line_keys(raw: bytes, rules: IdentityRules, job: Job) -> tuple[list[str], list[tuple[str, str]]]:
    """The home key (`IdentityRules.home`) of each event a line may hold, and the (anonymous id,
    user id) pairs its events carry. Our own JSON is only parsed; Segment messages and Snowplow
    TSV are decoded (what their ids are is the format's mapping). A key of an event that will
    not validate is harmless: it only makes its worker decode the line."""
    if len(raw) > job.max_message_bytes:
        return [], []
    if raw[:1] == b"{":
        try:
            head = _HEAD.decode(raw)
        except (msgspec.DecodeError, RecursionError):  # a ValidationError too; msgspec skips a
            pass  # nested value recursively: a deep one is the general path's (too_deeply_nested)
        else:
            if head.event_id is not UNSET or (
                head.type is UNSET
                and head.messageId is UNSET
                and head.anonymousId is UNSET
                and head.userId is UNSET
                and head.batch is UNSET
            ):  # not a Segment message (`looks_like_segment` says no to it)
                anonymous, user = head.anonymous_id, head.user_id
                home = (
                    anonymous
                    if rules.stitch and anonymous is not None
                    else (user if user is not None else anonymous)
                )
                return ([home] if home is not None else []), (
                    [(anonymous, user)] if anonymous is not None and user is not None else []
                )
    elif looks_like_tsv(raw):
        return _decoded_keys(raw, rules, job)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [], []
    elements = parsed if isinstance(parsed, list) else [parsed]
    if elements and looks_like_segment(elements[0]):
        return _decoded_keys(raw, rules, job)
    keys: list[str] = []
    pairs: list[tuple[str, str]] = []
    for element in elements:
        if not isinstance(element, dict):
            continue
        anonymous, user = element.get("anonymous_id"), element.get("user_id")
        anonymous = anonymous if isinstance(anonymous, str) else None
        user = user if isinstance(user, str) else None
        home = (
            anonymous if rules.stitch and anonymous is not None else (user if user is not None else anonymous)
        )
        if home is not None:
            keys.append(home)
        if anonymous is not None and user is not None:
            pairs.append((anonymous, user))
    return keys, pairs


class _Head(msgspec.Struct):
    """What routing reads of one JSON object: its two ids (a value of another type sends the
    line to the general path) and whether the keys `looks_like_segment` asks about are there
    (their values left undecoded). Every other field is skipped unparsed: about half the CPU
    of `orjson.loads` and the walk over its dict."""

    anonymous_id: str | None = None
    user_id: str | None = None
    event_id: Raw | UnsetType = UNSET
    type: Raw | UnsetType = UNSET
    messageId: Raw | UnsetType = UNSET  # Segment's own spellings
    anonymousId: Raw | UnsetType = UNSET
    userId: Raw | UnsetType = UNSET
    batch: Raw | UnsetType = UNSET


_HEAD = msgspec.json.Decoder(_Head)


def _decoded_keys(raw: bytes, rules: IdentityRules, job: Job) -> tuple[list[str], list[tuple[str, str]]]:
    keys: list[str] = []
    pairs: list[tuple[str, str]] = []
    for event in _decode(raw, job).events:
        keys.append(rules.home(event))
        if event.anonymous_id is not None and event.user_id is not None:
            pairs.append((event.anonymous_id, event.user_id))
    return keys, pairs


_ENRICHERS: dict[EnrichmentSpec, Enricher] = {}


def _decode(raw: bytes, job: Job) -> Decoded:
    return _decoder(job)(raw)


def _decoder(job: Job) -> Callable[[bytes], Decoded]:
    """`decode_message` with the job's settings and this process's enricher (built once: a
    worker decodes each of its lines with what this returns, rather than look the enricher up
    by the spec's hash for each)."""
    enricher = None
    if job.enrichment is not None:
        enricher = _ENRICHERS.get(job.enrichment)
        if enricher is None:
            enricher = _ENRICHERS[job.enrichment] = job.enrichment.build()
    return partial(
        decode_message,
        max_bytes=job.max_message_bytes,
        max_batch=job.max_batch_events,
        latest_ms=job.latest_ms,
        enricher=enricher,
        max_nesting=job.max_nesting,
    )


def persons(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each id that appears in a pair, mapped to its person (the smallest id of its group)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            low, high = (ra, rb) if ra < rb else (rb, ra)
            parent[high] = low
    return {x: find(x) for x in parent}


class Router:
    def __init__(self, roots: dict[str, str], workers: int) -> None:
        self.roots = roots
        self.workers = workers

    def owner(self, key: str) -> int:
        return crc32(self.roots.get(key, key).encode()) % self.workers


# ---- the worker ---------------------------------------------------------------------------


def _read(path: str) -> bytes | mmap.mmap:
    """The whole file, mapped (an empty file cannot be: its bytes)."""
    with open(path, "rb") as stream:
        try:
            return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            return b""


def _micro_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


_TIME = struct.Struct(">Q")
_TIME_OFFSET = 1 << 63  # event times before 1970 are negative: offset, they sort as unsigned


def _record(output: OutputEvent) -> Record:
    """The output's event time (8 bytes, big-endian), then its NDJSON line: bytes compare as the
    tuple (event time, id, JSON) does, so the merge sorts plain bytes (memcmp) and loads them
    from a run without building tuples, and writes what follows the time. The line begins with
    the id (`{"id":"`, the first field of every output) closed by a quote; ids are hex
    (`output_id`), every character above the quote, so a shorter id sorts before the longer
    ones it begins, as str does; and no JSON object begins another, so the newline after it
    changes no order."""
    return _TIME.pack(_micro_us(output.timestamp) + _TIME_OFFSET) + output.to_line()


class _Runs:
    """A worker's outputs, sorted in runs on disk."""

    def __init__(self, directory: str, name: str, size: int) -> None:
        self.directory, self.name, self.size = directory, name, size
        self.records: list[Record] = []
        self.paths: list[str] = []
        self.told = 0
        """Runs the parent was told of (`new`)."""

    def new(self) -> list[str]:
        """The runs written since the last call."""
        paths = self.paths[self.told :]
        self.told = len(self.paths)
        return paths

    def add(self, outputs: Iterable[OutputEvent]) -> None:
        records = self.records
        for output in outputs:
            records.append(_record(output))  # an exact-size copy of orjson's grown buffer, too
        if len(records) >= self.size:
            self.spill()

    def spill(self) -> None:
        if not self.records and self.paths:
            return
        self.records.sort()
        path = os.path.join(self.directory, f"{self.name}-{len(self.paths)}.run")
        write_run(path, self.records)
        self.paths.append(path)
        self.records = []


def write_run(path: str, records: Iterable[Record]) -> None:
    """A run file: sorted records in marshal chunks of `_CHUNK` (`read_run` reads them back)."""
    remaining = iter(records)
    with open(path, "wb") as stream:
        while chunk := list(islice(remaining, _CHUNK)):
            marshal.dump(chunk, stream)


def read_run(path: str) -> Iterator[Record]:
    with open(path, "rb") as stream:
        while True:
            try:
                chunk = marshal.load(stream)
            except EOFError:
                return
            yield from chunk


def _work(index: int, job: Job, conn: Connection) -> None:
    # A worker keeps `lookahead` blocks of decoded events alive while it waits for their event
    # times: they outlive the young collections, and the full collections they bring on walk
    # every journey the engine holds. The start-up heap (the parent's, forked) out of the
    # collector's sight and young collections every 50,000 allocations instead of 700: the
    # workers spent about a sixth less CPU (bench/README.md, "Offline on two cores"); now every
    # 500,000 (`collector.THRESHOLDS`).
    collector.relax()
    try:
        keys, starts = _phase_links(job, conn)
        router = Router(conn.recv(), job.workers)
        conn.send((_flags(keys, router), starts.tobytes()))
        del keys, starts
        flags, starts_bytes = conn.recv()
        starts = array("q")
        starts.frombytes(starts_bytes)
        _phase_people(index, job, conn, router, flags, starts)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def _phase_links(job: Job, conn: Connection) -> tuple[list[list[str] | None], array[int]]:
    """The pairs of ids of the worker's byte range, sent to the parent; returns each line's home
    keys (None for a blank line), kept for `_flags`, and where each line starts in the file."""
    start, end = conn.recv()
    rules = IdentityRules.from_config(job.config.source.identity)
    pairs: set[tuple[str, str]] = set()
    keys: list[list[str] | None] = []
    starts = array("q")  # where each line starts: the range's start, then after each newline
    at = start
    for line in _range_lines(job.path, start, end):
        starts.append(at)
        at += len(line) + 1
        if not line.strip():
            keys.append(None)
            continue
        homes, found = line_keys(line.rstrip(b"\r"), rules, job)
        keys.append(homes)
        if rules.stitch:
            pairs.update(found)
    conn.send(sorted(pairs))
    return keys, starts


def _range_lines(path: str, start: int, end: int) -> Iterator[bytes]:
    """The lines of a byte range that starts at a line, without their newlines: split after each
    newline as one process reads a file (the last line may have none). Read `_READ` bytes at a
    time, split at newlines: a share of a large file is never held whole."""
    with open(path, "rb") as stream:
        stream.seek(start)
        left, rest = end - start, b""
        while left > 0:
            chunk = stream.read(min(_READ, left))
            if not chunk:
                break
            left -= len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()  # after the chunk's last newline: the start of the next line
            yield from lines
    if rest:
        yield rest  # the range's last line had no newline


def _flags(keys: list[list[str] | None], router: Router) -> list[bytes]:
    """Per worker, a flag for each line of this range (`_SKIP` ... `_KEYLESS`)."""
    flags = [bytearray(len(keys)) for _ in range(router.workers)]
    for i, homes in enumerate(keys):
        if homes is None:
            for worker in flags:
                worker[i] = _BLANK_LINE
            continue
        if not homes:
            for worker in flags:
                worker[i] = _KEYLESS
            continue
        owners = [router.owner(key) for key in homes]
        mine = _ALL_MINE if owners.count(owners[0]) == len(owners) else 0
        for owner in owners:
            flags[owner][i] = _EVENTS | mine
        flags[owners[0]][i] = _REJECTS | mine
    return [bytes(worker) for worker in flags]


def _phase_people(
    index: int, job: Job, conn: Connection, router: Router, flags: bytes, starts: array[int]
) -> None:
    """Decode, block by block, only the lines `flags` names (read at `starts`, where each line
    starts, and the file's size after the last), then apply each block at the parent's times."""
    rules = IdentityRules.from_config(job.config.source.identity)
    # One partition: offline, every partition hears the one source at the same event times, so
    # the outputs do not depend on their number (test_parallel checks it against four), and each
    # of this process's lines observes them twice (catching up, then after the line).
    run = OfflineRun(
        job.config,
        1,
        source=job.source,
        max_message_bytes=job.max_message_bytes,
        max_batch_events=job.max_batch_events,
        max_nesting=job.max_nesting,
        breakdown_cap=job.breakdown_cap,
        latest_ms=job.latest_ms,
        enrichment=job.enrichment,
    )
    runs = _Runs(job.tmpdir, f"w{index}", job.run_outputs)
    decode = _decoder(job)
    judged = itemgetter(*_sent_fields(job.config))  # what a milestone sends
    pending: deque[Decoded_block] = deque()
    data = _read(job.path)
    lines = len(flags)
    own = [i for i, flag in enumerate(flags) if flag]  # indices from 0
    at = 0  # in `own`
    for number, first in enumerate(range(1, lines + 1, job.block_lines)):
        # `first`: the line number of the block's first line (one process counts from 1)
        size = min(job.block_lines, lines - first + 1)
        end = first - 1 + size
        mine: list[tuple[int, list[ClickEvent], list[Rejection], bytes | None]] = []
        times = array("q", [_NONE]) * size
        while at < len(own) and own[at] < end:
            line = own[at]
            at += 1
            flag, i = flags[line], line - first + 1
            if flag == _BLANK_LINE:
                times[i] = _BLANK
                continue
            rejects_here = flag & ~_ALL_MINE == _REJECTS
            raw = data[starts[line] : starts[line + 1]].rstrip(b"\r\n")
            decoded = decode(raw)
            if flag & _ALL_MINE:
                events = decoded.events
            else:
                events = [e for e in decoded.events if router.owner(rules.home(e)) == index]
            if events:
                times[i] = max(e.ts_ms for e in events)
            if rejects_here:  # the line's one owner counts what is about the whole line
                for name, count in decoded.unknown_fields.items():
                    run.unknown_fields[name] = run.unknown_fields.get(name, 0) + count
            mine.append((i, events, decoded.rejects if rejects_here else [], raw if events else None))
        conn.send(("times", number, size, times.tobytes()))
        pending.append((number, first, mine))
        if len(pending) > job.lookahead:
            _apply(run, runs, conn, pending.popleft(), judged)
    conn.send(("end", lines))
    while pending:
        _apply(run, runs, conn, pending.popleft(), judged)
    kind, final = conn.recv()  # the file's event time after its last line
    assert kind == "final", kind
    ended = run.catch_up(None if final == _NONE else final)
    if job.flush:  # the parent judges what the flush released, then the input to its end
        ended += run.flush(judge=False, save=False)
    runs.add(ended)  # the journeys are not written to the store (`Engine.flush`): nothing reads it
    runs.spill()
    released = [_judged_fields(o) for o in ended if o.type == "micro"] if job.flush else []
    conn.send(("done", runs.paths, run.events, run.rejected, run.unknown_fields, run.counts, released))


def _apply(
    run: OfflineRun,
    runs: _Runs,
    conn: Connection,
    pending: Decoded_block,
    judged: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> None:
    """Apply a decoded block at the event times the parent sent; the block's micro outputs go
    back to the parent, by line."""
    number, first, mine = pending
    kind, sent, before, raw_times = conn.recv()
    assert kind == "times" and sent == number, (kind, sent, number)
    times = array("q")
    times.frombytes(raw_times)
    micro: list[Milestone] = []
    for i, events, rejects, raw in mine:
        previous = times[i - 1] if i else before
        out = run.apply_line(
            first + i,
            events,
            rejects,
            None if previous == _NONE else previous,
            None if times[i] == _NONE else times[i],
            raw,
        )
        runs.add(out)
        for o in out:
            if o.type == "micro":
                fields = o.__dict__
                if fields["kind"] == "milestone":
                    micro.append((i, judged(fields)))
    conn.send(("micro", number, micro, runs.new()))


def _judged_fields(output: OutputEvent) -> dict[str, Any]:
    """What the evaluators read of a milestone microconversion (they ignore every other output;
    leaving those out changes nothing: with no milestone, a line judges only when a minute ends,
    as it would have)."""
    fields = output.__dict__
    return {key: fields[key] for key in _JUDGED}


_SENT = ("id", "timestamp", "funnel", "funnel_version", "step", "step_index", "breakdowns")
"""The fields of a milestone the evaluators read, but the two every milestone shares (type and
kind): the alert evaluator routes by funnel version too."""
_TRIALS = ("started_at", "previous_at", "user_id", "anonymous_id")
"""What an alert rule with `method: cusum` reads besides: its trials are keyed by the attempt's
start and the person's ids, and timed from the step before (without these, --workers N judged
cusum rules differently from one process). Sent only when the configuration has such a rule: two
more datetimes a milestone, pickled and loaded, cost the workers and the parent 2-5 % more CPU."""
_JUDGED = ("type", "kind", *_SENT, *_TRIALS)
Milestone = tuple[int, tuple[Any, ...]]
"""A milestone microconversion as a worker sends it to the parent: its line in the block and
the values of `_sent_fields` (a tuple pickles and loads in about a fifth of a dict's time; the
parent builds the dict, `_milestone`)."""


def _sent_fields(config: CompiledConfig) -> tuple[str, ...]:
    if any(rule.method == "cusum" for rule in config.source.alerts):
        return _SENT + _TRIALS
    return _SENT


def _milestone(sent: Milestone, names: tuple[str, ...]) -> dict[str, Any]:
    fields = dict(zip(names, sent[1], strict=True))
    fields["type"], fields["kind"] = "micro", "milestone"
    return fields


# ---- the parent ---------------------------------------------------------------------------


def _ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """`parts` byte ranges of the file, each starting at a line."""
    size = os.path.getsize(path)
    starts = [0]
    with open(path, "rb") as stream:
        for k in range(1, parts):
            stream.seek(max(starts[-1], size * k // parts))
            if stream.tell() > 0:
                stream.readline()  # to the start of the next line
            starts.append(stream.tell())
    return [(starts[k], starts[k + 1] if k + 1 < parts else size) for k in range(parts)]


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _recv(conn: Connection) -> Any:
    try:
        message = conn.recv()
    except EOFError:
        raise WorkerFailed("a worker process ended without its results") from None
    if isinstance(message, tuple) and message and message[0] == "error":
        raise WorkerFailed(message[1])
    return message


def process_file(job: Job, out: BinaryIO) -> Totals:
    """Run `job` on `job.workers` processes and write every output, sorted, to `out`."""
    context = _context()
    pipes = [context.Pipe() for _ in range(job.workers)]
    processes = [
        context.Process(
            target=_work, args=(k, job, pipes[k][1]), name=f"conversions-process-{k}", daemon=True
        )
        for k in range(job.workers)
    ]
    for process in processes:
        process.start()
    conns = [parent for parent, _ in pipes]
    for _, child in pipes:
        child.close()
    try:
        return _coordinate(job, conns, out)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def _coordinate(job: Job, conns: list[Connection], out: BinaryIO) -> Totals:
    with collector.relaxed():
        return _coordinated(job, conns, out)


def _coordinated(job: Job, conns: list[Connection], out: BinaryIO) -> Totals:
    for conn, byte_range in zip(conns, _ranges(job.path, job.workers), strict=True):
        conn.send(byte_range)
    pairs = [pair for conn in conns for pair in _recv(conn)]
    roots = persons(pairs)
    for conn in conns:
        conn.send(roots)
    reports = [_recv(conn) for conn in conns]
    starts = b"".join(starts for _, starts in reports) + array("q", [os.path.getsize(job.path)]).tobytes()
    for index, flags in enumerate(_gather_flags(job.workers, [flags for flags, _ in reports])):
        conns[index].send((flags, starts))

    judges = Judges(job.config, job.breakdown_cap)
    gathered = _Gathered(job.run_outputs, job.merge_in_memory)
    names = _sent_fields(job.config)
    judged: list[OutputEvent] = []
    latest = _NONE  # the file's event time after the lines gathered so far
    waiting: deque[tuple[int, int, array[int], list[bool]]] = deque()  # blocks to judge, in order
    totals = Totals()
    while True:
        messages = [_recv(conn) for conn in conns]
        if messages[0][0] == "end":
            assert all(message[0] == "end" for message in messages), messages
            totals.lines = messages[0][1]
            break
        number, size = messages[0][1], messages[0][2]
        reported = []
        for message in messages:
            times = array("q")
            times.frombytes(message[3])
            reported.append(times)
        before = latest
        running = array("q", [_NONE]) * size
        blank = [False] * size
        for i, line_latest in enumerate(map(max, *reported) if len(reported) > 1 else reported[0]):
            if line_latest > latest:
                latest = line_latest
            elif line_latest == _BLANK:
                blank[i] = True
            running[i] = latest
        for conn in conns:
            conn.send(("times", number, before, running.tobytes()))
        waiting.append((number, before, running, blank))
        if len(waiting) > job.lookahead:  # each worker sends a block's micro after the next ones' times
            judged += _judge(judges, waiting.popleft(), gathered.take([_recv(conn) for conn in conns]), names)
    while waiting:
        judged += _judge(judges, waiting.popleft(), gathered.take([_recv(conn) for conn in conns]), names)
    for conn in conns:
        conn.send(("final", latest))
    released: list[dict[str, Any]] = []
    for conn in conns:
        _, paths, events, rejected, unknown, counts, micro = _recv(conn)
        gathered.load(paths)
        totals.events += events
        totals.rejected += rejected
        for name, count in unknown.items():
            totals.unknown_fields[name] = totals.unknown_fields.get(name, 0) + count
        totals.funnels.add(counts)
        released += micro
    if job.flush:
        judged += judges.finish(released, None if latest == _NONE else latest)
    mine = sorted(_record(o) for o in judged)
    later = _fewer_runs(gathered.later)
    sorted_runs: list[Iterable[Record]] = [mine, *gathered.loaded, *map(read_run, later)]
    _write_sorted(out, sorted_runs, in_memory=not gathered.later)
    return totals


def _gather_flags(workers: int, ranges: list[list[bytes]]) -> list[bytes]:
    """Each worker's flags for the whole file, from each range's: a keyless line's dead letters
    go to the worker its line number (counted from 1) names."""
    whole = [bytearray(b"".join(flags[worker] for flags in ranges)) for worker in range(workers)]
    if workers:
        start = 0
        while (i := whole[0].find(_KEYLESS, start)) >= 0:
            for worker, flags in enumerate(whole):
                flags[i] = _REJECTS if (i + 1) % workers == worker else _SKIP
            start = i + 1
    return [bytes(flags) for flags in whole]


class _Gathered:
    """The workers' sorted runs, loaded as the workers report them (with a block's milestones)
    while they go on working, so that little is left to read when they end; past `limit`
    outputs (counted `size` per run, an upper bound), the runs are left on disk for a streamed
    merge at the end."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        self.loaded: list[list[Record]] = []
        self.later: list[str] = []
        self.seen: set[str] = set()

    def take(self, reports: list[Any]) -> list[Any]:
        """Load the runs a block's reports name; the reports, for `_judge`."""
        for report in reports:
            self.load(report[3])
        return reports

    def load(self, paths: list[str]) -> None:
        for path in paths:
            if path in self.seen:
                continue
            self.seen.add(path)
            if (len(self.loaded) + 1) * self.size <= self.limit:
                self.loaded.append(list(read_run(path)))
            else:
                self.later.append(path)


def _fewer_runs(paths: list[str], fan_in: int = MERGE_FAN_IN) -> list[str]:
    """At most `fan_in` run files for the streamed merge: more are merged `fan_in` at a time
    into longer runs beside them (as often as needed), each group's files removed once merged."""
    rounds = 0
    while len(paths) > fan_in:
        longer = []
        for at in range(0, len(paths), fan_in):
            group = paths[at : at + fan_in]
            path = os.path.join(os.path.dirname(group[0]), f"merged-{rounds}-{at}.run")
            write_run(path, heapq.merge(*map(read_run, group)))
            for merged in group:
                os.remove(merged)
            longer.append(path)
        paths, rounds = longer, rounds + 1
    return paths


def _write_sorted(out: BinaryIO, runs: list[Iterable[Record]], in_memory: bool) -> None:
    """Merge sorted runs into `out`: in memory, as one list, where Timsort merges the runs in C;
    or, for more than `MERGE_IN_MEMORY` outputs, as a stream through a heap. Each record's line
    is what follows its event time."""
    skip = _TIME.size
    if in_memory:
        records = [record for run in runs for record in run]
        records.sort()
        for at in range(0, len(records), _CHUNK):
            out.write(b"".join([record[skip:] for record in records[at : at + _CHUNK]]))
        return
    for record in heapq.merge(*runs):
        out.write(record[skip:])


def _judge(
    judges: Judges,
    block: tuple[int, int, array[int], list[bool]],
    reports: list[Any],
    names: tuple[str, ...],
) -> list[OutputEvent]:
    """The evaluators after each line of a block, as one process calls them."""
    number, _, running, blank = block
    by_line: dict[int, list[dict[str, Any]]] = {}
    for kind, sent, micro, _ in reports:
        assert kind == "micro" and sent == number, (kind, sent, number)
        for milestone in micro:
            by_line.setdefault(milestone[0], []).append(_milestone(milestone, names))
    out: list[OutputEvent] = []
    if not judges.evaluators:
        return out
    for i, latest in enumerate(running):
        if blank[i] or latest == _NONE:
            continue  # one process does not judge after a blank line, nor before any event
        out += judges.after_line(by_line.get(i, ()), latest)
    return out


def run_parallel(job: Job, out: BinaryIO) -> Totals:
    """`process_file` with a private directory for the runs (and for standard input, spooled)."""
    tmpdir = tempfile.mkdtemp(prefix="conversions-process-")
    try:
        path = job.path
        if path == "-":
            path = os.path.join(tmpdir, "stdin.ndjson")
            with open(path, "wb") as spool:
                shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        return process_file(replace(job, path=path, tmpdir=tmpdir), out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
