"""A real Redis Cluster on loopback: three masters of Debian's redis-server in cluster mode,
created with `redis-cli --cluster create`, for the tests and the benchmarks of the counters.

Each node keeps an append-only file fsynced before every reply (`appendfsync always`), so a node
killed and started again on the same port and directory comes back with every write it
acknowledged and rejoins the cluster from its `nodes.conf`: what a counters node restart needs to
lose nothing. The cluster bus gets a port of its own (`cluster-port`), so any free port works
for the clients. `url` is the counters' `redis+cluster://` address of every node (README
"Scaling").
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from streams.tools.infra import (
    START_TIMEOUT_S,
    InfraError,
    RedisServer,
    find_redis_server,
    free_port,
    kill_group,
    start_redis,
)

log = logging.getLogger(__name__)

NODE_TIMEOUT_MS = 2_000
"""How long a silent node takes to be judged failed (Redis's default is 15 s): short, so a
restart is seen by the others within a test."""


def find_redis_cli() -> str:
    server = Path(find_redis_server())
    path = shutil.which("redis-cli") or str(server.with_name("redis-cli"))
    if not Path(path).exists():
        raise InfraError("redis-cli not found: install it (`apt-get install redis-tools`)")
    return path


class LocalRedisCluster:
    """`masters` redis-servers in one cluster, no replicas, for as long as the `with` lasts."""

    def __init__(self, workdir: Path | None = None, masters: int = 3) -> None:
        self._own_workdir = workdir is None
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="conversions-cluster-"))).resolve()
        self.masters = masters
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]
        self.nodes: list[RedisServer | None] = [None] * masters

    @property
    def url(self) -> str:
        """Every node as a startup node: the client finds the cluster from any one that answers."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> LocalRedisCluster:
        try:
            for index in range(self.masters):
                self.start_node(index)
            created = subprocess.run(
                [
                    find_redis_cli(),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
            if created.returncode != 0:
                raise InfraError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        log.info("Redis Cluster ready: %s", self.url)
        return self

    def start_node(self, index: int) -> RedisServer:
        """Start node `index` (again): same port, directory, append-only file and nodes.conf."""
        node = start_redis(
            self.workdir,
            port=self.ports[index],
            persistent=True,
            extra=[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(self.bus_ports[index]),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--appendfsync",
                "always",
            ],
        )
        self.nodes[index] = node
        return node

    def kill_node(self, index: int) -> None:
        """SIGKILL node `index`: a crash (what it acknowledged is on disk, see the module)."""
        node = self.nodes[index]
        if node is not None:
            kill_group(node.process)
            self.nodes[index] = None

    def node_of(self, key: str) -> int:
        """The index of the node that serves `key`'s slot."""
        with redis.Redis(port=self.ports[0], socket_timeout=2) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.ports.index(int(master[1]))
        raise InfraError(f"no node serves slot {slot}")

    def wait_ok(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every node says the cluster is ok and knows every other node."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            states = [self._info(port) for port in self.ports]
            if all(
                info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(self.masters)
                for info in states
            ):
                return
            last = str(states)
            time.sleep(0.1)
        raise InfraError(f"the Redis Cluster is not ok after {timeout_s:.0f} s: {last}")

    @staticmethod
    def _info(port: int) -> dict[str, str]:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                text = str(client.execute_command("CLUSTER", "INFO"))
        except redis.RedisError:
            return {}
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def stop(self) -> None:
        for node in self.nodes:
            if node is not None:
                node.stop()
        self.nodes = [None] * self.masters
        if self._own_workdir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.workdir)

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
