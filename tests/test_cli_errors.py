"""What a user meets when something is wrong: one line that says what to do, a non-zero
exit, no traceback (unless --debug); and the commands that find a running stack by its
data dir alone.

Everything runs the real command line in a subprocess, against the test Redis, a closed
port for a Redis that is down, and a real stack started by `run`.
"""

from __future__ import annotations

import ctypes
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.contract import Rejection, Row, parse_line
from thronos_analytics.core.messages import SCORING
from thronos_analytics.stack import STATE_FILE, free_port

from processes import stop, wait_for

CLI = [sys.executable, "-m", "thronos_analytics.cli"]


def cli(env: dict, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=timeout, **kwargs)


def assert_one_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert "Traceback" not in err, err[-3000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err[-3000:]
    for needle in needles:
        assert needle in err, err
    return err


def redis_down(env: dict) -> dict:
    return {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


def no_stack(env: dict, data_dir: Path) -> dict:
    """No REDIS_URL, and a data dir no stack runs on."""
    values = {k: v for k, v in env.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    return {**values, "THRONOS_DATA_DIR": str(data_dir)}


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "small.jsonl"
    write(SimConfig(rows=200, seed=5, bad_rate=0.02), path)
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


# --- each command's main error --------------------------------------------------------

# command -> (how to set it up, its arguments, what the line says)
MAIN_ERRORS: dict[str, tuple[str, list[str], str]] = {
    "run": ("redis down", ["run", "--no-demo", "--ledger", "{ledger}"], "cannot reach Redis"),
    "simulate": ("", ["simulate", "--out", "{tmp}"], "is a directory"),
    "backfill": ("broker down", ["backfill", "{ledger}"], "cannot reach the broker"),
    "tail": ("no stack", ["tail", "--ledger", "{ledger}"], "no stack is running"),
    "recommend": ("", ["recommend", "--use-case", "coding"], "does not exist yet"),
    "status": ("redis down", ["status"], "cannot reach Redis"),
    "flags": ("no stack", ["flags"], "no stack is running"),
    "worker": ("no stack", ["worker"], "no stack is running"),
    "beat": ("no stack", ["beat"], "no stack is running"),
    "flower": ("no stack", ["flower"], "no stack is running"),
    "metrics": ("busy port", ["metrics", "--port", "{port}"], "pass another --port"),
}


def setup_for(how: str, env: dict, tmp_path: Path) -> dict:
    if how == "redis down":
        return redis_down(env)
    if how == "broker down":
        return {**env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    if how == "no stack":
        return {**no_stack(env, tmp_path / "empty"), "FLOWER_BASIC_AUTH": "a:b"}
    return env


@pytest.mark.parametrize("command", sorted(MAIN_ERRORS))
def test_each_commands_main_error_is_one_line(command, env, r, tmp_path, ledger, busy_port):
    how, args, needle = MAIN_ERRORS[command]
    values = {"ledger": str(ledger), "tmp": str(tmp_path), "port": str(busy_port)}
    args = [a.format(**values) for a in args]
    started = time.monotonic()
    err = assert_one_line(cli(setup_for(how, env, tmp_path), *args), needle)
    # No reconnect loop: a broker or Redis that is down is said at once.
    assert time.monotonic() - started < 15, err


def test_every_command_of_the_readme_table_has_its_main_error_tested():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in table.splitlines():
        if line.startswith("| `thronos-analytics "):
            first = line.split("`")[1].removeprefix("thronos-analytics ")
            named |= {part.split()[0] for part in first.split(" / ")}
    assert named and named <= set(MAIN_ERRORS), named - set(MAIN_ERRORS)


def test_redis_down_for_backfill_is_one_line_too(env, ledger):
    assert_one_line(cli(redis_down(env), "backfill", str(ledger)), "cannot reach Redis")


def test_a_stale_stack_file_is_named(env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    stale = {
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "broker_url": "",
        "pid": 2**22 + 1,  # above pid_max's default: never a live process
        "started_at": 0,
        "data_dir": str(data),
        "ports": {},
        "logs": {},
    }
    (data / STATE_FILE).write_bytes(orjson.dumps(stale))
    assert_one_line(cli(no_stack(env, data), "status"), "has stopped", "thronos-analytics run")


@pytest.mark.parametrize(
    "how", [["--debug", "status"], ["--debug", "backfill", "{ledger}"], ["status", "env"]]
)
def test_debug_shows_the_traceback(how, env, ledger):
    args = [a.format(ledger=ledger) for a in how if a != "env"]
    extra = {"THRONOS_DEBUG": "1"} if "env" in how else {}
    done = cli({**redis_down(env), **extra}, *args)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "Traceback" in err and "ConnectionError" in err, err[-2000:]


def test_version_and_help_show_only_positive_flags(env):
    done = cli(env, "--version")
    assert done.returncode == 0 and done.stdout.startswith(b"thronos-analytics ")
    for command in ("run", "flower", "simulate"):
        shown = cli({**env, "COLUMNS": "200"}, command, "--help").stdout.decode()
        assert "--no-flower-no-auth" not in shown and "--no-no-auth" not in shown
        assert "--no-drain" not in shown and "--no-force" not in shown
        assert "--no-json" not in shown and "--no-follow" not in shown


# --- an unreadable ledger -------------------------------------------------------------


def _without_root_powers() -> Callable[[], None] | None:
    """Root reads any file: a child without CAP_DAC_OVERRIDE/READ_SEARCH is refused like
    anyone else. None when not root (chmod alone does it)."""
    if os.geteuid() != 0:
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def drop() -> None:
        for cap in (cap_dac_override, cap_dac_read_search):
            if prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                os._exit(99)

    return drop


@pytest.mark.parametrize("command", ["backfill", "tail", "run"])
def test_an_unreadable_ledger_is_one_line(command, env, ledger):
    ledger.chmod(0)
    args = {
        "backfill": ["backfill", str(ledger)],
        "tail": ["tail", "--ledger", str(ledger)],
        "run": ["run", "--drain", "--ledger", str(ledger)],
    }[command]
    try:
        done = cli(env, *args, preexec_fn=_without_root_powers())
    finally:
        ledger.chmod(0o644)
    if done.returncode == 99:
        pytest.skip("cannot drop root's file powers here")
    assert_one_line(done, str(ledger), "permission denied")


# --- flags, recommend, status ---------------------------------------------------------


def test_flags_id_prints_that_flag_or_says_there_is_none(env, r, ledger):
    rows = [p for p in map(parse_line, ledger.read_bytes().splitlines()) if type(p) is Row]
    version = "20260301T120000.000000"  # a model version, as store.publish_model names them
    flags = [
        {"id": row.id, "anomaly_score": 0.5, "is_anomaly": False, "model_version": version}
        for row in rows[:3]
    ]
    store.apply_batch(r, rows[:3], flags)
    store.apply_batch(r, rows[3:4], None)  # seen, parked: no model yet

    done = cli(env, "flags", "--id", rows[1].id)
    assert done.returncode == 0, done.stderr.decode()
    (line,) = done.stdout.splitlines()
    assert orjson.loads(line)["id"] == rows[1].id

    assert_one_line(cli(env, "flags", "--id", "nope"), "no flag for nope", "no row")
    assert_one_line(cli(env, "flags", "--id", rows[3].id), rows[3].id, "waits for a model")


def analytics_file(data: Path) -> None:
    import pandas as pd

    from thronos_analytics.analytics.recommend import fit_recommender

    rows = [("coding", "claude", f"w{i % 5}", 0.85, 2000.0, 4.0) for i in range(50)]
    rows += [("coding", "local", f"w{i % 5}", 0.6, 300.0, 0.2) for i in range(50)]
    columns = ["use_case", "provider", "wallet", "score", "latency_ms", "credits_used"]
    model = fit_recommender(pd.DataFrame(rows, columns=columns).assign(ts=range(len(rows))))
    data.mkdir(parents=True, exist_ok=True)
    document = {"recommendations": {"model": model}}
    (data / "ai_analytics.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    )


def test_recommend_says_an_unknown_wallet_gets_the_global_ranking(env, tmp_path):
    data = tmp_path / "data"
    analytics_file(data)
    # No Redis needed: the export file is all it reads.
    offline = {**redis_down(env), "THRONOS_DATA_DIR": str(data)}
    known = cli(offline, "recommend", "--use-case", "coding", "--wallet", "w1", "--json")
    assert known.returncode == 0 and known.stderr == b"", known.stderr.decode()
    unknown = cli(offline, "recommend", "--use-case", "coding", "--wallet", "stranger", "--json")
    assert unknown.returncode == 0, unknown.stderr.decode()
    note = unknown.stderr.decode()
    assert "stranger" in note and "unknown" in note and "global" in note
    assert len(note.strip().splitlines()) == 1
    plain = cli(offline, "recommend", "--use-case", "coding", "--json")
    assert orjson.loads(unknown.stdout) == orjson.loads(plain.stdout)


def test_status_json_gives_numbers_as_numbers_and_the_state_warning(env, r, tmp_path):
    from thronos_analytics.workers.export import write_analytics

    data = Path(env["THRONOS_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    path = data / "ai_analytics.json"
    # An earlier export that accounted for more: this one is flagged.
    path.write_bytes(orjson.dumps({"stats": {"interactions_scored": 100}}))
    write_analytics(r, path)
    # Three rows whose rating cannot be read: kept, with the source counted as dropped.
    line = {"provider": "claude", "meta": {"rating": "lots"}}
    unreadable = [
        parse_line(orjson.dumps({**line, "id": f"x{i}", "ts": 1772366400 + i})) for i in range(3)
    ]
    assert all(type(row) is Row and row.dropped == "meta.rating" for row in unreadable)
    store.apply_batch(r, unreadable, None)

    done = cli(env, "status", "--json")
    assert done.returncode == 0, done.stderr.decode()
    report = orjson.loads(done.stdout)
    export = report["last_export"]
    assert isinstance(export["generated_at"], float) and isinstance(export["duration_s"], float)
    assert isinstance(export["interactions_scored"], int) and export["path"] == str(path)
    assert all(not isinstance(v, str) for k, v in export.items() if not k.endswith("path"))
    assert "fewer than the 100" in report["state_warning"]
    assert report["dropped_fields"] == {"meta.rating": 3}
    for key in ("score_events", "score_events_joined", "score_events_orphaned"):
        assert isinstance(report[key], int)

    text = cli({**env, "COLUMNS": "120"}, "status").stdout.decode()
    assert "state warning" in text and "score events" in text and "meta.rating" in text


# --- backfill twice -------------------------------------------------------------------


def test_a_second_backfill_finds_no_new_rows_and_rejects_each_line_once(env, r, workers, ledger):
    parsed = [parse_line(x, i) for i, x in enumerate(ledger.read_bytes().splitlines(), 1)]
    bad = [p for p in parsed if type(p) is Rejection]
    rows = {p.id for p in parsed if type(p) is Row}
    assert bad and rows
    workers.start("scoring1", SCORING)
    workers.wait_ready()
    reports = []
    for _ in range(2):
        done = cli(env, "backfill", str(ledger), timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        assert done.stderr == b""
        reports.append(orjson.loads(done.stdout))
    first, second = reports
    assert first["rows"] == second["rows"] == len(rows)
    assert first["new_rows"] == len(rows) and second["new_rows"] == 0
    assert second["ledgers"][0]["new_rows"] == 0
    rejected_file = ledger.with_name("small.rejected.jsonl")
    rejected = rejected_file.read_bytes().splitlines()
    assert sorted(orjson.loads(x)["line"] for x in rejected) == sorted(b.line for b in bad)
    assert store.counts(r)["interactions_rejected"] == len(bad)

    # Redis lost its state: the rows are new to it again, the rejected lines are not to the file.
    r.flushall()
    third = cli(env, "backfill", str(ledger), timeout=120)
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert orjson.loads(third.stdout)["new_rows"] == len(rows)
    assert rejected_file.read_bytes().splitlines() == rejected
    assert store.counts(r)["interactions_rejected"] == len(bad)


# --- the running stack, found by its data dir -----------------------------------------


class Terminal:
    """A process on a pseudo-terminal, its output gathered by a thread."""

    def __init__(self, args: list[str], env: dict) -> None:
        leader, follower = pty.openpty()
        self.process = subprocess.Popen(
            args,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "250", "LINES": "60"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        self.leader = leader
        self.output = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.leader, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.output += chunk
            elif self.process.poll() is not None:
                return

    def stop(self, timeout: float = 60) -> int:
        stop(self.process, sig=signal.SIGINT, timeout=timeout)
        code = self.process.returncode
        self.thread.join(5)
        os.close(self.leader)
        return code


def test_a_running_stack_is_found_from_its_data_dir_alone(env, tmp_path, ledger):
    from thronos_analytics.stack import running_stack

    data = tmp_path / "data"
    alone = no_stack(env, data)
    rows = sum(1 for p in map(parse_line, ledger.read_bytes().splitlines()) if type(p) is Row)
    stack = Terminal([*CLI, "run", "--ledger", str(ledger), "--no-demo", "--workers", "1"], alone)
    try:
        wait_for(lambda: running_stack(data), timeout=60, what="stack.json")

        def status() -> dict:
            done = cli(alone, "status", "--json")
            assert done.returncode == 0, done.stderr.decode()
            return orjson.loads(done.stdout)

        wait_for(lambda: status()["interactions_seen"] == rows, timeout=60, what="rows seen")

        # A second stack on the same data dir is refused in one line, and leaves it be.
        second = cli(alone, "run", "--ledger", str(ledger), "--no-demo", timeout=60)
        assert_one_line(second, "another stack", str(data))
        assert running_stack(data) is not None

        # tail finds it too, and says what it follows.
        other = tmp_path / "other.jsonl"
        write(SimConfig(rows=20, seed=6, bad_rate=0.0), other)
        follower = subprocess.Popen(
            [*CLI, "tail", "--ledger", str(other)], env=alone, stderr=subprocess.PIPE
        )
        try:
            first_line = follower.stderr.readline().decode()  # type: ignore[union-attr]
            assert f"following {other} from the top" in first_line, first_line
            wait_for(lambda: status()["interactions_seen"] == rows + 20, what="tailed rows")
        finally:
            stop(follower, sig=signal.SIGINT, timeout=30)
        assert follower.returncode == 0
        wait_for(lambda: b"seen " + f"{rows + 20:,}".encode() in stack.output, what="screen")
    finally:
        code = stack.stop()
    screen = stack.output.decode(errors="replace")
    assert code == 0, screen[-3000:]
    assert "Thronos analytics" in screen and "waiting for a model" in screen
    assert str(data / "logs") in screen and "Traceback" not in screen
    assert "celery@" not in screen and "[tasks]" not in screen  # banners go to the logs
    assert not (data / STATE_FILE).exists()


def test_a_state_of_an_older_layout_is_refused_in_one_line_before_anything_is_written(
    env, r, tmp_path
):
    from thronos_analytics.core import keys

    r.set(keys.LAYOUT, "shards=1 buckets=1024")  # as the layout before aggregate records
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=200, seed=21), ledger)
    for args in (["run", "--drain", "--no-demo", "--ledger", str(ledger)], ["status"]):
        assert_one_line(cli(env, *args, timeout=120), "shards=1 buckets=1024", "RUNBOOK")
    assert store.counts(r)["interactions_seen"] == 0
