"""The `conversions` command.

What a command needs is imported when it runs: the settings and the configuration's pydantic
models are built at import (tens of milliseconds), which `conversions --help` does not need, and
which `process` imports with the collector paused (`streams.offline.collector.paused`).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click
import orjson

from streams.compiled import describe as build_kind
from streams.logging_setup import setup_logging

if TYPE_CHECKING:
    from streams.core.config.matching import CompiledConfig
    from streams.core.config.model import FunnelConfig
    from streams.settings import Settings


def _fail(message: str) -> NoReturn:
    click.secho(message, fg="red", err=True)
    sys.exit(2)


def _frozen_at_exit() -> None:
    """At interpreter shutdown, what is alive frozen (`gc.freeze`): the shutdown's own collections
    (one, then more as the modules are cleared) walk every object not frozen, the whole heap a run
    leaves, for nothing, since the process ends (4.5 % of a one-line `conversions process`'s
    instructions; bench/README.md, issue 30, session 7). Registered once; harmless in a process
    that goes on (a test's), whose end it waits for. So garbage in reference cycles is not
    finalized at shutdown: the command's clean-up must not rely on it (`process` closes its
    files and removes its temporary folders itself)."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def _settings(**overrides: Any) -> Any:
    from streams.settings import SettingsError, load_settings

    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        _fail(str(exc))


def _config(path: str | Path) -> FunnelConfig:
    """The funnel configuration, or exit 2 with its file, line and reason."""
    from streams.core.config.loader import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc))


def _compiled(path: str | Path) -> CompiledConfig:
    """The funnel configuration compiled for the engine, or exit 2 as `_config`."""
    from streams.core.config.matching import compile_config

    return compile_config(_config(path))


_worker_funnels = click.option(
    "--config",
    "funnels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Funnel configuration (YAML); default: CONVERSIONS_FUNNELS or the example.",
)


@click.group()
@click.version_option(
    package_name="conversion-streams", message=f"%(prog)s, version %(version)s, {build_kind()}"
)
def main() -> None:
    """Conversion Streams: real-time micro- and macroconversions from clickstream events."""


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def check_config(path: Path) -> None:
    """Validate a funnel configuration file; exit 2 with file, line and reason if it is bad."""
    config = _config(path)
    click.echo(
        f"{path}: OK ({len(config.goals)} goals, {len(config.funnels)} funnels, "
        f"{len(config.micro)} micro, {len(config.alerts)} alerts, {len(config.experiments)} experiments)"
    )


@main.command("diff-config")
@click.argument("old", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
def diff_config(old: Path, new: Path) -> None:
    """What a restart from state written under OLD does under NEW: per funnel, goal, micro, alert
    and experiment, unchanged, compatible (in-flight attempts continue) or incompatible (they end
    with definition_changed), and what happens to its counters and baselines. Exit 0 when
    nothing is incompatible, 1 otherwise, 2 on a bad file."""
    from streams.core.config.versions import diff_configs

    changes = diff_configs(_config(old), _config(new))
    for change in changes:
        click.echo(change.line())
    incompatible = [c for c in changes if c.incompatible]
    click.echo(f"{len(incompatible)} incompatible of {len(changes)}", err=True)
    sys.exit(1 if incompatible else 0)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Funnel configuration (YAML); default: CONVERSIONS_FUNNELS or the example.",
)
@click.option(
    "--input",
    "input_path",
    default="-",
    show_default=True,
    help="NDJSON events (one message value per line), or - for stdin.",
)
@click.option(
    "--partitions",
    type=int,
    default=None,
    help="Partitions to model (watermarks are per partition); default: the setting.",
)
@click.option(
    "--flush/--no-flush",
    default=False,
    show_default=True,
    help="At the end, let time run out: close open sessions and attempts, judge alerts and "
    "experiments to the input's last event, and end each experiment with a record marked final.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal; none with --workers).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes, each for its share of the people; with more than one, the outputs are "
    "written sorted by event time, then id.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Continue the journeys, event time and evaluators saved in this file (created when "
    "absent) and save them at the end: files processed one after the other give the outputs "
    "of one run over all of them. One process only.",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the run's counts as JSON to this file: lines, events, rejected, unknown fields, "
    "and per funnel version the attempts entered, completed, dropped and open, step by step "
    "(also on stderr).",
)
def process(
    config_path: Path | None,
    input_path: str,
    partitions: int | None,
    flush: bool,
    progress: bool | None,
    workers: int,
    state_path: Path | None,
    summary_path: Path | None,
) -> None:
    """Run the engine over a file, with no Kafka, and write every output as NDJSON to stdout."""
    from streams.offline.collector import paused
    from streams.offline.collector import relaxed as relaxed_collector

    _frozen_at_exit()
    with ExitStack() as collector:
        with paused():  # start-up: what it allocates lives to the end (frozen by `relaxed_collector`)
            from streams.offline.run import OfflineRun, open_input, open_output
            from streams.offline.state import StateFileError, read, restore, write
            from streams.progress import line_progress

            settings = _settings()
            config = _compiled(config_path or settings.funnels)
            # entered (the start-up heap frozen) before the collector is back on, whose first young
            # collection would walk all of it; left at the end of the command
            collector.enter_context(relaxed_collector())
        payload = None
        if state_path is not None:
            if workers > 1:
                _fail("--state runs in one process: leave out --workers")
            try:
                payload = read(state_path)
            except StateFileError as exc:
                _fail(str(exc))
        if input_path != "-" and not Path(input_path).is_file():
            _fail(f"--input {input_path}: no such file (give an NDJSON file, or - for stdin)")
        if input_path == "-" and sys.stdin.isatty():
            click.echo(
                "reading events from stdin (NDJSON, one per line; Ctrl-D ends); --input FILE reads a file",
                err=True,
            )
        latest_ms = settings.latest_accepted_ms()
        out = open_output()
        if workers > 1:
            from streams.offline.parallel import Job, run_parallel

            job = Job(
                config,
                input_path,
                source=f"file:{input_path}",
                partitions=partitions or settings.partitions,
                workers=workers,
                max_message_bytes=settings.max_message_bytes,
                max_batch_events=settings.max_batch_events,
                max_nesting=settings.max_nesting,
                breakdown_cap=settings.breakdown_cap,
                latest_ms=latest_ms,
                flush=flush,
                enrichment=settings.enrichment(),
            )
            totals = run_parallel(job, out)
            counts = (totals.lines, totals.events, totals.rejected)
            unknown = totals.unknown_fields
            funnels = totals.funnels
        else:
            run = OfflineRun(
                config,
                partitions or settings.partitions,
                source=f"file:{input_path}",
                max_message_bytes=settings.max_message_bytes,
                latest_ms=latest_ms,
                max_batch_events=settings.max_batch_events,
                enrichment=settings.enrichment(),
                max_nesting=settings.max_nesting,
                breakdown_cap=settings.breakdown_cap,
            )
            known: list[Any] = []
            if payload is not None:
                resumed, known = restore(run, payload)
                for change in resumed.changes:
                    if change.status != "unchanged":
                        click.echo(f"since the state was saved: {change.line()}", err=True)
                out.write(b"".join(output.to_json() + b"\n" for output in resumed.outputs))
            show = sys.stderr.isatty() if progress is None else progress
            with (
                open_input(input_path) as stream,
                line_progress(stream, input_path, show) as lines,
            ):
                run.write(lines, out, flush=flush)
            if state_path is not None:
                write(state_path, run, known)
                if flush:
                    click.echo(
                        f"--flush: every open session and attempt was closed; {state_path} holds them "
                        "closed (a later run does not continue them)",
                        err=True,
                    )
            counts = (run.lines, run.events, run.rejected)
            unknown = run.unknown_fields
            funnels = run.counts
        out.flush()
        click.echo("{} lines, {} events, {} rejected".format(*counts), err=True)
        if unknown:
            named = ", ".join(f"{name!a} ({count})" for name, count in sorted(unknown.items())[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            click.echo(f"fields the contract does not have, ignored: {named}{more}", err=True)
        for line in funnels.lines():
            click.echo(line, err=True)
        if summary_path is not None:
            summary = {
                "lines": counts[0],
                "events": counts[1],
                "rejected": counts[2],
                "unknown_fields": dict(sorted(unknown.items())),
                "flushed": flush,
                "funnels": funnels.to_json(),
            }
            summary_path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")


_partitions = click.option(
    "--partitions",
    type=int,
    default=None,
    help="Partitions of the internal and output topics (default: CONVERSIONS_PARTITIONS, 4).",
)
_app_id = click.option(
    "--app-id",
    default=None,
    help="Consumer groups, changelog and counter keys are named after it (default: CONVERSIONS_APP_ID).",
)


@main.command()
@_worker_funnels
@_partitions
@click.option(
    "--web-port", type=int, default=None, help="The web server's port (default: CONVERSIONS_WEB_PORT)."
)
@_app_id
def worker(funnels: Path | None, partitions: int | None, web_port: int | None, app_id: str | None) -> None:
    """Run a worker against KAFKA_BOOTSTRAP_SERVERS (see `conversions demo` for a local one)."""
    settings = _settings(funnels=funnels, partitions=partitions, web_port=web_port, app_id=app_id)
    setup_logging(settings.log_level)
    if not settings.kafka_bootstrap_servers:
        _fail(
            "KAFKA_BOOTSTRAP_SERVERS is not set: point it at a broker, "
            "or run `conversions demo` for an embedded one"
        )
    _config(settings.funnels)  # refused before anything connects
    _ports_free(settings)
    from streams.worker import run_worker

    run_worker(settings)


def _ports_free(settings: Any) -> None:
    """A second worker on one host would otherwise start, fail to bind inside Faust and stop
    30 s later with an OSError among the log lines."""
    import socket

    wanted = []
    if settings.web_enabled:
        how = "--web-port or CONVERSIONS_WEB_PORT"
        wanted.append(("web server", settings.web_host, settings.web_port, how))
    if settings.collector_enabled:
        how = "CONVERSIONS_COLLECTOR_PORT"
        wanted.append(("collector", settings.collector_host, settings.collector_port, how))
    for what, host, port, how in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                _fail(
                    f"the {what}'s address {host}:{port} is taken ({exc.strerror}): is another worker "
                    f"running on this host? Give this one another port with {how}"
                )


@main.command()
@_worker_funnels
@_partitions
@_app_id
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics of this process at /metrics on this port (on CONVERSIONS_WEB_HOST).",
)
def counters(
    funnels: Path | None, partitions: int | None, app_id: str | None, metrics_port: int | None
) -> None:
    """Apply the outputs to the Redis counters in a process of its own (with the workers'
    CONVERSIONS_COUNTERS_ENABLED=false): the workers' event loops then run only the journeys.
    Like a worker it counts CONVERSIONS_GENERATION, else the current generation, and stops once
    that generation is retired."""
    settings = _settings(funnels=funnels, partitions=partitions, app_id=app_id)
    setup_logging(settings.log_level)
    if not settings.kafka_bootstrap_servers:
        _fail("KAFKA_BOOTSTRAP_SERVERS is not set")
    if not settings.redis_dsn:
        _fail("REDIS_URL is not set")
    _config(settings.funnels)  # refused before anything connects
    from streams.counters.service import run_counters
    from streams.generations.current import GenerationRefused

    try:
        run_counters(settings, metrics_port)
    except GenerationRefused as exc:  # CONVERSIONS_GENERATION names a retired or unknown one
        _fail(str(exc))


@main.command()
@click.option(
    "--config",
    "new_config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The configuration to deploy (YAML).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Reprocessing workers started here (0: start them on other hosts with the command printed).",
)
@click.option(
    "--accept-short-history",
    is_flag=True,
    help="Deploy even when the retained clickstream is shorter than a funnel window or an alert baseline.",
)
@click.option("--no-cut-over", is_flag=True, help="Reprocess and show the progress, never flip `current`.")
@click.option(
    "--max-lag",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Cut over once at most this many input records are not yet processed...",
)
@click.option(
    "--tolerance",
    default="1m",
    show_default=True,
    help="...and the new generation's event time is within this of the current one's.",
)
@click.option("--web-port", type=int, default=None, help="Serve the web from the first worker started here.")
@click.option(
    "--history",
    "history_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An archived clickstream export (NDJSON, one message value a line), older than Kafka keeps; "
    "repeat for several, oldest first. Offline mode reads them first and hands its state over to "
    "the new generation. Needs --history-offsets.",
)
@click.option(
    "--history-offsets",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"<topic>/<partition>": offset}: per clickstream partition, the first offset not in '
    "the archive, where the new generation continues on Kafka.",
)
def deploy(
    new_config: Path,
    workers: int,
    accept_short_history: bool,
    no_cut_over: bool,
    max_lag: int,
    tolerance: str,
    web_port: int | None,
    history_files: tuple[Path, ...],
    history_offsets: Path | None,
) -> None:
    """Deploy a configuration with its history: a new generation reprocesses the retained
    clickstream while the current one serves, then the web and the alerts switch to it at once.
    Exit 0 when cut over (or recorded, with --no-cut-over), 1 when refused, 2 on a bad file."""
    import asyncio

    from streams.core.config.durations import parse_duration_ms
    from streams.generations.history import HistoryError, read_offsets
    from streams.tools.deploy import deploy as run_deploy

    settings = _settings()
    setup_logging("WARNING")
    _config(new_config)
    if not settings.kafka_bootstrap_servers or not settings.redis_dsn:
        _fail("KAFKA_BOOTSTRAP_SERVERS and REDIS_URL must be set")
    if bool(history_files) != (history_offsets is not None):
        _fail("--history and --history-offsets go together: the archive, and where Kafka continues it")
    offsets = None
    if history_offsets is not None:
        try:
            offsets = read_offsets(history_offsets)
        except HistoryError as exc:
            _fail(str(exc))
    try:
        tolerance_ms = parse_duration_ms(tolerance)
    except ValueError as exc:
        _fail(f"--tolerance: {exc}")
    status = asyncio.run(
        run_deploy(
            settings,
            new_config.read_text(),
            click.echo,
            workers=workers,
            accept_short_history=accept_short_history,
            cut_over=not no_cut_over,
            max_lag=max_lag,
            tolerance_ms=tolerance_ms,
            web_port=web_port,
            history_files=history_files,
            history_offsets=offsets,
        )
    )
    sys.exit(status)


@main.command()
def rollback() -> None:
    """Make the previous generation current again (while its topics and keys still exist)."""
    import asyncio

    from streams.tools.deploy import rollback as run_rollback

    settings = _settings()
    if not settings.redis_dsn:
        _fail("REDIS_URL must be set")
    sys.exit(asyncio.run(run_rollback(settings, click.echo)))


@main.command()
@click.option(
    "--delete", "delete", type=int, default=None, help="Delete this retired generation's topics and keys."
)
@click.option("--grace", default="24h", show_default=True, help="...if it retired at least this long ago.")
@click.option(
    "--abandon",
    "abandon",
    type=int,
    default=None,
    help="Retire this reprocessing generation without a cut-over (its workers stop): a deploy "
    "given up, or one that died during its history hand-off.",
)
def generations(delete: int | None, grace: str, abandon: int | None) -> None:
    """The generations recorded (current first), delete a retired one, or abandon one still
    reprocessing."""
    import asyncio

    from streams.core.config.durations import parse_duration_ms
    from streams.tools.deploy import abandon_generation, delete_generation, list_generations

    settings = _settings()
    if not settings.redis_dsn:
        _fail("REDIS_URL must be set")
    if delete is not None:
        try:
            grace_ms = parse_duration_ms(grace)
        except ValueError as exc:
            _fail(f"--grace: {exc}")
        sys.exit(asyncio.run(delete_generation(settings, delete, grace_ms, click.echo)))
    if abandon is not None:
        sys.exit(asyncio.run(abandon_generation(settings, abandon, click.echo)))
    current, listed = asyncio.run(list_generations(settings))
    for generation in listed:
        mark = "*" if generation.number == current else " "
        click.echo(
            f"{mark} {generation.number}  {generation.app_id}  {generation.state}  {generation.fingerprint}"
            + (f"  (pending: {generation.pending})" if generation.pending is not None else "")
        )


@main.command()
@click.option("--check", is_flag=True, help="Exit 1 if the committed schemas differ from the models.")
def schemas(check: bool) -> None:
    """Write schemas/*.json from the pydantic models."""
    from streams import schemas as schema_files

    if check:
        drifted = schema_files.drift()
        if drifted:
            click.secho(
                f"schemas out of date: {', '.join(drifted)} (run `conversions schemas`; the example "
                "configuration is edited in streams/examples/funnels.yaml and copied to schemas/)",
                fg="red",
                err=True,
            )
            sys.exit(1)
        click.echo("schemas up to date")
        return
    for path in schema_files.write():
        click.echo(f"wrote {path}")


@main.command("docs-reference")
@click.option("--check", is_flag=True, help="Exit 1 if a committed reference page differs from the code.")
def docs_reference(check: bool) -> None:
    """Write the docs site's generated reference pages (docs/reference/) from the code."""
    from streams.tools import docs_reference as reference

    if check:
        drifted = reference.drift(main)
        if drifted:
            click.secho(
                f"docs reference out of date: {', '.join(drifted)} (run `conversions docs-reference`)",
                fg="red",
                err=True,
            )
            sys.exit(1)
        click.echo("docs reference up to date")
        return
    for path in reference.write(main):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--users", type=int, default=1_000, show_default=True, help="People visiting the shop.")
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Random seed: one seed, one traffic.",
)
@click.option("--days", type=float, default=7.0, show_default=True, help="Simulated days of history.")
@click.option(
    "--bad-rate", type=float, default=0.0, show_default=True, help="Share of extra malformed events mixed in."
)
@click.option(
    "--output", "output_path", default="-", show_default=True, help="NDJSON file to write, or - for stdout."
)
@click.option("--to-kafka", is_flag=True, help="Send to the clickstream topic instead of a file.")
@click.option(
    "--rate",
    type=float,
    default=None,
    help="With --to-kafka: live traffic at this many events per second, in real time.",
)
@click.option("--seconds", type=float, default=None, help="With --rate: stop after this long.")
@click.option(
    "--identities",
    type=click.Choice(["stitched", "single"]),
    default="stitched",
    show_default=True,
    help="stitched: anonymous browsing, sign-in at checkout, server-side orders, second devices; "
    "single: one id per person.",
)
def simulate(
    users: int,
    seed: int,
    days: float,
    bad_rate: float,
    output_path: str,
    to_kafka: bool,
    rate: float | None,
    seconds: float | None,
    identities: str,
) -> None:
    """Generate realistic shop traffic: a week of history as NDJSON, or live to Kafka."""
    import asyncio

    from streams.tools.simulate import Simulator

    if to_kafka:
        settings = _settings()
        setup_logging(settings.log_level)
        if not settings.kafka_bootstrap_servers:
            _fail("KAFKA_BOOTSTRAP_SERVERS is not set")
        if rate is not None:
            sent = asyncio.run(_live(settings, rate, users, seconds, bad_rate))
        else:
            from streams.tools.producer import produce_lines

            sim = Simulator(
                seed=seed, users=users, days=days, bad_rate=bad_rate, stitched=identities == "stitched"
            )
            sent = asyncio.run(produce_lines(settings, sim.lines()))
        click.echo(f"{sent} events sent", err=True)
        return
    sim = Simulator(seed=seed, users=users, days=days, bad_rate=bad_rate, stitched=identities == "stitched")
    target = sys.stdout.buffer if output_path == "-" else open(output_path, "wb")  # noqa: SIM115
    count = 0
    with target:
        for line in sim.lines():
            target.write(line + b"\n")
            count += 1
    click.echo(f"{count} lines", err=True)


async def _live(settings: Any, rate: float, users: int, seconds: float | None, bad_rate: float) -> int:
    import asyncio
    import signal

    from streams.tools.live_traffic import LiveTraffic

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if seconds is not None:
        loop.call_later(seconds, stop.set)
    stats = await LiveTraffic(rate=rate, users=users, bad_rate=bad_rate or 0.005).run(settings, stop)
    return stats.sent


@main.command()
@click.argument("funnel", required=False)
@click.option(
    "--window",
    default=None,
    help="How far back from the end (default 1h; with --experiment, all the counters hold).",
)
@click.option("--end", default=None, help="RFC 3339 end of the window (default: the latest counted event).")
@click.option("--by", default=None, help="A breakdown of the funnel, e.g. context.platform.")
@click.option(
    "--experiment",
    default=None,
    help="An experiment instead of a funnel: per variant, its steps, rate, lift and always-valid decision.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def report(
    funnel: str | None,
    window: str | None,
    end: str | None,
    by: str | None,
    experiment: str | None,
    as_json: bool,
) -> None:
    """A funnel's step counts and rates, or an experiment's decision, from the Redis counters:
    needs REDIS_URL (the workers' Redis) and the workers' CONVERSIONS_APP_ID and funnels."""
    import asyncio
    from datetime import datetime

    from streams.core.config.durations import parse_duration_ms
    from streams.tools.report import NothingCounted, funnel_report, print_report

    settings = _settings()
    if not settings.redis_dsn:
        _fail("REDIS_URL is not set")
    config = _compiled(settings.funnels)
    if experiment is not None or funnel is None:
        _experiment_report(settings, config, funnel, experiment, window, end, by, as_json)
        return
    window = window or "1h"
    compiled = config.funnels_by_name.get(funnel)
    if compiled is None:
        _fail(f"no funnel {funnel!r}; the configuration has: {', '.join(config.funnels_by_name)}")
    assert compiled is not None
    if by is not None and by not in compiled.breakdowns:
        _fail(f"{funnel} has no breakdown {by!r}; it has: {', '.join(compiled.breakdowns) or 'none'}")
    try:
        window_ms = parse_duration_ms(window)
        end_at = datetime.fromisoformat(end) if end else None
    except ValueError as exc:
        _fail(str(exc))
    try:
        result = asyncio.run(funnel_report(settings, compiled, window_ms, end_at, by))
    except NothingCounted as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        print_report(result)


def _experiment_report(
    settings: Settings,
    config: CompiledConfig,
    funnel: str | None,
    experiment: str | None,
    window: str | None,
    end: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """`report --experiment NAME`: the experiment judged again from the counters' minutes."""
    import asyncio
    from datetime import datetime

    from streams.core.config.durations import parse_duration_ms
    from streams.tools.report import NothingCounted, experiment_report, print_experiment

    names = [e.name for e in config.source.experiments]
    if experiment is None:
        _fail("name a funnel, or an experiment with --experiment NAME")
    if funnel is not None or by is not None:
        _fail("--experiment reports one experiment: leave out the funnel and --by")
    if experiment not in names:
        _fail(f"no experiment {experiment!r}; the configuration has: {', '.join(names) or 'none'}")
    try:
        window_ms = parse_duration_ms(window) if window is not None else None
        end_at = datetime.fromisoformat(end) if end else None
    except ValueError as exc:
        _fail(str(exc))
    try:
        result = asyncio.run(experiment_report(settings, config, experiment, window_ms, end_at))
    except NothingCounted as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        print_experiment(result)


@main.command()
def topics() -> None:
    """Create every topic the workers use (idempotent); for deployments that pre-create topics."""
    import asyncio

    from streams.kafka import ensure_topics

    settings = _settings()
    setup_logging(settings.log_level)
    if not settings.kafka_bootstrap_servers:
        _fail("KAFKA_BOOTSTRAP_SERVERS is not set")
    created = asyncio.run(ensure_topics(settings))
    click.echo(f"created {len(created)} topics: {', '.join(created)}" if created else "all topics exist")


@main.command()
@click.option("--rate", type=float, default=200.0, show_default=True, help="Events per second.")
@click.option("--users", type=int, default=20_000, show_default=True)
@click.option("--seconds", type=float, default=None, help="Stop after this long (default: Ctrl-C).")
@click.option(
    "--speed",
    type=click.FloatRange(min=0.01),
    default=20.0,
    show_default=True,
    help="How much faster than real time the simulated shop clock runs.",
)
@click.option(
    "--incident-at",
    default="20m",
    show_default=True,
    help="Plant an incident (mobile payment rate falls to 0.3) this far into simulated time; 'off' for none.",
)
@click.option(
    "--incident-for", default="40m", show_default=True, help="How long the incident lasts (simulated)."
)
@click.option(
    "--via",
    type=click.Choice(["broker", "collector"]),
    default="broker",
    show_default=True,
    help="Send the traffic to the clickstream topic, or as Segment messages to the worker's collector.",
)
def demo(
    rate: float,
    users: int,
    seconds: float | None,
    speed: float,
    incident_at: str,
    incident_for: str,
    via: Literal["broker", "collector"],
) -> None:
    """Embedded broker and Redis, a worker, simulated shop traffic, the live dashboard and summary."""
    from datetime import timedelta

    from streams.core.config.durations import parse_duration_ms
    from streams.tools.demo import run_demo
    from streams.tools.infra import InfraError
    from streams.tools.live_traffic import LiveTraffic

    settings = _settings()
    setup_logging("WARNING")
    try:
        after = None if incident_at == "off" else timedelta(milliseconds=parse_duration_ms(incident_at))
        lasting = timedelta(milliseconds=parse_duration_ms(incident_for))
    except ValueError as exc:
        _fail(f"--incident-at/--incident-for: {exc}")
    traffic = LiveTraffic(
        rate=rate, users=users, speed=speed, incident_after=after, incident_for=lasting, audience=True
    )
    try:
        sys.exit(run_demo(settings, traffic, seconds=seconds, via=via))
    except InfraError as exc:
        _fail(f"could not start the local infrastructure: {exc}")


@main.command()
@click.option(
    "--redis-cluster",
    is_flag=True,
    help="A three-master Redis Cluster (redis-server in cluster mode) instead of one Redis.",
)
def infra(redis_cluster: bool) -> None:
    """Start a local broker and Redis, print their addresses, run until Ctrl-C."""
    import contextlib
    import time

    from streams.tools.infra import InfraError, LocalInfra, stopped_by_signals
    from streams.tools.redis_cluster import LocalRedisCluster

    setup_logging("INFO")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(stopped_by_signals())
            cluster = stack.enter_context(LocalRedisCluster()) if redis_cluster else None
            local = stack.enter_context(LocalInfra(redis_url=cluster.url if cluster else None))
            redis_url = cluster.url if cluster else local.redis_url
            addresses = {"KAFKA_BOOTSTRAP_SERVERS": local.kafka_bootstrap, "REDIS_URL": redis_url}
            click.echo(orjson.dumps(addresses).decode())
            click.echo(f"export KAFKA_BOOTSTRAP_SERVERS={local.kafka_bootstrap} REDIS_URL={redis_url}")
            sys.stdout.flush()
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                click.echo("stopping", err=True)
    except InfraError as exc:
        _fail(f"could not start the local infrastructure: {exc}")


@main.command()
@click.option("--user-id", default=None, help="The user id to erase.")
@click.option("--anonymous-id", default=None, help="The anonymous id to erase.")
def forget(user_id: str | None, anonymous_id: str | None) -> None:
    """Erase a person: the workers delete their journey and link stubs, and drop their events
    stamped before now; an `erasure` record goes to the erasures topic (docs/howto/erase-a-person.md)."""
    import asyncio

    from streams.kafka import ensure_topics
    from streams.kafka.erasures import forget as record_erasure

    if not user_id and not anonymous_id:
        _fail("give --user-id, --anonymous-id or both")
    settings = _settings()

    async def run() -> Any:
        await ensure_topics(settings)
        return await record_erasure(settings, user_id=user_id, anonymous_id=anonymous_id)

    record = asyncio.run(run())
    click.echo(f"erasure {record.id} recorded at {record.timestamp.isoformat()}")


if __name__ == "__main__":
    main()
