"""A real Redis Cluster for tests: three masters on loopback, no replicas, each with its
own port and its own directory (AOF on), so a node killed with -9 and started again
reloads what it held.

A test module takes the fixtures with ``pytest_plugins = ["cluster"]`` (or imports them:
``from cluster import redis_cluster``); the cluster is started once per test module. It
needs ``redis-server`` and ``redis-cli`` on PATH.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis

from processes import stop, stop_all, wait_for

# A node also listens on its port + 10000 (the cluster bus), so ports are drawn below
# 55536 rather than taken from the kernel's ephemeral range, which reaches 65535.
BUS_OFFSET = 10000
PORT_RANGE = (20000, 30000)
START_TIMEOUT = 20.0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` ports that are free on loopback, each with its bus port free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(*PORT_RANGE)
        if port not in ports and _bindable(port) and _bindable(port + BUS_OFFSET):
            ports.append(port)
    return ports


class LocalCluster:
    """``masters`` redis-server processes in cluster mode under ``directory``, one folder
    per node (``<directory>/<port>``: AOF, ``nodes-<port>.conf``, ``redis.log``)."""

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        appendfsync: str = "always",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        # "always": a write is in the AOF before its reply, so a kill -9 right after keeps
        # it. With everysec (production's) a write may wait out a slow fsync, unwritten.
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.ports = free_cluster_ports(masters)
        self.processes: dict[int, subprocess.Popen] = {}
        self.server = shutil.which("redis-server") or "redis-server"
        self.cli = shutil.which("redis-cli") or "redis-cli"

    @property
    def url(self) -> str:
        """The first node's URL: any node will do for a cluster client."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def node_dir(self, port: int) -> Path:
        return self.directory / str(port)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (cluster commands, INFO; keys only of its slots)."""
        return redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=5)

    def start(self) -> LocalCluster:
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            self._wait_loaded(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        done = subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self.wait_ok()
        return self

    def _spawn(self, port: int) -> None:
        directory = self.node_dir(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.server,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",  # in --dir, which Redis enters
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--dir", str(directory.resolve()),
            "--save", "",
            "--logfile", "redis.log",
            *self.extra_args,
        ]
        self.processes[port] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _answers(self, port: int) -> bool:
        client = self.node(port)
        try:
            return client.info("persistence").get("loading", 0) == 0
        except redis.ConnectionError:
            return False
        except redis.ResponseError as exc:  # LOADING its AOF
            if "LOADING" not in str(exc):
                raise
            return False
        finally:
            client.close()

    def _wait_loaded(self, port: int, timeout: float = START_TIMEOUT) -> None:
        def loaded() -> bool:
            process = self.processes[port]
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on {port} exited with code {process.returncode}: see"
                    f" {self.node_dir(port) / 'redis.log'}"
                )
            return self._answers(port)

        wait_for(loaded, timeout, f"redis-server on {port} to load its data")

    def state(self, port: int) -> str:
        """``cluster_state`` as the node on ``port`` sees it; "down" if it does not answer."""
        client = self.node(port)
        try:
            return str(client.cluster("info").get("cluster_state", "?"))
        except redis.RedisError:
            return "down"
        finally:
            client.close()

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every node says ``cluster_state:ok``."""

        def states() -> dict[int, str]:
            return {port: self.state(port) for port in self.ports}

        wait_for(
            lambda: all(s == "ok" for s in states().values()),
            timeout,
            lambda: f"cluster_state:ok on every node; have {states()}",
        )

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``: no shutdown, no last AOF rewrite."""
        stop(self.processes[port], signal.SIGKILL)

    def restart(self, port: int) -> None:
        """Start the node on ``port`` again, on the same folder (its AOF and nodes.conf),
        and wait until the whole cluster is ok again."""
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            self.kill(port)
        self._spawn(port)
        self._wait_loaded(port)
        # A master that rejoins waits ~2 s before it serves writes (CLUSTER_WRITABLE_DELAY).
        self.wait_ok()

    def stop(self) -> None:
        stop_all(self.processes.values(), timeout=10)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running three-master cluster, for every test of a module."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_env(
    redis_cluster: LocalCluster, redis_server, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """This process's environment pointed at the cluster (THRONOS_REDIS_CLUSTER=1) for the
    state, and at the tests' plain Redis for the broker, as production must be; settings
    are read again (tests/conftest.py). Returns the variables it set."""
    values = {
        "REDIS_URL": redis_cluster.url,
        "THRONOS_REDIS_CLUSTER": "1",
        "CELERY_BROKER_URL": redis_server.url,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values
