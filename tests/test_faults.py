"""Faults against real processes: nothing lost, nothing counted twice.

Each test breaks a real part (kill -9 of a worker, a Redis restart, a killed producer, a
second beat, a bad model, a full disk) and then checks the state in Redis against a
recount of the ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import keys, store
from thronos_analytics.core.messages import SCORING, TRAINING, send_batch
from thronos_analytics.producers.backfill import backfill

from processes import stop, stop_all, wait_for
from recount import assert_aggregates_match_ledger, assert_published_once, ledger_rows

pytest_plugins = ["cluster"]  # the fixtures redis_cluster and cluster_env

# Redeliver a dead worker's messages after 4 s, and train only when a test says so.
WORKER_ENV = {"THRONOS_VISIBILITY_TIMEOUT": "4", "THRONOS_MIN_TRAIN_ROWS": str(10**9)}


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def train_first_model(rows, r) -> str:
    from thronos_analytics.workers.tasks import retrain_anomaly

    send_batch(rows)
    wait_for(lambda: seen(r) >= len(rows), what="first rows ingested")
    result = retrain_anomaly.delay(force=True).get(timeout=120)
    assert "version" in result, result
    return result["version"]


def seen(r) -> int:
    return store.counts(r)["interactions_seen"]


def scored(r) -> int:
    return store.counts(r)["interactions_scored"]


def assert_scored_exactly_once(r, rows) -> None:
    ids = {row.id: row.ts for row in rows}
    assert seen(r) == len(ids)
    assert_published_once(r, rows)
    flags = store.flags_of(r, list(ids.items())).values()
    assert store.counts(r)["anomalies"] == sum(f["is_anomaly"] for f in flags)
    assert_aggregates_match_ledger(r, rows)


@pytest.fixture(params=["one Redis", "a Redis Cluster"])
def state(request, env, r):
    """The state's Redis: the tests' own, or a 3-master cluster with the broker kept on
    the tests' Redis. The workers started after it inherit the choice through ``env``."""
    if request.param == "one Redis":
        return r
    env.update(request.getfixturevalue("cluster_env"))
    client = store.connect()
    client.flushall()
    return client


def test_kill_9_of_a_worker_child_and_of_a_whole_worker_loses_and_repeats_nothing(
    env, state, workers, tmp_path
):
    r = state
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=50_000, seed=11), ledger)
    rows = ledger_rows(ledger)
    first = workers.start("scoring1", SCORING, concurrency=2, extra_env=WORKER_ENV)
    second = workers.start("scoring2", SCORING, concurrency=1, extra_env=WORKER_ENV)
    workers.start("training", TRAINING, extra_env=WORKER_ENV)
    workers.wait_ready()
    train_first_model(rows[:2000], r)

    # A worker killed as it fetches a message loses that message in kombu's Redis transport:
    # the backfill's receipts send such rows again.
    with ThreadPoolExecutor(1) as pool:
        replay = pool.submit(
            backfill, ledger, send_batch, lambda _: None, 250, confirm_with=r, timeout=240
        )
        wait_for(lambda: scored(r) > 12_000, what="a third of the stream")
        os.kill(children(first.pid)[0], signal.SIGKILL)  # one prefork child, mid-batch
        wait_for(lambda: scored(r) > 25_000, what="half of the stream")
        os.killpg(second.pid, signal.SIGKILL)  # a whole worker: parent and child
        second.wait()
        workers.start("scoring3", SCORING, concurrency=1, extra_env=WORKER_ENV)
        replay.result()

    wait_for(lambda: scored(r) == len(rows), timeout=60, what="every row scored")
    assert_scored_exactly_once(r, rows)


def test_redis_restart_mid_stream_loses_nothing_and_everyone_reconnects(
    env, r, workers, redis_server, tmp_path
):
    from thronos_analytics.producers.dead_letter import DeadLetter
    from thronos_analytics.producers.tail import TailProducer

    source = tmp_path / "source.jsonl"
    write(SimConfig(rows=6000, seed=12), source)
    lines = source.read_bytes().splitlines(keepends=True)
    rows = ledger_rows(source)
    workers.start("scoring1", SCORING, extra_env=WORKER_ENV)
    workers.start("training", TRAINING, extra_env=WORKER_ENV)
    workers.wait_ready()
    train_first_model(rows[:1000], r)

    ledger = tmp_path / "ai_ledger.jsonl"
    ledger.write_bytes(b"".join(lines[:3000]))
    dead_letter = DeadLetter(tmp_path / "rej.jsonl", "t", None)
    tail = TailProducer(ledger, send_batch, dead_letter.record, confirm_with=r)
    thread = threading.Thread(target=tail.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: scored(r) >= 2000, what="scoring under way")
        redis_server.stop()  # graceful: the AOF is flushed, as in a restart
        with ledger.open("ab") as f:  # the ledger keeps growing while Redis is away
            f.writelines(lines[3000:])
        wait_for(lambda: tail.receipts.outage, what="the tail producer to meet the outage")
        redis_server.start()
        wait_for(lambda: scored(r) == len(rows), timeout=180, what="every row scored")
    finally:
        tail.stop.set()
        thread.join(10)
    assert_scored_exactly_once(r, rows)


def test_a_send_while_redis_is_down_fails_at_once_and_the_next_one_goes(env, r, redis_server):
    from thronos_analytics.core.contract import Row

    row = Row("o1", 1.79e9, "gpt", None, None, None, None, None, None, None, None, True)
    send_batch([row])  # a producer that has sent before
    redis_server.stop()
    try:
        for i in range(3):  # as the Outbox retries
            started = time.monotonic()
            with pytest.raises(Exception):  # noqa: B017 (whatever kombu raises)
                send_batch([row._replace(id="o2")])
            # kombu tries the broker for ~6 s; Celery's result consumer, which a producer
            # has no use for, would add 20 s of its own from the second send on.
            assert time.monotonic() - started < 12, f"send {i} during the outage"
    finally:
        redis_server.start()
    wait_for(lambda: send_batch([row._replace(id="o3")]), timeout=30, what="a send")
    assert r.llen(SCORING) == 2


def test_redis_down_30s_while_recording(env, r, workers, redis_server, tmp_path, recorders):
    # A consumer that kombu leaves stalled after the reconnect exits, and is started again,
    # as under `run` (workers/watchdog.py); longer than kombu's longest retry wait of 30 s.
    watched = {**WORKER_ENV, "THRONOS_CONSUMER_STALL_S": "35"}
    workers.start("scoring1", SCORING, extra_env=watched)
    workers.start("training", TRAINING, extra_env=watched)
    workers.wait_ready()
    recorder = recorders(tmp_path / "ai_ledger.jsonl", batch_size=100, linger_ms=5)
    before = [
        recorder.record(provider="claude", score=0.8, wallet="w", session_id="s", id=f"a{i}")
        for i in range(1200)
    ]
    assert recorder.outbox.flush(30)
    train_first_model([], r)

    redis_server.stop()
    slowest, during = 0.0, []
    outage_ends = time.monotonic() + 30
    i = 0
    while time.monotonic() < outage_ends:
        started = time.monotonic()
        during.append(recorder.record(provider="gpt", score=0.7, wallet="w", id=f"b{i}"))
        slowest = max(slowest, time.monotonic() - started)
        i += 1
        time.sleep(0.02)  # paces the records over the whole outage, as an app's calls come
    redis_server.start()

    # A call that waited for Redis would wait out the outage (or raise). The bound is loose
    # because each call fsyncs the ledger, which a loaded disk can hold for seconds.
    assert slowest < 10.0, f"a record_interaction call took {slowest:.2f}s during the outage"
    assert len((tmp_path / "ai_ledger.jsonl").read_bytes().splitlines()) == 1200 + len(during)
    assert recorder.outbox.flush(120)
    rows = before + during

    def state() -> str:  # which side stalled, when one does
        counts = store.counts(r)
        return (
            f"every row scored: {counts['interactions_scored']} of {len(rows)} scored,"
            f" {counts['interactions_seen']} seen, {counts['pending']} pending,"
            f" {r.llen(SCORING)} scoring messages queued"
        )

    def all_scored() -> bool:
        restarted.extend(workers.start_again_those_that_asked())
        return scored(r) == len(rows)

    restarted: list[str] = []
    wait_for(all_scored, timeout=120, what=lambda: f"{state()}; restarted: {restarted}")
    assert_scored_exactly_once(r, rows)
    # The outbox kept receipts: what the broker lost as Redis stopped was sent again.
    assert recorder.outbox.receipts is not None
    wait_for(lambda: recorder.outbox.unconfirmed == 0, timeout=10, what="every receipt")


def test_producer_killed_mid_batch_resumes_from_its_checkpoint(env, r, workers, tmp_path):
    ledger = Path(env["THRONOS_LEDGER"])
    source = tmp_path / "source.jsonl"
    write(SimConfig(rows=30_000, seed=13), source)
    rows = ledger_rows(source)
    lines = source.read_bytes().splitlines(keepends=True)
    workers.start("scoring1", SCORING, extra_env=WORKER_ENV)
    workers.start("training", TRAINING, extra_env=WORKER_ENV)
    workers.wait_ready()
    train_first_model(rows[:1000], r)

    # The ledger grows while the producer follows it, so the kill lands mid-stream however
    # fast the machine is; the last third is appended only after the kill.
    killed = threading.Event()

    def grow(upto: int) -> None:
        with ledger.open("ab") as out:
            for start in range(0, upto, 100):
                out.write(b"".join(lines[start : start + 100]))
                out.flush()
                if not killed.is_set():
                    time.sleep(0.03)

    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.touch()
    writer = threading.Thread(target=grow, args=(20_000,))
    writer.start()
    command = [sys.executable, "-m", "thronos_analytics.cli", "tail"]
    checkpoint = ledger.with_name(ledger.name + ".checkpoint")
    producer = subprocess.Popen(command, env={**env, "THRONOS_BATCH_SIZE": "200"})
    try:
        wait_for(lambda: checkpoint.exists() and seen(r) > 4000, what="progress")
        producer.kill()  # SIGKILL: no chance to save anything
        producer.wait()
        killed.set()
        killed_at = orjson.loads(checkpoint.read_bytes())["offset"]
        writer.join()
        with ledger.open("ab") as out:
            out.write(b"".join(lines[20_000:]))
        assert 0 < killed_at < ledger.stat().st_size
        producer = subprocess.Popen(command, env={**env, "THRONOS_BATCH_SIZE": "200"})
        wait_for(lambda: scored(r) == len(rows), timeout=180, what="every row scored")
    finally:
        killed.set()
        stop(producer, sig=signal.SIGKILL)
    assert orjson.loads(checkpoint.read_bytes())["offset"] == ledger.stat().st_size
    assert_scored_exactly_once(r, rows)


def test_two_beats_schedule_each_period_once(env, r, tmp_path):
    beat_env = {**env, "THRONOS_RETRAIN_SECONDS": "1"}
    app = "thronos_analytics.workers.celery_app"
    command = [sys.executable, "-m", "celery", "-A", app, "beat", "-l", "WARNING"]
    beats = [
        subprocess.Popen(command, env=beat_env, cwd=tmp_path, start_new_session=True)
        for _ in range(2)
    ]
    try:
        wait_for(lambda: r.llen(TRAINING) >= 1, what="the first scheduled task")
        start = r.llen(TRAINING)
        time.sleep(8)  # the beats' periods are what is counted: eight of them pass
        sent = r.llen(TRAINING) - start
    finally:
        stop_all(beats)
    # One beat sends ~8 tasks in 8 s at one per second; two unlocked beats would send ~16.
    assert 5 <= sent <= 10, sent
    assert all(b"thronos.refresh_analytics" in m for m in r.lrange(TRAINING, 0, -1))


def test_bad_model_is_refused_and_scoring_goes_on_with_the_last_good_one(env, r, workers, tmp_path):
    from thronos_analytics.workers.tasks import retrain_anomaly

    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=3000, seed=14), ledger)
    rows = ledger_rows(ledger)
    workers.start("scoring1", SCORING, extra_env=WORKER_ENV)
    # An evidence level so low that nearly every row is flagged: training refuses that model.
    workers.start("training", TRAINING, extra_env={**WORKER_ENV, "THRONOS_ANOMALY_LEVEL": "1e-9"})
    workers.wait_ready()

    # A good model, published the way training publishes it.
    from thronos_analytics.analytics.anomaly import AnomalyDetector

    detector = AnomalyDetector().fit(rows[:1000])
    info = {"n_samples": 1000, "trained_at": time.time()}
    good = store.publish_model(r, "anomaly", detector.to_bytes(), info)
    send_batch(rows[:1000])
    wait_for(lambda: scored(r) == 1000, what="first flags")

    # 1. A retrain whose model is refused publishes nothing and says why.
    failed = retrain_anomaly.delay(force=True).get(timeout=120)
    assert "error" in failed and r.get(keys.model_current("anomaly")).decode() == good
    # 2. A published artifact that is corrupt (or tampered) is refused by the workers.
    r.set(keys.model_blob("anomaly", "29990101T000000.000000"), b"not a model")
    r.set(keys.model_current("anomaly"), "29990101T000000.000000")
    send_batch(rows[1000:])
    wait_for(lambda: scored(r) == len(rows), what="scoring with the last good model")
    flags = store.flags_of(r, [(row.id, row.ts) for row in rows]).values()
    versions = {flag["model_version"] for flag in flags}
    assert versions == {good}

    status = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "status", "--json"],
        env=env,
        capture_output=True,
        check=True,
    )
    failure = orjson.loads(status.stdout)["models"]["anomaly"]["last_failure"]
    assert "cannot load anomaly model 29990101T000000.000000" in failure["error"]


def test_tampered_model_is_refused_with_a_clear_error(env, r, monkeypatch, tmp_path):
    from thronos_analytics.analytics.anomaly import AnomalyDetector
    from thronos_analytics.core import signing, store
    from thronos_analytics.core.settings import use_settings
    from thronos_analytics.core.signing import ModelIntegrityError

    def model_key(value: str) -> None:
        monkeypatch.setenv("THRONOS_MODEL_KEY", value)
        use_settings(None)  # settings are read once per process: read them again

    rows = ledger_rows(write_small(tmp_path))
    model_key("k" * 32)
    version = store.publish_model(r, "anomaly", AnomalyDetector().fit(rows).to_bytes(), {})
    assert store.current_model(r, "anomaly") is not None
    blob = bytearray(r.get(keys.model_blob("anomaly", version)))
    blob[-10] ^= 1
    r.set(keys.model_blob("anomaly", version), bytes(blob))
    with pytest.raises(ModelIntegrityError, match=f"anomaly model {version} failed its HMAC"):
        store.current_model(r, "anomaly")
    model_key("another key")
    r.set(keys.model_blob("anomaly", version), signing.sign(b"x"))
    model_key("k" * 32)
    with pytest.raises(ModelIntegrityError, match="HMAC"):
        store.current_model(r, "anomaly")


def write_small(tmp_path: Path) -> Path:
    ledger = tmp_path / "small.jsonl"
    write(SimConfig(rows=500, seed=15), ledger)
    return ledger


DISK_FULL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from concurrent.futures import ThreadPoolExecutor
    from thronos_analytics.producers.ai_ledger import Ledger, LedgerWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    ledger = Ledger(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    def append(t):
        done, errors = [], []
        for i in range(400):
            try:
                ledger.append({"id": f"t{t}-{i}", "ts": 1772366400 + i, "pad": "x" * (i % 90)})
                done.append(f"t{t}-{i}")
            except LedgerWriteError as exc:
                errors.append(str(exc))
        return done, errors
    with ThreadPoolExecutor(int(sys.argv[3])) as pool:
        results = list(pool.map(append, range(int(sys.argv[3]))))
    print(json.dumps({"done": [i for d, _ in results for i in d],
                      "errors": [e for _, es in results for e in es]}))
    """
)


def fill_the_disk(ledger: Path, limit: int, threads: int) -> dict:
    """Threads appending to ``ledger`` in a process whose files may not pass ``limit``
    bytes: the ids whose calls returned, and the errors of those that raised."""
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(ledger), str(limit), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    result = orjson.loads(done.stdout)
    content = ledger.read_bytes()
    # Never a half line, and exactly the lines of the calls that returned.
    assert result["errors"] and content.endswith(b"\n") and len(content) <= limit
    assert sorted(orjson.loads(line)["id"] for line in content.splitlines()) == sorted(
        result["done"]
    )
    return result


def test_disk_full_gives_a_clear_error_and_never_a_half_line(tmp_path):
    ledger = tmp_path / "ai_ledger.jsonl"
    result = fill_the_disk(ledger, 1000, threads=1)
    assert f"cannot append to ledger {ledger}" in result["errors"][0]


def test_disk_full_under_threads_keeps_exactly_the_lines_whose_calls_returned(tmp_path):
    fill_the_disk(tmp_path / "ai_ledger.jsonl", 20_000, threads=4)


def test_unwritable_data_dir_names_the_path(tmp_path):
    from thronos_analytics.core.atomic_file import write_atomically
    from thronos_analytics.producers.ai_ledger import Ledger, LedgerWriteError

    blocker = tmp_path / "data"
    blocker.write_text("a file where the data dir should be")
    with pytest.raises(LedgerWriteError, match=str(blocker)):
        Ledger(blocker / "ai_ledger.jsonl").append({"provider": "x"})
    with pytest.raises(OSError, match=str(blocker)):
        write_atomically(blocker / "ai_analytics.json", b"{}")
