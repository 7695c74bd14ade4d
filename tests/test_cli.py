"""The command line as people and scripts see it: progress bars, logs, status."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import orjson

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.core.messages import SCORING

from processes import stop, wait_for

CLI = [sys.executable, "-m", "thronos_analytics.cli"]


def on_a_terminal(args: list[str], env: dict, timeout: float = 120) -> bytes:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; everything it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        args,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100"},
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "timed out"
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(30) == 0, output[-2000:]
    return output


def test_simulate_shows_progress_on_a_terminal_and_nothing_otherwise(env, tmp_path):
    args = [*CLI, "simulate", "--rows", "20000", "--out", str(tmp_path / "a.jsonl")]
    quiet = subprocess.run(args, env=env, capture_output=True, timeout=120)
    assert quiet.returncode == 0
    assert quiet.stderr == b""
    assert orjson.loads(quiet.stdout)["valid"] == 20000

    # --force: the first run left a.jsonl with lines, which simulate would not overwrite.
    shown = on_a_terminal([*args, "--force"], env)
    assert b"writing" in shown and b"\x1b[" in shown  # the bar, drawn with escape codes


def test_backfill_is_quiet_off_a_terminal_and_ends_when_redis_has_every_row(
    env, r, workers, tmp_path
):
    ledger = tmp_path / "old.jsonl"
    write(SimConfig(rows=500, seed=2, bad_rate=0.0), ledger)
    workers.start("scoring1", SCORING)
    workers.wait_ready()
    done = subprocess.run(
        [*CLI, "backfill", str(ledger)], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""
    assert orjson.loads(done.stdout)["rows"] == 500
    assert store.counts(r)["interactions_seen"] == 500
    rows = [p for p in map(parse_line, ledger.read_bytes().splitlines()) if type(p) is Row]
    assert len(rows) == 500 and store.unseen(r, rows) == []


def test_worker_logs_json_lines_with_task_and_model_version(env, r, tmp_path):
    from thronos_analytics.core.messages import send_batch

    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=400, seed=4, bad_rate=0.0, drop=False), ledger)
    rows = [
        p for p in (parse_line(x, i) for i, x in enumerate(ledger.read_bytes().splitlines(), 1))
    ]
    rows = [row for row in rows if isinstance(row, Row)]
    worker = subprocess.Popen(
        # -I: the logging hook, until workers/celery_app.py imports thronos_analytics.logs.
        [
            *CLI,
            "worker",
            "--queues",
            "scoring,training",
            "--concurrency",
            "1",
            "--name",
            "logs",
            "-I",
            "thronos_analytics.core.logs",
            "--without-mingle",
            "--without-gossip",
        ],
        env={**env, "THRONOS_MIN_TRAIN_ROWS": "100"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def scored() -> bool:
        assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
        return store.counts(r)["interactions_scored"] >= len(rows)

    try:
        send_batch(rows)
        wait_for(scored, timeout=120, what="rows scored")
    finally:
        _, stderr = stop(worker, timeout=60)
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    assert lines, stderr.decode()[-3000:]
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    done = [line for line in lines if line["logger"] == "thronos.tasks"]
    trained = [line for line in done if line.get("task") == "thronos.retrain_anomaly"]
    scored = [
        line for line in done if line.get("task") == "thronos.score_batch" and line.get("scored")
    ]
    assert trained and trained[0]["model_version"] and trained[0]["task_id"]
    assert scored and {line["model_version"] for line in scored} == {trained[0]["model_version"]}


def test_status_fits_a_screen_and_keeps_its_json_keys(env, r):
    done = subprocess.run(
        [*CLI, "status"], env={**env, "COLUMNS": "100"}, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    assert len(text.splitlines()) <= 40, text
    labels = ("throughput", "lag", "rejected", "anomaly rate", "queue scoring", "anomaly")
    labels += ("redis memory",)
    for label in (*labels, "score events"):
        assert label in text

    report = orjson.loads(
        subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True, timeout=60).stdout
    )
    old = {"interactions_seen", "interactions_scored", "interactions_rejected", "anomalies"}
    old |= {"pending", "queues", "models", "last_export"}
    new = {"throughput", "lag", "backlog", "anomaly_rate", "last_rejection", "warnings"}
    new |= {"score_events", "score_events_joined", "score_events_orphaned", "dropped_fields"}
    new |= {"state_warning", "redis_memory"}
    assert old | new <= report.keys()
    assert report["redis_memory"]["used_bytes"] > 0
    model_keys = {"version", "age_s", "n_samples", "duration_s", "last_failure"}
    assert set(report["models"]["anomaly"]) == model_keys


def test_flags_prints_the_newest_flags_across_batches_oldest_first(env, r, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=60, seed=4, drop=False), ledger)
    parsed = map(parse_line, ledger.read_bytes().splitlines())
    rows = [row for row in parsed if isinstance(row, Row)]
    for start in range(0, 60, 7):  # batches of 7: the last 10 flags span two of them
        batch = rows[start : start + 7]
        flags = [
            {
                "id": row.id,
                "anomaly_score": 0.1,
                "is_anomaly": False,
                "reasons": [],
                "model_version": "20260301T120000.000000",  # as store.publish_model names them
            }
            for row in batch
        ]
        store.apply_batch(r, batch, flags)
    done = subprocess.run([*CLI, "flags", "--last", "10"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    printed = [orjson.loads(line)["id"] for line in done.stdout.splitlines()]
    assert printed == [row.id for row in rows[-10:]]
