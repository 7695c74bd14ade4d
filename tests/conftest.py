"""Shared fixtures: a private Redis server and real Celery worker processes.

Tests never touch the machine's shared Redis: each session starts its own redis-server on a
free port, and every test starts from an empty database.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from thronos_analytics.core.messages import EX_RESTART, SCORING, TRAINING
from thronos_analytics.producers.ai_ledger import Recorder
from thronos_analytics.stack import RedisServer, free_port, worker_command

from processes import stop_all, wait_for

ROOT = Path(__file__).resolve().parents[1]
# The Celery app reads REDIS_URL when first imported, so the test Redis's address is fixed
# before any test imports it.
REDIS_PORT = free_port()
os.environ["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
os.environ.pop("CELERY_BROKER_URL", None)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=REDIS_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def recorders() -> Iterator[Callable[..., Recorder]]:
    """Makes Recorders, and stops their outboxes after the test: one left running would
    keep sending its unconfirmed rows into the next test's Redis."""
    made: list[Recorder] = []

    def make(*args: Any, **kwargs: Any) -> Recorder:
        made.append(Recorder(*args, **kwargs))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close(0)


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Environment pointing this process and its children at the test Redis and a tmp dir."""
    values = {
        "REDIS_URL": redis_server.url,
        "THRONOS_DATA_DIR": str(tmp_path / "data"),
        "THRONOS_LEDGER": str(tmp_path / "data" / "ai_ledger.jsonl"),
        # The simulator's ledgers span 14 days (SimConfig.days), more than the default
        # horizon of 8: with it, their oldest rows would be counted late and not flagged.
        # tests/test_retention.py tests the horizon itself, with its own setting.
        "THRONOS_RETENTION_DAYS": "30",
    }
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


@pytest.fixture
def r(env: dict, redis_server: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    return client


class Workers:
    """Real Celery worker processes, started with the test's environment."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: dict[str, tuple[str, int, dict | None]] = {}

    def start(
        self, name: str, queues: str = SCORING, concurrency: int = 1, extra_env: dict | None = None
    ) -> subprocess.Popen:
        process = subprocess.Popen(
            worker_command(name, queues, concurrency, "WARNING"),
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
        )
        self.processes[name] = process
        self.started[name] = (queues, concurrency, extra_env)
        return process

    def start_again_those_that_asked(self) -> list[str]:
        """What `run` does: a worker that exited with EX_RESTART (its watchdog saw its
        consumer stalled) is started again; the names started."""
        asked = [n for n, p in self.processes.items() if p.poll() == EX_RESTART]
        for name in asked:
            self.start(name, *self.started[name])
        return asked

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every started worker answers a ping."""
        from thronos_analytics.workers.celery_app import app

        def ready() -> bool:
            try:
                replies = app.control.ping(timeout=0.5) or []
            except Exception:  # a connection left stale by a Redis restart: ping again
                return False
            names = {name.split("@")[0] for reply in replies for name in reply}
            return set(self.processes) <= names

        def waited_for() -> str:
            exited = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
            return f"workers ready: {sorted(self.processes)}; exited (code): {exited}"

        wait_for(ready, timeout, waited_for)

    def stop(self) -> None:
        stop_all(self.processes.values())


@pytest.fixture
def workers(env: dict, r: redis.Redis) -> Iterator[Workers]:
    pool = Workers(env)
    yield pool
    pool.stop()


__all__ = ["SCORING", "TRAINING", "Workers"]


@pytest.fixture(autouse=True)
def _settings_from_this_tests_environment() -> Iterator[None]:
    """Settings are read once per process: a test that sets a variable reads them again."""
    from thronos_analytics.core.settings import use_settings

    use_settings(None)
    yield
    use_settings(None)
