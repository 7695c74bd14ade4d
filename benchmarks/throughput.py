"""Throughput and latency of the pipeline against the naive baseline, in one run.

    python -m benchmarks.throughput            # 1M rows: most of an hour on 2 cores
    python -m benchmarks.throughput --quick    # 100k rows: 10-15 minutes
    python -m benchmarks.throughput --cluster  # also a 3-node Redis Cluster against one node
    python -m benchmarks.throughput --only peer,horizon --peer-rows 20000 --horizon-rows 20000

Everything runs against a private ``redis-server`` (AOF on, as in production) and real
Celery worker processes started here:

1. **naive baseline**: one Celery task per row, each calling scikit-learn's
   ``IsolationForest.score_samples`` on a one-row DataFrame (``naive_app`` below, its own
   queue and keys);
2. **bulk**: a simulated ledger replayed with ``backfill`` until every row has a flag;
3. **near real time**: rows written with ``Recorder.record`` (what ``record_interaction``
   calls) at fixed rates, latency from the start of the ledger write to the flag being
   readable in Redis (read with XREAD on the flag stream);
4. **retrain + export** at 10k, 100k and 1M rows in the ledger state;
5. **peak RSS** of the scoring worker processes, and single-row scoring cost in-process;
   and the ledger writer with threads recording at once (``benchmarks.ledger_writes``);

then, from outside, whole ``thronos-analytics run --drain`` processes (``benchmarks.drains``):

6. **run --drain vs the one-process script** (``benchmarks.one_process``) on one ledger;
7. **Redis memory** per interaction inside the retention horizon, and at 3× the horizon
   against 1×;
8. **retrain all + export** at 3× the horizon against 1× (3M rows vs 1M; 300k vs 100k
   with ``--quick``);
9. **a 3-node Redis Cluster vs one node**, the same drain (``--cluster`` only).

It writes ``docs/performance.md`` (``--out``) and prints the same figures as JSON. With
``--only`` it runs just those sections of 6-9 and writes no document.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from celery import Celery
from celery.signals import worker_process_init

ROOT = Path(__file__).resolve().parents[1]
NAIVE_QUEUE = "naive"
NAIVE_FLAGS = "bench:naive:flags"
NAIVE_MODEL_ENV = "THRONOS_BENCH_NAIVE_MODEL"

TARGETS = {
    "bulk_rows_per_s": 50_000,
    "bulk_vs_naive": 100,
    "p99_ms_at_1000": 50,
    "single_row_us": 30,
    "retrain_export_1m_s": 30,
    "worker_rss_mb": 200,
    "growth_bytes_per_row": 64,
    "memory_three_over_one": 1.2,
    "script_over_drain": 1.0,
    "retrain_three_over_one": 1.2,
    "cluster_over_one_node": 0.8,
}

# --- the naive baseline: one task per row, sklearn on a one-row frame --------------------

naive_app = Celery("thronos-naive-baseline")
naive_app.conf.update(
    broker_url=os.environ.get("REDIS_URL"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=NAIVE_QUEUE,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_naive: dict[str, Any] = {}


@worker_process_init.connect
def _load_naive_model(**_: Any) -> None:
    path = os.environ.get(NAIVE_MODEL_ENV)
    if path:  # only in the baseline's worker processes
        import redis

        with open(path, "rb") as f:  # our own file, written by this benchmark
            _naive.update(pickle.load(f))
        _naive["redis"] = redis.Redis.from_url(os.environ["REDIS_URL"])


@naive_app.task(name="bench.naive_score_one")
def naive_score_one(wire: dict[str, Any]) -> None:
    """What the issue measured first: featurise one row, score it alone, store the flag."""
    import pandas as pd

    from thronos_analytics.core.contract import Row

    row = Row.from_wire(wire)
    frame = pd.DataFrame(naive_features(_naive["norms"], [row]), columns=NAIVE_COLUMNS)
    score = float(_naive["model"].score_samples(frame)[0])
    flag = {"id": row.id, "anomaly_score": -score, "is_anomaly": score < _naive["threshold"]}
    _naive["redis"].hset(NAIVE_FLAGS, row.id, orjson.dumps(flag))


NAIVE_COLUMNS = ["output_len", "score", "latency_ms", "credits_used"]


def naive_features(norms: Any, rows: list[Any]) -> Any:
    """The baseline's features: each measure's robust distance from its norm (4 columns)."""
    from thronos_analytics.analytics.features import base_matrix

    return norms.distances(base_matrix(rows), rows)


# --- helpers ------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(poll)


def rss_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of one process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from thronos_analytics.stack import redis_server_binary

    redis_version = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True
    ).stdout.split()
    packages = ("celery", "kombu", "redis", "numpy", "scikit-learn", "pandas", "orjson")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "?"),
        "packages": {name: metadata.version(name) for name in packages},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Processes:
    """Worker processes started by the benchmark, stopped together."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.running[name] = subprocess.Popen(
            command, cwd=ROOT, env={**self.env, **(extra_env or {})}, start_new_session=True
        )

    def rss(self) -> dict[str, dict[str, float]]:
        """Peak RSS of every worker's main process and of its prefork children."""
        import psutil

        out = {}
        for name, process in self.running.items():
            out[f"{name} (main)"] = rss_mb(process.pid)
            for i, child in enumerate(psutil.Process(process.pid).children(recursive=True)):
                out[f"{name} (child {i + 1})"] = rss_mb(child.pid)
        return out

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


def wait_ready(app: Celery, names: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        if names <= {name.split("@")[0] for reply in replies for name in reply}:
            return
    raise TimeoutError(f"workers {sorted(names)} did not answer a ping in {timeout:.0f}s")


def split_ledger(source: Path, sizes: list[int], directory: Path) -> list[Path]:
    """The ledger's lines cut into consecutive parts of ``sizes`` lines."""
    lines = source.read_bytes().splitlines(keepends=True)
    parts, start = [], 0
    for i, size in enumerate(sizes):
        part = directory / f"part{i + 1}.jsonl"
        part.write_bytes(b"".join(lines[start : start + size]))
        parts.append(part)
        start += size
    return parts


# --- the measurements --------------------------------------------------------------------


def replay(r: Any, path: Path, timeout: float) -> dict[str, Any]:
    """Backfill ``path`` and wait until every row has a flag: rows per second, end to end."""
    from thronos_analytics.core import store
    from thronos_analytics.core.messages import send_batch
    from thronos_analytics.drain import wait_until_flagged
    from thronos_analytics.producers.backfill import backfill

    # Counted through the store, not by key: the key layout is the store's to change.
    before = store.counts(r)["interactions_scored"]
    started = time.perf_counter()
    # As the CLI runs it: with receipts, so it returns once Redis has seen every row.
    done = backfill(path, send_batch, lambda rejections: None, confirm_with=r, timeout=timeout)
    seen = time.perf_counter()
    wait_until_flagged(r, done.ids, timeout)
    finished = time.perf_counter()
    scored = store.counts(r)["interactions_scored"] - before
    assert scored == len(done.ids), f"{len(done.ids)} rows sent, {scored} flagged"
    return {
        "rows": done.rows,
        "seconds": round(finished - started, 2),
        "all_seen_seconds": round(seen - started, 2),
        "rows_per_s": round(done.rows / (finished - started)),
    }


CPU_PARTS = ("producer", "Redis", "Redis's AOF rewrites", "worker parents", "worker children")


def cpu_seconds(r: Any, workers: Processes, server: Any) -> dict[str, float]:
    """CPU seconds used so far by each part of the pipeline. The producer is this process
    (``backfill`` and the completion poll); Redis forks a child for each AOF rewrite;
    worker parents receive and hand on messages, their prefork children score."""
    import psutil

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    out = dict.fromkeys(CPU_PARTS, 0.0)
    out["producer"] = used(psutil.Process())
    out["Redis"] = used(psutil.Process(server.process.pid))
    cpu = r.info("cpu")
    out["Redis's AOF rewrites"] = cpu["used_cpu_user_children"] + cpu["used_cpu_sys_children"]
    for process in workers.running.values():
        parent = psutil.Process(process.pid)
        out["worker parents"] += used(parent)
        out["worker children"] += sum(used(c) for c in parent.children(recursive=True))
    return out


def replay_with_cpu(
    r: Any, path: Path, timeout: float, workers: Processes, server: Any
) -> dict[str, Any]:
    """``replay``, plus each part's CPU per row and how many cores were busy meanwhile."""
    before = cpu_seconds(r, workers, server)
    result = replay(r, path, timeout)
    after = cpu_seconds(r, workers, server)
    spent = {part: after[part] - before[part] for part in CPU_PARTS}
    result["cpu_us_per_row"] = {
        part: round(seconds / result["rows"] * 1e6, 1) for part, seconds in spent.items()
    }
    result["cores_busy"] = round(sum(spent.values()) / result["seconds"], 2)
    return result


def train_first_model(r: Any, path: Path, timeout: float) -> None:
    """Rows ingested with no model wait in PENDING; train, then drain them to scoring."""
    from thronos_analytics.core import store
    from thronos_analytics.core.messages import send_batch
    from thronos_analytics.drain import wait_until_flagged
    from thronos_analytics.producers.backfill import backfill
    from thronos_analytics.workers import training
    from thronos_analytics.workers.celery_app import app

    done = backfill(path, send_batch, lambda rejections: None, confirm_with=r, timeout=timeout)
    result = training.retrain_model(r, "anomaly", force=True)
    if "version" not in result:
        raise RuntimeError(f"training the first anomaly model failed: {result}")
    store.drain_pending(r, lambda rows: app.send_task("thronos.score_batch", args=[rows]))
    wait_until_flagged(r, done.ids, timeout)


def retrain_and_export(r: Any, out: Path) -> dict[str, Any]:
    """Each retrain as beat's chord runs it, but one after another, then the export."""
    from thronos_analytics.core import store
    from thronos_analytics.core.settings import settings
    from thronos_analytics.workers import export, training

    timings: dict[str, Any] = {}
    started = time.perf_counter()
    # The four models of the earlier runs, so the figures stay comparable.
    for name in ("anomaly", "profiles", "recommender", "quality"):
        t = time.perf_counter()
        result = training.retrain_model(r, name, force=name == "anomaly")
        if "version" not in result:
            raise RuntimeError(f"retrain of {name} failed: {result}")
        timings[name] = {"s": round(time.perf_counter() - t, 2), "n": result.get("n_samples")}
    t = time.perf_counter()
    summary = export.write_analytics(r, out)
    timings["export"] = {"s": round(time.perf_counter() - t, 2)}
    timings["total_s"] = round(time.perf_counter() - started, 2)
    timings["ledger_rows"] = store.counts(r)["interactions_seen"]
    timings["window_rows"] = len(store.window_rows(r, settings().window_rows))
    timings["window_setting"] = settings().window_rows
    timings["export_bytes"] = out.stat().st_size
    timings["anomalies_exported"] = summary.get("anomalies")
    return timings


def single_row_cost(r: Any, repeat: int) -> dict[str, Any]:
    """Microseconds to score one row in a worker: ours (features + compiled forest) vs sklearn."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import IsolationForest

    from thronos_analytics.core import store
    from thronos_analytics.workers.scoring import current_detector

    loaded = current_detector(r)
    assert loaded is not None
    detector = loaded[1]
    rows = store.window_rows(r, 20_000)
    # sklearn's forest, same size as ours, on the baseline's features: its per-call cost
    # hardly depends on what the columns hold.
    X = naive_features(detector.norms_, rows)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(X)
    columns = NAIVE_COLUMNS
    frame_model = IsolationForest(n_estimators=100, max_samples=256, random_state=0)
    frame_model.fit(pd.DataFrame(X, columns=columns))
    row = rows[-1]
    evidence = np.random.default_rng(0).normal(size=(10_000, detector.forest_.n_features_in_))

    def ours_features_and_forest() -> None:
        detector.score_samples([row])

    def timed(fn: Callable[[], Any], n: int) -> float:
        fn()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return round(statistics.median(samples) * 1e6, 1)

    x1 = X[-1:]
    f1 = pd.DataFrame(x1, columns=columns)
    big = np.tile(X, (max(1, 10_000 // len(X)) + 1, 1))[:10_000]
    t = time.perf_counter()
    model.score_samples(big)
    sk_batch = (time.perf_counter() - t) / len(big) * 1e6
    t = time.perf_counter()
    detector.forest_.score_samples(evidence)
    ours_batch = (time.perf_counter() - t) / len(big) * 1e6
    return {
        "ours_features_forest_us": timed(ours_features_and_forest, repeat),
        "ours_flag_us": timed(lambda: detector.flag([row]), repeat),
        "ours_forest_only_us": timed(lambda: detector.forest_.score_samples(evidence[:1]), repeat),
        "sklearn_ndarray_us": timed(lambda: model.score_samples(x1), max(50, repeat // 10)),
        "sklearn_frame_us": timed(lambda: frame_model.score_samples(f1), max(50, repeat // 10)),
        "sklearn_10k_batch_us_per_row": round(sk_batch, 2),
        "ours_10k_batch_us_per_row": round(ours_batch, 2),
    }


def near_real_time(r: Any, directory: Path, rate: int, seconds: float) -> dict[str, Any]:
    """Rows recorded at ``rate`` per second; latency from ledger write to flag in Redis."""
    from thronos_analytics.core import store
    from thronos_analytics.core.settings import settings
    from thronos_analytics.producers.ai_ledger import Recorder

    config = settings()
    recorder = Recorder(
        directory / f"nrt-{rate}.jsonl", batch_size=config.batch_size, linger_ms=config.linger_ms
    )
    written: dict[str, float] = {}
    arrived: dict[str, float] = {}
    n = max(1, round(rate * seconds))
    stop = threading.Event()
    # What `flags --follow` reads, through the store: the flag stream's keys are its own.
    _, start = store.latest_flags(r, 1)

    def listen() -> None:
        cursor = start
        while not stop.is_set():
            flags, cursor = store.flags_after(r, cursor, block_ms=50)
            now = time.time()
            arrived.update((flag["id"], now) for flag in flags)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    providers = ("claude", "gpt", "gemini", "mistral", "local")
    started = time.perf_counter()
    for i in range(n):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        row = recorder.record(
            provider=providers[i % 5],
            model="bench",
            output="x" * (800 + i % 2000),
            session_id=f"bench-{rate}-{i // 20}",
            wallet=f"THRbench{i % 97}",
            credits_used=1.0 + (i % 7) / 3,
            score=0.5 + (i % 40) / 100,
            meta={"use_case": "coding", "latency_ms": 900 + i % 1500},
        )
        written[row.id] = row.ts  # set just before the ledger append
    write_seconds = time.perf_counter() - started
    try:
        wait_for(lambda: len(arrived.keys() & written.keys()) == n, 120, f"{n} flags at {rate}/s")
    finally:
        stop.set()
        listener.join(5)
        assert recorder.outbox is not None
        recorder.outbox.close(5)
    lags = [(arrived[i] - written[i]) * 1000 for i in written]
    return {
        "rate": rate,
        "rows": n,
        "achieved_rate": round(n / write_seconds),
        "p50_ms": round(percentile(lags, 0.50), 1),
        "p99_ms": round(percentile(lags, 0.99), 1),
        "max_ms": round(max(lags), 1),
    }


def naive_baseline(
    r: Any, env: dict[str, str], directory: Path, rows: list[Any], n: int
) -> dict[str, Any]:
    """One task per row through ``naive_app``'s worker (2 prefork processes, one per core)."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import IsolationForest

    from thronos_analytics.analytics.features import ProviderNorms, base_matrix

    train = rows[: min(len(rows), 20_000)]
    norms = ProviderNorms.fit(base_matrix(train), train)
    X = pd.DataFrame(naive_features(norms, train), columns=NAIVE_COLUMNS)
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(X)
    threshold = float(np.quantile(model.score_samples(X), 0.01))
    path = directory / "naive-model.pkl"
    path.write_bytes(pickle.dumps({"model": model, "norms": norms, "threshold": threshold}))
    naive_app.conf.broker_url = env["REDIS_URL"]
    workers = Processes(env)
    workers.start(
        "naive",
        [sys.executable, "-m", "celery", "-A", "benchmarks.throughput:naive_app", "worker"]
        + f"-Q {NAIVE_QUEUE} -c 2 -n naive@%h --without-mingle --without-gossip -l WARNING".split(),
        {NAIVE_MODEL_ENV: str(path)},
    )
    try:
        wait_ready(naive_app, {"naive"})
        r.delete(NAIVE_FLAGS)
        sample = [row.to_wire() for row in rows[-n:]]
        started = time.perf_counter()
        for wire in sample:
            naive_score_one.apply_async(args=[wire])
        sent = time.perf_counter()
        wait_for(lambda: r.hlen(NAIVE_FLAGS) >= len(sample), 600, "the naive baseline", 0.05)
        finished = time.perf_counter()
        peak = workers.rss()
    finally:
        workers.stop()
    return {
        "rows": len(sample),
        "seconds": round(finished - started, 2),
        "producer_seconds": round(sent - started, 2),
        "rows_per_s": round(len(sample) / (finished - started)),
        "worker_rss_mb": peak,
    }


# --- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="thronos-bench-"))
    # Every drain gets the horizon explicitly; this process retrains with it too.
    os.environ["THRONOS_RETENTION_DAYS"] = str(args.retention_days)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    try:
        if not args.only:
            results.update(pipeline(args, scratch))
        from benchmarks import drains

        results.update(drains.measure(args, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def pipeline(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Sections 1-5: one private Redis, and worker processes started here."""
    from thronos_analytics.stack import RedisServer

    server = RedisServer(scratch / "redis").start()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "THRONOS_DATA_DIR": str(scratch / "data"),
        "THRONOS_LEDGER": str(scratch / "data" / "ai_ledger.jsonl"),
    }
    env.pop("CELERY_BROKER_URL", None)
    # The Celery app reads REDIS_URL when first imported: point this process at it first.
    os.environ.update({k: env[k] for k in ("REDIS_URL", "THRONOS_DATA_DIR", "THRONOS_LEDGER")})
    os.environ.pop("CELERY_BROKER_URL", None)
    workers = Processes(env)
    try:
        return measure(args, server, env, scratch, workers)
    finally:
        workers.stop()
        server.stop()


def measure(
    args: argparse.Namespace, server: Any, env: dict[str, str], scratch: Path, workers: Processes
) -> dict[str, Any]:
    from benchmarks import ledger_writes
    from thronos_analytics.analytics.simulate import SimConfig, write
    from thronos_analytics.core import store
    from thronos_analytics.core.contract import Row, parse_line
    from thronos_analytics.core.messages import SCORING
    from thronos_analytics.core.settings import settings
    from thronos_analytics.producers.backfill import BACKFILL_BATCH
    from thronos_analytics.stack import worker_command
    from thronos_analytics.workers.celery_app import app

    out: dict[str, Any] = {}
    r = store.connect(server.url)
    sizes = [10_000, 90_000, args.rows - 100_000] if args.rows > 100_000 else [10_000, 90_000]
    log(f"simulating a ledger of {sum(sizes):,} rows")
    ledger = scratch / "ledger.jsonl"
    # The near-real-time rows carry today's time, and the state keeps only the horizon
    # before its newest day: the simulated rows fill the horizon's whole days up to today.
    days = args.retention_days
    start = (time.time() // 86_400 - (days - 1)) * 86_400
    write(SimConfig(rows=sum(sizes), seed=11, start_ts=start, days=days, drop=True), ledger)
    parts = split_ledger(ledger, sizes, scratch)

    names = [f"scoring{i + 1}" for i in range(args.workers)]
    for name in names:
        workers.start(name, worker_command(name, SCORING, 1))
    wait_ready(app, set(names))
    config = settings()
    out["settings"] = {
        "scoring_workers": f"{args.workers} x prefork -c 1",
        "batch_size": config.batch_size,
        "linger_ms": config.linger_ms,
        "window_rows": config.window_rows,
        "backfill_batch": BACKFILL_BATCH,
    }

    log("first 10k rows, first model, retrain + export at 10k")
    train_first_model(r, parts[0], 600)
    out["retrain"] = {"10k": retrain_and_export(r, scratch / "ai_analytics.json")}

    log("single-row scoring cost")
    out["single_row"] = single_row_cost(r, 2000 if not args.quick else 500)

    log("the ledger writer, threads recording at once")
    out["ledger_writes"] = ledger_writes.measure(scratch)

    out["near_real_time"] = []
    for rate in (100, 1000, 5000):
        seconds = args.nrt_seconds * (0.6 if rate == 5000 else 1.0)
        log(f"near real time at {rate}/s for {seconds:.0f}s")
        out["near_real_time"].append(near_real_time(r, scratch, rate, seconds))

    log("bulk: 90k rows through backfill")
    out["bulk"] = {"100k": replay_with_cpu(r, parts[1], 900, workers, server)}
    out["retrain"]["100k"] = retrain_and_export(r, scratch / "ai_analytics.json")
    if len(parts) > 2:
        log(f"bulk: {sizes[2]:,} rows through backfill")
        out["bulk"]["1m"] = replay_with_cpu(r, parts[2], 1800, workers, server)
        log("retrain + export at the full ledger")
        out["retrain"]["1m"] = retrain_and_export(r, scratch / "ai_analytics.json")
    out["worker_rss_mb"] = workers.rss()
    out["redis_used_memory_mb"] = round(r.info("memory")["used_memory"] / 2**20)
    workers.stop()

    log(f"naive baseline: {args.naive_rows:,} rows, one task each")
    lines = parts[0].read_bytes().splitlines()
    rows = [x for x in (parse_line(line) for line in lines) if isinstance(x, Row)]
    out["naive"] = naive_baseline(r, env, scratch, rows, args.naive_rows)
    return out


def met(good: bool) -> str:
    return "yes" if good else "**no**"


def issue_targets(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """(measure, target, this run, baseline in the same run, ratio, met?) for the issue's
    targets; a figure that is a ratio of two measured ones shows both."""
    from benchmarks import drains

    t = TARGETS
    hz, peer, cluster = res["horizon"], res["drain_vs_script"], res["cluster"]
    half, one, three = hz["half"], hz["1x"], hz["3x"]
    bulk_key = "1m" if "1m" in res["bulk"] else "100k"
    bulk, naive = res["bulk"][bulk_key]["rows_per_s"], res["naive"]["rows_per_s"]
    growth = hz["growth_bytes_per_row_used_memory"]
    memory_ratio = hz["three_over_one_used_memory"]
    script, drain = peer["script"]["wall_s"], peer["drain"]["wall_s"]
    r1, r3 = one["retrain"], three["retrain"]

    def mb(entry: dict[str, Any]) -> str:
        return f"{drains.mb(entry['used_memory'])} MB"

    rows = [
        (
            "Redis memory growth per interaction inside the horizon",
            f"≤ {t['growth_bytes_per_row']} B",
            f"{growth:,.0f} B",
            f"{mb(half)} at N = {half['rows']:,}, {mb(one)} at 2N",
            "",
            met(growth <= t["growth_bytes_per_row"]),
        ),
        (
            f"Redis memory, 3× horizon ({three['days']} days) vs 1× ({one['days']} days)",
            f"≤ {t['memory_three_over_one']}×",
            f"{mb(three)} ({three['rows']:,} rows)",
            f"{mb(one)} ({one['rows']:,} rows)",
            f"{memory_ratio:.2f}×",
            met(memory_ratio <= t["memory_three_over_one"]),
        ),
        (
            f"`run --drain` of {peer['ledger']['rows']:,} rows vs the one-process script",
            f"≥ {t['script_over_drain']}×",
            f"drain {drain} s",
            f"script {script} s",
            f"{peer['script_over_drain']:.2f}×",
            met(peer["script_over_drain"] >= t["script_over_drain"]),
        ),
        (
            f"bulk backfill → flags, {res['bulk'][bulk_key]['rows']:,} rows"
            + ("" if bulk_key == "1m" else " (--quick: not the 1M replay)"),
            f"≥ {t['bulk_rows_per_s']:,} rows/s",
            f"{bulk:,} rows/s",
            "",
            "",
            met(bulk >= t["bulk_rows_per_s"]),
        ),
        (
            "bulk vs naive",
            f"≥ {t['bulk_vs_naive']}×",
            f"{bulk:,} rows/s",
            f"naive {naive:,} rows/s",
            f"{bulk / naive:.0f}×",
            met(bulk / naive >= t["bulk_vs_naive"]),
        ),
        (
            f"retrain all + export, {r3['ledger_rows']:,} rows (3× horizon) vs"
            f" {r1['ledger_rows']:,} (1×)",
            f"≤ {t['retrain_three_over_one']}×",
            f"{r3['total_s']} s",
            f"{r1['total_s']} s",
            f"{hz['retrain_three_over_one']:.2f}×",
            met(hz["retrain_three_over_one"] <= t["retrain_three_over_one"]),
        ),
    ]
    if "skipped" in cluster:
        rows.append(
            ("3-node Redis Cluster vs one node, same drain", f"≥ {t['cluster_over_one_node']}×")
            + (cluster["skipped"].split(":")[0], "", "", "")
        )
    else:
        c, one_node = cluster["cluster"], cluster["one_node"]
        ratio = cluster["cluster_over_one_node"]
        once = c["status"]["every_row_once"] and one_node["status"]["every_row_once"]
        rows.append(
            (
                "3-node Redis Cluster vs one node, same drain (every row once)",
                f"≥ {t['cluster_over_one_node']}×",
                f"{c['rows_per_s']:,} rows/s",
                f"one node {one_node['rows_per_s']:,} rows/s",
                f"{ratio:.2f}×",
                met(ratio >= t["cluster_over_one_node"] and once),
            )
        )
    return rows


def verdicts(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, figure, target, met?) for the table."""
    bulk = res["bulk"].get("1m", res["bulk"]["100k"])
    naive = res["naive"]["rows_per_s"]
    nrt = {x["rate"]: x for x in res["near_real_time"]}
    retrain = res["retrain"].get("1m", res["retrain"]["100k"])
    rss = max(v["VmHWM"] for v in res["worker_rss_mb"].values())
    single = res["single_row"]["ours_features_forest_us"]
    return [
        ("naive baseline, rows/s", f"{naive:,}", "", ""),
        (
            f"bulk (backfill of {bulk['rows']:,} rows), rows/s",
            f"{bulk['rows_per_s']:,}",
            f"≥ {TARGETS['bulk_rows_per_s']:,}",
            met(bulk["rows_per_s"] >= TARGETS["bulk_rows_per_s"]),
        ),
        (
            "bulk ÷ naive",
            f"{bulk['rows_per_s'] / naive:.0f}×",
            f"≥ {TARGETS['bulk_vs_naive']}×",
            met(bulk["rows_per_s"] / naive >= TARGETS["bulk_vs_naive"]),
        ),
        (
            "p99 write-to-flag at 1,000 rows/s, ms",
            f"{nrt[1000]['p99_ms']}",
            f"≤ {TARGETS['p99_ms_at_1000']}",
            met(nrt[1000]["p99_ms"] <= TARGETS["p99_ms_at_1000"]),
        ),
        (
            "single-row scoring in a worker (features + compiled forest), µs",
            f"{single}",
            f"≤ {TARGETS['single_row_us']}",
            met(single <= TARGETS["single_row_us"]),
        ),
        (
            f"retrain all + export at {retrain['ledger_rows']:,} rows, s",
            f"{retrain['total_s']}",
            f"≤ {TARGETS['retrain_export_1m_s']}",
            met(retrain["total_s"] <= TARGETS["retrain_export_1m_s"])
            if "1m" in res["retrain"]
            else "(1M not run: --quick)",
        ),
        (
            "peak RSS of a scoring worker process, MB",
            f"{rss:.0f}",
            f"≤ {TARGETS['worker_rss_mb']}",
            met(rss <= TARGETS["worker_rss_mb"]),
        ),
    ]


def report(res: dict[str, Any]) -> str:
    from benchmarks import drains, ledger_writes

    m = res["machine"]
    naive = res["naive"]["rows_per_s"]
    lines = [
        "## Figures",
        "",
        "Written by `python -m benchmarks.throughput"
        + (" --quick" if res["args"]["quick"] else "")
        + f"` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Reproduce with"
        " `make bench` (or `python -m benchmarks.throughput [--quick]`). Everything below"
        " ran in that one run, against a private redis-server (AOF on) and real Celery worker"
        " processes on the same machine.",
        "",
        "### Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores (shared; load average at start "
        f"{', '.join(map(str, m['load_average_at_start']))})",
        f"- {m['os']}, Python {m['python']}, redis-server {m['redis_server']}",
        "- " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        "",
        "### Against this issue's targets",
        "",
        "| measure | target | this run | baseline in the same run | ratio | met |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in issue_targets(res)),
        "",
        "### Against the earlier targets",
        "",
        "| measure | figure | target | met |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts(res)),
        "",
        "### Throughput",
        "",
        "| mode | rows | seconds | rows/s | × naive |",
        "|---|---|---|---|---|",
        f"| naive: one Celery task per row, sklearn `score_samples` on a one-row DataFrame "
        f"| {res['naive']['rows']:,} | {res['naive']['seconds']} | {naive:,} | 1× |",
    ]
    for label, bulk in res["bulk"].items():
        lines.append(
            f"| bulk: backfill → flags in Redis ({label} ledger) | {bulk['rows']:,} "
            f"| {bulk['seconds']} | {bulk['rows_per_s']:,} | {bulk['rows_per_s'] / naive:.0f}× |"
        )
    s = res["settings"]
    lines += [
        "",
        f"Scoring workers: {s['scoring_workers']}; backfill batches of {s['backfill_batch']}"
        f" rows; live batches up to {s['batch_size']} rows, linger {s['linger_ms']} ms."
        " Times run from the first row sent to the last flag readable in Redis; the"
        " producer shares the machine with the workers and Redis.",
        "",
        "CPU per row during each bulk replay, by part of the pipeline (µs; the producer"
        " includes the completion poll, Redis serves it):",
        "",
        f"| replay | {' | '.join(CPU_PARTS)} | total | cores busy |",
        "|---|" + "---|" * (len(CPU_PARTS) + 2),
        *(
            f"| {label} ledger | "
            + " | ".join(str(bulk["cpu_us_per_row"][part]) for part in CPU_PARTS)
            + f" | {sum(bulk['cpu_us_per_row'].values()):.1f} | {bulk['cores_busy']} |"
            for label, bulk in res["bulk"].items()
        ),
        "",
        "### Near real time: ledger write → flag readable in Redis",
        "",
        "Rows written one by one with `Recorder.record` (what `record_interaction` calls;"
        " fsync per row), emitted by the Outbox in micro-batches; the flag's arrival is read"
        " as `flags --follow` reads it (`store.flags_after`: XREAD on the flag stream, one"
        " entry per scored batch). Latency starts when the row's `ts` is taken, just before"
        " the ledger append.",
        "",
        "| rate asked, rows/s | achieved | rows | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {x['rate']:,} | {x['achieved_rate']:,} | {x['rows']:,} | {x['p50_ms']} "
            f"| {x['p99_ms']} | {x['max_ms']} |"
            for x in res["near_real_time"]
        ),
        "",
        *ledger_writes.markdown(res["ledger_writes"]),
        "### Scoring one row inside a worker",
        "",
        "| what | µs per row |",
        "|---|---|",
    ]
    single = res["single_row"]
    labels = {
        "ours_features_forest_us": "ours: `AnomalyScorer.score_samples([row])`: all features"
        " (norms, context) + compiled forest",
        "ours_flag_us": "ours: `AnomalyScorer.flag([row])` (adds the flag dict)",
        "ours_forest_only_us": "ours: compiled forest only, one row",
        "sklearn_ndarray_us": "sklearn `score_samples`, one-row ndarray",
        "sklearn_frame_us": "sklearn `score_samples`, one-row DataFrame (the naive task)",
        "sklearn_10k_batch_us_per_row": "sklearn `score_samples`, 10k-row batch, per row",
        "ours_10k_batch_us_per_row": "ours: compiled forest, 10k-row batch, per row",
    }
    lines += [f"| {labels[k]} | {v} |" for k, v in single.items()]
    lines += [
        "",
        "### Retrain all four models + export",
        "",
        "Run one after another in this process (beat runs the four as a chord on the training"
        " worker, then the export). The anomaly model, recommender and quality check read the"
        f" rolling window, capped at `THRONOS_WINDOW_ROWS` = {s['window_rows']:,}; profiles"
        " read the session and wallet aggregates, which grow with the ledger.",
        "",
        RETRAIN_HEADER,
        "|---|---|---|---|---|---|---|---|",
        *(retrain_row(t) for t in res["retrain"].values()),
    ]
    lines += [
        "",
        "### Memory",
        "",
        "| process | peak RSS (VmHWM) MB | RSS at the end MB |",
        "|---|---|---|",
        *(
            f"| pipeline {name} | {v['VmHWM']:.0f} | {v['VmRSS']:.0f} |"
            for name, v in res["worker_rss_mb"].items()
        ),
        *(
            f"| baseline {name} | {v['VmHWM']:.0f} | {v['VmRSS']:.0f} |"
            for name, v in res["naive"]["worker_rss_mb"].items()
        ),
        "",
        f"Redis used memory after the run: {res['redis_used_memory_mb']:,} MB.",
        "",
        *drains.markdown(res),
    ]
    return "\n".join(lines)


RETRAIN_HEADER = (
    "| ledger rows | window rows | anomaly s | profiles s | recommender s | quality s "
    "| export s | total s |"
)


def retrain_row(t: dict[str, Any]) -> str:
    """One ``retrain_and_export`` as a row under RETRAIN_HEADER."""
    return (
        f"| {t['ledger_rows']:,} | {t['window_rows']:,} | {t['anomaly']['s']} "
        f"| {t['profiles']['s']} | {t['recommender']['s']} | {t['quality']['s']} "
        f"| {t['export']['s']} | {t['total_s']} |"
    )


BEGIN, END = (
    "<!-- figures: begin (written by benchmarks/throughput.py) -->",
    "<!-- figures: end -->",
)


def write_report(path: Path, figures: str) -> None:
    """Replace the figures between the markers, keeping the hand-written text around them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = "", "\n"
    path.write_text(f"{head}{BEGIN}\n{figures}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k rows, shorter phases")
    parser.add_argument("--rows", type=int, default=None, help="bulk ledger rows (1,000,000)")
    parser.add_argument("--workers", type=int, default=2, help="scoring worker processes")
    parser.add_argument("--naive-rows", type=int, default=None, help="rows for the baseline")
    parser.add_argument("--nrt-seconds", type=float, default=None, help="seconds per rate")
    parser.add_argument("--cluster", action="store_true", help="also a 3-node Redis Cluster")
    parser.add_argument(
        "--only",
        type=lambda v: sorted(set(v.split(","))),
        default=None,
        help="just these drain sections, no document: peer, horizon, cluster (comma-separated)",
    )
    parser.add_argument("--peer-rows", type=int, default=300_000, help="rows for drain vs script")
    parser.add_argument(
        "--horizon-rows", type=int, default=None, help="rows in one horizon (1,000,000)"
    )
    parser.add_argument("--retention-days", type=int, default=8, help="THRONOS_RETENTION_DAYS")
    parser.add_argument("--repeats", type=int, default=None, help="drains and scripts (2)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    args = parser.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.naive_rows = args.naive_rows or (1000 if args.quick else 3000)
    args.nrt_seconds = args.nrt_seconds or (3.0 if args.quick else 10.0)
    args.horizon_rows = args.horizon_rows or (100_000 if args.quick else 1_000_000)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.rows < 100_000:
        parser.error("--rows must be at least 100000 (10k to train, 90k for the first bulk)")
    if args.only and not set(args.only) <= {"peer", "horizon", "cluster"}:
        parser.error(f"--only takes peer, horizon and cluster, not {','.join(args.only)}")
    if args.only and "cluster" in args.only:
        args.cluster = True
    results = run(args)
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.json:  # first: the figures outlive a report that fails
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if not args.only:
        write_report(args.out, report(results))
        log(f"wrote {args.out}")
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
