"""Whole drains, measured from outside: ``thronos-analytics run --drain`` beside a baseline.

Run by ``benchmarks.throughput`` (``make bench``), after its own sections, each figure in
the same run as its baseline:

1. **run --drain vs the one-process script**: the same simulated ledger through ``run
   --drain`` (a private redis-server, AOF on, as the broker too, as in ``make drain``) and
   through ``benchmarks.one_process`` (pandas + scikit-learn in one process), each a fresh
   process timed from start to exit;
2. **Redis memory across the retention horizon**: ledgers of N and 2N rows over one
   horizon, and the 2N ledger played three times in a row (3× the horizon, the same rows
   per day), each drained into a fresh Redis, then ``INFO memory``;
3. **retrain all + export at 3× the horizon vs 1×**, on the Redis of those drains
   (``throughput.retrain_and_export``);
4. **a 3-node Redis Cluster vs one node, the same drain**, with one shard per master and
   with 16 (``--cluster`` only).

Everything goes through the command line (``run --drain``, ``status --json``) and Redis's
``INFO``: nothing here reads the state's keys, whose layout is changing. The drains keep
the broker in a Redis of its own where the state's memory is measured or sharded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.throughput import (
    RETRAIN_HEADER,
    ROOT,
    log,
    retrain_and_export,
    retrain_row,
    wait_for,
)
from thronos_analytics.core.settings import Settings

CLI = [sys.executable, "-m", "thronos_analytics.cli"]
DAY_MS = 86_400_000
# Variables that would point a drain at another stack or ledger: each drain sets its own.
STACK_ENV = (
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "THRONOS_REDIS_CLUSTER",
    "THRONOS_DATA_DIR",
    "THRONOS_LEDGER",
)
PEER_SEED, HORIZON_SEED = 23, 31
DRAIN_PHASES = ("start_and_stop", "ingest", "train_and_score", "retrain_and_export", "total")
SCRIPT_PHASES = ("read", "anomalies", "personas", "recommendations", "quality", "export")


# --- running the command line -------------------------------------------------------------


def cli_env(
    data_dir: Path,
    redis_url: str,
    retention_days: int,
    broker_url: str | None = None,
    cluster: bool = False,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_ENV}
    env.update(
        THRONOS_DATA_DIR=str(data_dir),
        REDIS_URL=redis_url,
        THRONOS_RETENTION_DAYS=str(retention_days),
    )
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    if cluster:
        env["THRONOS_REDIS_CLUSTER"] = "1"
    return env


def cpu_of_children() -> float:
    """CPU seconds of every finished child process and their waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(command: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``command`` to its end: its JSON output, wall seconds, CPU seconds of its tree."""
    cpu = cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{' '.join(command[1:])} exited {done.returncode}: {tail}")
    return {
        "output": orjson.loads(done.stdout),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu_of_children() - cpu, 2),
    }


def cli_drain(ledger: Path, env: dict[str, str], timeout: float = 4 * 3600) -> dict[str, Any]:
    """``run --drain`` of ``ledger``: wall and CPU, and the phases the drain reports."""
    ran = timed_process(
        [*CLI, "run", "--drain", "--no-demo", "--ledger", str(ledger)], env, timeout
    )
    out = ran.pop("output")
    timings = out["timings_s"]
    return {
        **ran,
        "valid_rows": out["valid_rows"],
        "distinct_ids": out["distinct_ids"],
        "anomalies": out.get("anomalies"),
        # Stack start-up and shut-down: the wall the drain's own clock does not see.
        "phases_s": {"start_and_stop": round(ran["wall_s"] - timings["total"], 2), **timings},
        # The rows' way to a flag: ingest all, then train once and score them all.
        "rows_per_s": round(out["valid_rows"] / (timings["ingest"] + timings["train_and_score"])),
    }


def status_after(drain: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """``status --json`` after the drain: rows seen, flagged, and counted late (past the
    horizon when they came); whether that is every row once (each distinct row seen once,
    and either flagged or counted late); and how long each model took to fit."""
    status = timed_process([*CLI, "status", "--json"], env, 120)["output"]
    seen, scored = status["interactions_seen"], status["interactions_scored"]
    late = status.get("interactions_late", 0)  # no horizon, no late rows
    distinct = drain["distinct_ids"]
    return {
        "distinct": distinct,
        "seen": seen,
        "scored": scored,
        "late": late,
        "every_row_once": seen == distinct == drain["valid_rows"] and scored + late == seen,
        "fit_s": {name: m.get("duration_s") for name, m in status.get("models", {}).items()},
    }


# --- private Redis servers ----------------------------------------------------------------


@contextlib.contextmanager
def private_redis(directory: Path, appendonly: bool = True) -> Iterator[Any]:
    from thronos_analytics.stack import RedisServer

    server = RedisServer(directory, appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.stop()


def memory(r: redis.Redis) -> dict[str, int]:
    # An AOF rewrite's buffer counts in used_memory until the rewrite ends.
    wait_for(lambda: not r.info("persistence")["aof_rewrite_in_progress"], 600, "an AOF rewrite")
    info = r.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_dataset")}


def redis_cpu_s(r: redis.Redis) -> float:
    """CPU seconds of the server so far, its forked AOF rewrites included."""
    cpu = r.info("cpu")
    parts = ("used_cpu_user", "used_cpu_sys", "used_cpu_user_children", "used_cpu_sys_children")
    return sum(cpu[p] for p in parts)


# --- ledgers ------------------------------------------------------------------------------


def write_ledger(path: Path, rows: int, days: int, seed: int, copies: int = 1) -> dict[str, int]:
    """A simulated ledger of ``rows`` over ``days``, played ``copies`` times back to back:
    copy k is shifted by k × ``days``, with its own interaction and session ids and the
    same wallets, so every ``days``-long span holds the same rows, sessions and wallets."""
    from thronos_analytics.analytics.simulate import SimConfig, generate, render

    sim = generate(SimConfig(rows=rows, seed=seed, days=days))
    with path.open("wb") as f:
        for k in range(copies):
            copy = dataclasses.replace(
                sim,
                # render() names rows sim-<seed>-<i>: a seed per copy keeps the ids apart.
                cfg=dataclasses.replace(sim.cfg, seed=seed * 100 + k),
                ts_ms=sim.ts_ms + k * days * DAY_MS,
                sessions=[f"{s}-{k}" for s in sim.sessions] if k else sim.sessions,
            )
            f.write(b"\n".join(render(copy)) + b"\n")
    return {
        "rows": rows * copies,
        "days": days * copies,
        "sessions": len(sim.sessions) * copies,
        "wallets": len(sim.wallets),
    }


# --- the measurements ---------------------------------------------------------------------


def drain_vs_script(
    args: argparse.Namespace, scratch: Path, ledger: Path, facts: dict[str, int]
) -> dict[str, Any]:
    """The one-process script and ``run --drain`` on ``ledger``, alternately; best of each."""
    scripts, drains = [], []
    for i in range(args.repeats):
        log(f"one-process script on {facts['rows']:,} rows ({i + 1}/{args.repeats})")
        command = [sys.executable, "-m", "benchmarks.one_process", str(ledger)]
        script = timed_process(
            [*command, "--out", str(scratch / "peer.json")], dict(os.environ), 1800
        )
        scripts.append({**script.pop("output"), **script})
        log(f"run --drain on {facts['rows']:,} rows ({i + 1}/{args.repeats})")
        with private_redis(scratch / f"redis-peer-{i}") as server:
            env = cli_env(scratch / f"data-peer-{i}", server.url, args.retention_days)
            drain = cli_drain(ledger, env)
            drain["status"] = status_after(drain, env)
            drain["redis_cpu_s"] = round(redis_cpu_s(redis.Redis.from_url(server.url)), 2)
        drains.append(drain)
    script = min(scripts, key=lambda x: x["wall_s"])
    drain = min(drains, key=lambda x: x["wall_s"])
    return {
        "ledger": facts,
        "script": script,
        "drain": drain,
        "script_walls_s": [x["wall_s"] for x in scripts],
        "drain_walls_s": [x["wall_s"] for x in drains],
        "script_over_drain": round(script["wall_s"] / drain["wall_s"], 3),
    }


def horizon(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Redis memory after draining N and 2N rows over one horizon, and 2N rows a horizon
    over three; retrain all + export on the 1× and 3× states."""
    from thronos_analytics.core import store

    days, rows = args.retention_days, args.horizon_rows
    # (label, rows per horizon, horizons): the 3× ledger is the 1× one three times over.
    plan = [("half", rows // 2, 1), ("1x", rows, 1), ("3x", rows, 3)]
    out: dict[str, Any] = {"retention_days": days}
    for label, per_horizon, copies in plan:
        ledger = scratch / f"horizon-{label}.jsonl"
        log(f"horizon {label}: {per_horizon * copies:,} rows over {days * copies} days")
        facts = write_ledger(ledger, per_horizon, days, HORIZON_SEED, copies)
        with (
            private_redis(scratch / f"redis-{label}") as state,
            private_redis(scratch / f"broker-{label}", appendonly=False) as broker,
        ):
            r = redis.Redis.from_url(state.url)
            empty = memory(r)["used_memory"]
            env = cli_env(scratch / f"data-{label}", state.url, days, broker.url)
            drain = cli_drain(ledger, env)
            entry = {
                **facts,
                **memory(r),
                "empty_used_memory": empty,
                "status": status_after(drain, env),
                "drain": drain,
            }
            if label != "half":
                log(f"horizon {label}: retrain all + export")
                retrain = retrain_and_export(store.connect(state.url), scratch / "horizon.json")
                entry["retrain"] = retrain
        ledger.unlink()
        out[label] = entry
    half, one, three = out["half"], out["1x"], out["3x"]
    for key in ("used_memory", "used_memory_dataset"):
        grown = (one[key] - half[key]) / (one["rows"] - half["rows"])
        out[f"growth_bytes_per_row_{key}"] = round(grown, 1)
        out[f"three_over_one_{key}"] = round(three[key] / one[key], 3)
    out["retrain_three_over_one"] = round(
        three["retrain"]["total_s"] / one["retrain"]["total_s"], 3
    )
    return out


@contextlib.contextmanager
def cluster_nodes(directory: Path) -> Iterator[list[str]]:
    """A 3-node Redis Cluster under ``directory`` (``tests/cluster.py``): its nodes' URLs."""
    from cluster import LocalCluster  # tests/ is on sys.path: see cluster_missing()

    cluster = LocalCluster(directory)
    try:
        yield cluster.start().urls
    finally:
        cluster.stop()


def cluster_missing() -> str | None:
    """Why the cluster cannot be started here, or None."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH"
    # tests/cluster.py imports its neighbours by bare name, as pytest puts tests/ on the path.
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))
    try:
        from cluster import LocalCluster  # noqa: F401
    except ImportError as exc:
        return f"tests/cluster.py has no LocalCluster ({exc})"
    return None


@contextlib.contextmanager
def one_node(directory: Path) -> Iterator[list[str]]:
    with private_redis(directory) as server:
        yield [server.url]


# The cluster's drains: name -> THRONOS_CLUSTER_SHARDS (None: one node). "cluster" runs with
# the default (one shard per master) and is the measure; 16 shards shows what shards cost.
CLUSTER_MODES = {"one_node": None, "cluster": "3", "cluster_16_shards": "16"}


def cluster_vs_one_node(
    args: argparse.Namespace, scratch: Path, ledger: Path, facts: dict[str, int]
) -> dict[str, Any]:
    """The same drain on one Redis and on a 3-node cluster (3 and 16 shards), alternately,
    best of ``args.repeats`` each; the broker a plain Redis of its own in all; rows per
    second from the first row sent to the last flag."""
    if not args.cluster:
        return {"skipped": "not run: pass --cluster (a 3-node Redis Cluster from tests/cluster.py)"}
    if why := cluster_missing():
        log(f"cluster section skipped: {why}")
        return {"skipped": f"skipped: {why}"}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in CLUSTER_MODES}
    for i in range(args.repeats):
        for mode, shards in CLUSTER_MODES.items():
            name = mode.replace("_", " ")
            log(f"{name}: run --drain of {facts['rows']:,} rows ({i + 1}/{args.repeats})")
            nodes = one_node if shards is None else cluster_nodes
            with (
                nodes(scratch / f"state-{mode}-{i}") as urls,
                private_redis(scratch / f"broker-{mode}-{i}", appendonly=False) as broker,
            ):
                env = cli_env(
                    scratch / f"data-{mode}-{i}",
                    urls[0],
                    args.retention_days,
                    broker.url,
                    shards is not None,
                )
                if shards is not None:
                    env["THRONOS_CLUSTER_SHARDS"] = shards
                try:
                    drain = cli_drain(ledger, env)
                except RuntimeError as exc:
                    log(f"{name}: {exc}")
                    return {"skipped": f"failed on {name}: {exc}"}
                drain["status"] = status_after(drain, env)
                drain["nodes"] = len(urls)
                drain["shards"] = int(shards or 1)
                cpu = [redis_cpu_s(redis.Redis.from_url(url)) for url in urls]
                drain["redis_cpu_s"] = round(sum(cpu), 2)
            runs[mode].append(drain)
    out: dict[str, Any] = {"ledger": facts}
    for mode, drains in runs.items():
        out[mode] = max(drains, key=lambda d: d["rows_per_s"])
        out[mode]["all_rows_per_s"] = [d["rows_per_s"] for d in drains]
    one = out["one_node"]["rows_per_s"]
    out["cluster_over_one_node"] = round(out["cluster"]["rows_per_s"] / one, 3)
    out["cluster_16_shards_over_one_node"] = round(out["cluster_16_shards"]["rows_per_s"] / one, 3)
    return out


def measure(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = set(args.only or ("peer", "horizon", "cluster"))
    if sections & {"peer", "cluster"}:
        ledger = scratch / "peer.jsonl"
        log(f"simulating the peer ledger: {args.peer_rows:,} rows over {args.retention_days} days")
        facts = write_ledger(ledger, args.peer_rows, args.retention_days, PEER_SEED)
        if "peer" in sections:
            out["drain_vs_script"] = drain_vs_script(args, scratch, ledger, facts)
        if "cluster" in sections:
            out["cluster"] = cluster_vs_one_node(args, scratch, ledger, facts)
    if "horizon" in sections:
        out["horizon"] = horizon(args, scratch)
    return out


# --- the report ---------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def once(status: dict[str, Any]) -> str:
    if status["every_row_once"]:
        return "yes"
    if status["seen"] != status["distinct"]:
        return f"**no**: {status['seen']:,} seen of {status['distinct']:,}"
    lost = status["seen"] - status["scored"] - status["late"]
    return f"**no**: {lost:,} neither flagged nor late"


def markdown(res: dict[str, Any]) -> list[str]:
    """This module's sections of docs/performance.md."""
    peer, hz, cl = res["drain_vs_script"], res["horizon"], res["cluster"]
    script, drain = peer["script"], peer["drain"]
    facts = peer["ledger"]
    startup = script["wall_s"] - script["timings_s"]["total"]
    n = len(peer["drain_walls_s"])
    runs = f"best of {n} runs each, alternating" if n > 1 else "one run each"
    first_rows = Settings().first_model_rows  # the drains' environment is this one's
    lines = [
        "### `run --drain` against the one-process script",
        "",
        f"One simulated ledger of {facts['rows']:,} rows over {facts['days']} days"
        f" ({facts['sessions']:,} sessions, {facts['wallets']:,} wallets), through"
        " `thronos-analytics run --drain` (2 scoring workers and a training worker of 2"
        " processes, on a"
        " private redis-server with AOF on that is the broker too, as in `make drain`) and"
        " through `python -m benchmarks.one_process` (the spec's analytics in pandas and"
        " scikit-learn, one process; its libraries may use both cores). Each is a fresh"
        f" process timed from start to exit; {runs} (script"
        f" {', '.join(map(str, peer['script_walls_s']))} s; drain"
        f" {', '.join(map(str, peer['drain_walls_s']))} s).",
        "",
        "| | wall s | CPU s, its processes | CPU s, Redis | cores busy | rows/s |",
        "|---|---|---|---|---|---|",
        f"| one-process script | {script['wall_s']} | {script['cpu_s']} | | "
        f"{script['cpu_s'] / script['wall_s']:.2f} | {script['rows'] / script['wall_s']:,.0f} |",
        f"| `run --drain` | {drain['wall_s']} | {drain['cpu_s']} | {drain['redis_cpu_s']} | "
        f"{(drain['cpu_s'] + drain['redis_cpu_s']) / drain['wall_s']:.2f} | "
        f"{drain['valid_rows'] / drain['wall_s']:,.0f} |",
        "",
        f"Script ÷ drain: **{peer['script_over_drain']:.2f}×**. Where each spends its wall"
        " time (s):",
        "",
        "| `run --drain` | start + stop of the stack | ingest (and score) | score the rest"
        " | retrain + export | total |",
        "|---|---|---|---|---|---|",
        "| | " + " | ".join(str(drain["phases_s"][k]) for k in DRAIN_PHASES) + " |",
        "",
        "Inside the drain, each model's fit took (s, from `status --json`): "
        + ", ".join(f"{k} {v}" for k, v in sorted(drain["status"]["fit_s"].items()))
        + " (the last fit of each, the anomaly model's on the whole window). The workers"
        f" train the first anomaly model once THRONOS_FIRST_MODEL_ROWS ({first_rows:,})"
        " rows are in and score the rest as they come; the drain then retrains all five"
        " at once on its two training processes.",
        "",
        "| script | read | anomalies | personas | recommendations | quality | export | total"
        " (+ start-up) |",
        "|---|---|---|---|---|---|---|---|",
        "| | "
        + " | ".join(str(script["timings_s"][k]) for k in SCRIPT_PHASES)
        + f" | {script['timings_s']['total']} ({startup:.2f}) |",
        "",
        "### Redis memory across the retention horizon",
        "",
        f"`THRONOS_RETENTION_DAYS={hz['retention_days']}`. Each ledger drained with `run"
        " --drain` into a fresh private redis-server (AOF on; the broker a Redis of its own),"
        " then `INFO memory` once any AOF rewrite has ended. *N* and *2N* rows share the same"
        f" {hz['retention_days']} days (twice the density: twice the sessions and wallets);"
        " the 3× ledger is the 2N ledger played three times in a row, days shifted, with new"
        " interaction and session ids and the same wallets, so each horizon-long span of it"
        " holds what the 1× ledger holds. Growth per interaction = (used_memory after 2N −"
        " after N) / N.",
        "",
        "| ledger | days | rows | sessions | wallets | used_memory MB | used_memory_dataset"
        " MB | B per row over an empty Redis | flagged | counted late | every row once |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name in (("half", "N"), ("1x", "2N, 1× horizon"), ("3x", "3× horizon")):
        e, st = hz[label], hz[label]["status"]
        per_row = (e["used_memory"] - e["empty_used_memory"]) / e["rows"]
        lines.append(
            f"| {name} | {e['days']} | {e['rows']:,} | {e['sessions']:,} | {e['wallets']:,} "
            f"| {mb(e['used_memory'])} | {mb(e['used_memory_dataset'])} | {per_row:,.0f} "
            f"| {st['scored']:,} | {st['late']:,} | {once(st)} |"
        )
    lines += [
        "",
        f"Growth per interaction inside the horizon: **{hz['growth_bytes_per_row_used_memory']:,}"
        f" B** ({hz['growth_bytes_per_row_used_memory_dataset']:,} B of dataset). 3× horizon"
        f" ÷ 1×: **{hz['three_over_one_used_memory']:.2f}×**"
        f" ({hz['three_over_one_used_memory_dataset']:.2f}× of dataset).",
        "",
        "### Retrain all four models + export at 1× and 3× the horizon",
        "",
        "`throughput.retrain_and_export` on the Redis each drain above left.",
        "",
        RETRAIN_HEADER,
        "|---|---|---|---|---|---|---|---|",
        retrain_row(hz["1x"]["retrain"]),
        retrain_row(hz["3x"]["retrain"]),
        "",
        f"3× ÷ 1×: **{hz['retrain_three_over_one']:.2f}×**.",
        "",
    ]
    return [*lines, *cluster_markdown(cl)]


def cluster_markdown(cl: dict[str, Any]) -> list[str]:
    lines = ["### Redis Cluster (3 nodes) against one node", ""]
    if "skipped" in cl:
        why = " ".join(cl["skipped"].split())  # a drain's stderr may span lines
        return [*lines, why[0].upper() + why[1:] + ".", ""]
    lines += [
        f"The same drain of {cl['ledger']['rows']:,} rows; the broker a plain Redis of its own in"
        " each; rows/s from the first row sent to the last flag (ingest + train and score);"
        " the cluster with the default of one shard per master, and with 16 shards. Best of"
        " the runs, alternating (all runs' rows/s in the last column).",
        "",
        "| state | nodes | shards | rows | ingest + score s | rows/s | Redis CPU s | wall s"
        " | every row once | runs, rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in CLUSTER_MODES:
        d = cl[mode]
        score_s = d["phases_s"]["ingest"] + d["phases_s"]["train_and_score"]
        lines.append(
            f"| {'one node' if d['nodes'] == 1 else 'cluster'} | {d['nodes']} | {d['shards']}"
            f" | {d['valid_rows']:,} | {score_s:.2f} | {d['rows_per_s']:,} | {d['redis_cpu_s']}"
            f" | {d['wall_s']} | {once(d['status'])}"
            f" | {', '.join(f'{x:,}' for x in d['all_rows_per_s'])} |"
        )
    return [
        *lines,
        "",
        f"Cluster ÷ one node: **{cl['cluster_over_one_node']:.2f}×** (16 shards:"
        f" {cl['cluster_16_shards_over_one_node']:.2f}×).",
        "",
    ]
