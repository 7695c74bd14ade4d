"""Which files the commands read and write: several ledgers, the user's ledger left alone,
bad paths refused before anything starts, and the demo kept in a file of its own.

Everything runs the real command line in a subprocess against the test Redis and real
worker processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.messages import SCORING, TRAINING
from thronos_analytics.core.settings import Settings

from processes import stop, wait_for
from recount import ledger_rows

CLI = [sys.executable, "-m", "thronos_analytics.cli"]


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=timeout)


def drained(env: dict, *args: str) -> tuple[dict, str]:
    """``run --drain`` with one scoring worker: its JSON summary and its stderr."""
    done = cli(env, "run", "--drain", "--workers", "1", *args, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return orjson.loads(done.stdout), done.stderr.decode()


def without_ledger(env: dict) -> dict:
    return {k: v for k, v in env.items() if k != "THRONOS_LEDGER"}


def files_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


def assert_refused(done: subprocess.CompletedProcess, *needles: str) -> None:
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err and done.stdout == b""
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
    for needle in needles:
        assert needle in err, err


# --- settings -------------------------------------------------------------------------


def test_thronos_ledger_lists_paths_and_says_whether_the_user_named_them(monkeypatch, tmp_path):
    monkeypatch.setenv("THRONOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("THRONOS_LEDGER", f"{tmp_path}/a.jsonl::{tmp_path}/b.jsonl:")
    config = Settings.from_env()
    assert config.ledgers == (tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert config.ledger_named and config.ledger == tmp_path / "a.jsonl"
    # The command line wins over the environment; one file named twice is followed once.
    twice = [tmp_path / "c.jsonl", tmp_path / "x" / ".." / "c.jsonl"]
    flags = Settings.from_env().with_ledgers(twice)
    assert flags.ledgers == (tmp_path / "c.jsonl",) and flags.ledger_named

    monkeypatch.delenv("THRONOS_LEDGER")
    default = Settings.from_env()
    assert default.ledgers == (tmp_path / "data" / "ai_ledger.jsonl",)
    assert not default.ledger_named
    assert default.demo_ledger == tmp_path / "data" / "demo.ai_ledger.jsonl"
    assert default.simulated_ledger == tmp_path / "data" / "simulated.ai_ledger.jsonl"


# --- a named ledger is the user's data ------------------------------------------------


def test_drain_of_an_empty_or_missing_named_ledger_writes_nothing_into_it(env, r, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    summary, err = drained(env, "--ledger", str(empty))
    assert empty.stat().st_size == 0
    assert summary["lines"] == summary["valid_rows"] == 0
    assert [entry["ledger"] for entry in summary["ledgers"]] == [str(empty)]
    assert "DEMO" not in err
    counted = store.counts(r)
    assert counted["interactions_seen"] == counted["interactions_scored"] == 0

    # Named through the environment, and not there at all: still no demo, no file made.
    missing = tmp_path / "missing.jsonl"
    summary, err = drained({**env, "THRONOS_LEDGER": str(missing)})
    assert not missing.exists() and summary["lines"] == 0 and "DEMO" not in err
    data = Path(env["THRONOS_DATA_DIR"])
    assert not (data / "demo.ai_ledger.jsonl").exists()
    assert not (data / "ai_ledger.jsonl").exists()

    # One row is too few to train on: the drain still ends, and says the row waits.
    one = tmp_path / "one.jsonl"
    write(SimConfig(rows=1, seed=3, bad_rate=0.0), one)
    written = one.read_bytes()
    summary, _ = drained(env, "--ledger", str(one))
    assert one.read_bytes() == written
    assert summary["valid_rows"] == summary["rows_waiting_for_a_model"] == 1


@pytest.mark.parametrize("command", ["run", "tail", "backfill"])
@pytest.mark.parametrize("where", ["missing folder", "root missing folder", "directory"])
def test_a_ledger_that_cannot_be_a_file_is_one_line_and_creates_nothing(
    env, tmp_path, command, where
):
    # No REDIS_URL: `run` would start its own Redis under the data dir, if it got that far.
    fresh = {**without_ledger(env), "THRONOS_DATA_DIR": str(tmp_path / "data")}
    fresh.pop("REDIS_URL")
    (tmp_path / "a_folder").mkdir()
    ledger = {
        "missing folder": tmp_path / "nope" / "x.jsonl",
        "root missing folder": Path("/nonexistent_dir/x.jsonl"),
        "directory": tmp_path / "a_folder",
    }[where]
    before = files_under(tmp_path)
    args = {
        "run": ["run", "--drain", "--ledger", str(ledger)],
        "tail": ["tail", "--ledger", str(ledger)],
        "backfill": ["backfill", str(ledger)],
    }[command]
    assert_refused(cli(fresh, *args, timeout=60), str(ledger))
    # The same ledger named through the environment is refused the same way.
    env_args = [a for a in args if a not in ("--ledger", str(ledger))]
    if command == "backfill":
        env_args = ["backfill"]
    assert_refused(cli({**fresh, "THRONOS_LEDGER": str(ledger)}, *env_args, timeout=60))
    assert files_under(tmp_path) == before
    assert not Path("/nonexistent_dir").exists()


def test_backfill_refuses_a_missing_file_that_tail_would_wait_for(env, r, tmp_path):
    missing = tmp_path / "later.jsonl"
    other = tmp_path / "other.jsonl"
    write(SimConfig(rows=20, seed=1, bad_rate=0.0), other)
    # One missing file among several: refused before any file is replayed.
    assert_refused(cli(env, "backfill", str(other), str(missing), timeout=60), str(missing))
    assert not missing.exists() and store.counts(r)["interactions_seen"] == 0


# --- several ledgers ------------------------------------------------------------------


def two_ledgers(tmp_path: Path) -> tuple[Path, Path, int, int]:
    a, b = tmp_path / "a" / "ai_ledger.jsonl", tmp_path / "b.jsonl"
    write(SimConfig(rows=1500, seed=21, bad_rate=0.01), a)
    write(SimConfig(rows=700, seed=22, bad_rate=0.01), b)
    ids_a = {row.id for row in ledger_rows(a)}
    ids_b = {row.id for row in ledger_rows(b)}
    assert ids_a and ids_b and not ids_a & ids_b
    return a, b, len(ids_a), len(ids_b)


def test_drain_of_two_ledgers_by_flag_and_by_environment_scores_both(env, r, tmp_path):
    a, b, rows_a, rows_b = two_ledgers(tmp_path)
    lines = {str(p): len(p.read_bytes().splitlines()) for p in (a, b)}
    # Each ledger's bad lines go to its own dead-letter file, beside it.
    rejected = {
        str(a): a.with_name("ai_ledger.rejected.jsonl"),
        str(b): b.with_name("b.rejected.jsonl"),
    }

    for how in ("flags", "env"):
        r.flushall()
        for path in rejected.values():
            path.unlink(missing_ok=True)
        if how == "flags":
            summary, _ = drained(env, "--ledger", str(a), "--ledger", str(b))
        else:
            summary, _ = drained({**env, "THRONOS_LEDGER": f"{a}:{b}"})
        per = {entry["ledger"]: entry for entry in summary["ledgers"]}
        assert list(per) == [str(a), str(b)], how
        assert [e["valid_rows"] for e in per.values()] == [rows_a, rows_b]
        assert {k: e["lines"] for k, e in per.items()} == lines
        assert summary["valid_rows"] == summary["distinct_ids"] == rows_a + rows_b
        assert summary["interactions_scored"] == rows_a + rows_b, how
        assert store.counts(r)["interactions_scored"] == rows_a + rows_b
        both = ledger_rows(a) + ledger_rows(b)
        assert set(store.flags_of(r, [(row.id, row.ts) for row in both])) == {
            row.id for row in both
        }
        for ledger, path in rejected.items():
            entries = [orjson.loads(line) for line in path.read_bytes().splitlines()]
            assert {e["source"] for e in entries} == {Path(ledger).name}
            assert len(entries) == per[ledger]["rejected_lines"] > 0
        assert summary["rejected_lines"] == sum(e["rejected_lines"] for e in per.values())
        # The env's default ledger is not among them.
        assert not Path(env["THRONOS_LEDGER"]).exists()


def test_tail_follows_each_ledger_from_its_own_checkpoint(env, r, workers, tmp_path):
    a, b, rows_a, rows_b = two_ledgers(tmp_path)
    later = tmp_path / "later.jsonl"  # missing for now: followed once it appears
    worker_env = {"THRONOS_MIN_TRAIN_ROWS": "500"}
    workers.start("scoring1", SCORING, extra_env=worker_env)
    workers.start("training", TRAINING, extra_env=worker_env)
    workers.wait_ready()

    def checkpoint(ledger: Path) -> dict:
        path = ledger.with_name(ledger.name + ".checkpoint")
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def scored() -> int:
        return store.counts(r)["interactions_scored"]

    def caught_up(*ledgers: Path) -> bool:
        return all(checkpoint(p).get("offset") == p.stat().st_size for p in ledgers)

    tail = subprocess.Popen(
        [*CLI, "tail"],
        env={**env, "THRONOS_LEDGER": f"{a}:{b}:{later}"},
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: scored() == rows_a + rows_b, timeout=120, what="a and b")
        wait_for(lambda: caught_up(a, b), what="both checkpoints at the end of their file")
        assert not later.exists() and not checkpoint(later)
        write(SimConfig(rows=300, seed=23, bad_rate=0.0), later)
        total = rows_a + rows_b + len(ledger_rows(later))
        wait_for(lambda: scored() == total, timeout=120, what="the late ledger")
        wait_for(lambda: caught_up(a, b, later), what="its checkpoint")
    finally:
        _, err = stop(tail, sig=signal.SIGINT, timeout=30)
    assert tail.returncode == 0 and b"Traceback" not in err, err.decode()[-2000:]
    # Three checkpoints, each with its own file's line count.
    for ledger in (a, b, later):
        assert checkpoint(ledger)["line"] == len(ledger.read_bytes().splitlines())


def test_backfill_replays_several_files_and_sums_them(env, r, workers, tmp_path):
    a, b, rows_a, rows_b = two_ledgers(tmp_path)
    workers.start("scoring1", SCORING)
    workers.wait_ready()
    done = cli(env, "backfill", str(a), "--ledger", str(b), timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = orjson.loads(done.stdout)
    assert [e["ledger"] for e in report["ledgers"]] == [str(a), str(b)]
    assert [e["rows"] for e in report["ledgers"]] == [rows_a, rows_b]
    assert report["rows"] == rows_a + rows_b == store.counts(r)["interactions_seen"]
    assert store.unseen(r, ledger_rows(a) + ledger_rows(b)) == []


# --- the demo -------------------------------------------------------------------------


def test_the_demo_has_its_own_file_and_only_for_the_default_ledger(env, r, tmp_path):
    default_env = without_ledger(env)
    data = Path(env["THRONOS_DATA_DIR"])
    default, demo = data / "ai_ledger.jsonl", data / "demo.ai_ledger.jsonl"

    def demo_notes(err: str) -> list[str]:
        return [line for line in err.splitlines() if "DEMO" in line]

    # --no-demo: nothing simulated, and the missing default ledger stays missing.
    summary, err = drained(default_env, "--no-demo")
    assert summary["lines"] == 0 and not demo.exists() and not default.exists()
    assert not demo_notes(err)

    # Default ledger missing: the demo is written to its own file and drained with it.
    summary, err = drained(default_env)
    assert not default.exists()
    lines = len(demo.read_bytes().splitlines())
    assert lines > 20_000
    notes = demo_notes(err)
    assert len(notes) == 1, err[-3000:]
    assert str(demo) in notes[0] and str(default) in notes[0]
    assert f"{lines:,} simulated" in notes[0]
    assert [e["ledger"] for e in summary["ledgers"]] == [str(default), str(demo)]
    assert summary["interactions_scored"] == len(ledger_rows(demo))

    # Default ledger empty: a demo file with rows is reused as it is (a small one here, to
    # keep the test quick), and the empty ledger is left empty.
    r.flushall()
    write(SimConfig(rows=300, seed=9, bad_rate=0.0), demo)
    default.touch()
    written = demo.stat()
    summary, err = drained(default_env)
    assert default.stat().st_size == 0
    assert (demo.stat().st_ino, demo.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert len(demo_notes(err)) == 1 and "300 simulated" in demo_notes(err)[0]
    assert summary["interactions_scored"] == 300

    # Real rows in the default ledger: no demo any more.
    write(SimConfig(rows=50, seed=5, bad_rate=0.0), default)
    summary, err = drained(default_env)
    assert not demo_notes(err)
    assert [e["ledger"] for e in summary["ledgers"]] == [str(default)]


# --- simulate -------------------------------------------------------------------------


def test_simulate_writes_its_own_file_and_refuses_to_overwrite(env, tmp_path):
    data = Path(env["THRONOS_DATA_DIR"])
    first = cli(without_ledger(env), "simulate", "--rows", "50", timeout=60)
    assert first.returncode == 0, first.stderr.decode()
    out = data / "simulated.ai_ledger.jsonl"
    assert orjson.loads(first.stdout)["out"] == str(out)
    assert not (data / "ai_ledger.jsonl").exists()

    written = out.read_bytes()
    again = cli(env, "simulate", "--rows", "60", "--seed", "3", timeout=60)
    assert_refused(again, str(out), "--force")
    assert out.read_bytes() == written

    ledger = tmp_path / "mine.jsonl"
    ledger.write_bytes(b'{"not": "simulated"}\n')
    assert_refused(cli(env, "simulate", "--rows", "50", "--out", str(ledger), timeout=60))
    assert ledger.read_bytes() == b'{"not": "simulated"}\n'
    forced = cli(env, "simulate", "--rows", "50", "--out", str(ledger), "--force", timeout=60)
    assert forced.returncode == 0 and orjson.loads(forced.stdout)["valid"] == 50
