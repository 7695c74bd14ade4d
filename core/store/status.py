"""What the pipeline is doing now, read from Redis in one place: ``status`` shows it, and
the Prometheus metrics are made from it, so the two cannot disagree."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from thronos_analytics.core import keys
from thronos_analytics.core.messages import queue_depths
from thronos_analytics.core.settings import Settings
from thronos_analytics.core.store.connection import Redis
from thronos_analytics.core.store.ledger import (
    LAG_BUCKETS,
    counts,
    dropped_fields,
    last_export,
    worker_stalls,
)
from thronos_analytics.core.store.models import model_info
from thronos_analytics.core.store.shards import all_shards, entry_order, per_shard, summed

# How many of the latest scored batches the "recent" anomaly rate is taken over.
RATE_SAMPLE_BATCHES = 20


def read_status(
    r: Redis, config: Settings, models: Sequence[str], now: float | None = None
) -> dict[str, Any]:
    """Counts, queues, throughput, lag, anomaly rates, models, warnings and incidents."""
    now = time.time() if now is None else now
    report: dict[str, Any] = counts(r)
    report["queues"] = queue_depths(config)
    report["backlog"] = {
        "queued_messages": sum(report["queues"].values()),
        "rows_waiting_for_a_model": report["pending"],
    }
    report["throughput"] = _throughput(r, now)
    raw_lag = {k.decode(): float(v) for k, v in r.hgetall(keys.LAG_HISTOGRAM).items()}
    report["lag"] = _lag_summary(raw_lag)
    report["lag_histogram"] = raw_lag
    scored = report["interactions_scored"]
    by_provider = summed(r, keys.ANOMALIES_BY_PROVIDER)
    report["anomaly_rate"] = {
        "overall": round(report["anomalies"] / scored, 5) if scored else None,
        "recent": report["throughput"].pop("recent_anomaly_rate"),
        "by_provider": dict(sorted(by_provider.items(), key=lambda kv: -kv[1])),
    }
    last = r.xrevrange(keys.REJECTED_STREAM, count=1)
    report["last_rejection"] = orjson.loads(last[0][1][b"r"]) if last else None
    report["models"] = {}
    for name in models:
        info = model_info(r, name) or {}
        failure = r.get(keys.model_failure(name))
        report["models"][name] = {
            "version": info.get("version"),
            "age_s": round(now - info["trained_at"], 1) if info else None,
            "n_samples": info.get("n_samples"),
            "duration_s": info.get("duration_s"),
            "last_failure": orjson.loads(failure) if failure else None,
        }
    report["worker_stalls"] = worker_stalls(r)
    report["redis_memory"] = _memory(r, report["interactions_seen"])
    report["dropped_fields"] = dropped_fields(r)
    report["warnings"] = [orjson.loads(v).get("message", "") for v in r.hvals(keys.WARNINGS)]
    incidents = sorted(map(orjson.loads, r.hvals(keys.INCIDENTS)), key=lambda i: -i["since_ts"])
    active = [i for i in incidents if i["active"]]
    report["incidents"] = [i["message"] for i in active]
    report["incidents_by_kind"] = dict(Counter(i["kind"] for i in active))
    # The hash holds strings: numbers go back to numbers for scripts.
    export = {k: _number(v) for k, v in last_export(r).items()}
    report["state_warning"] = export.pop("state_warning", None)
    export.pop("file_stamp", None)  # which file it wrote: for the next export, not people
    report["last_export"] = export
    generated = export.get("generated_at")
    report["last_export_age_s"] = round(now - float(generated), 1) if generated else None
    return report


_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def _number(value: str) -> int | float | str:
    if not _NUMBER.fullmatch(value):
        return value
    return float(value) if any(c in value for c in ".eE") else int(value)


def _throughput(r: Redis, now: float) -> dict[str, Any]:
    minute = int(now // 60)
    replies = per_shard(
        r,
        lambda pipe, s: (
            pipe.get(s.prefix + keys.scored_in_minute(minute))
            .get(s.prefix + keys.scored_in_minute(minute - 1))
            .xrevrange(s.prefix + keys.FLAG_STREAM, count=RATE_SAMPLE_BATCHES)
        ),
    )
    this = sum(int(n or 0) for n in replies[0::3])
    previous = sum(int(n or 0) for n in replies[1::3])
    # The last 60 s: this minute so far, and the part of the previous one still inside them.
    share = 1.0 - (now % 60) / 60
    latest = sorted(
        (e for held in replies[2::3] for e in held),
        key=lambda e: entry_order(e[0]),
        reverse=True,
    )
    latest = latest[:RATE_SAMPLE_BATCHES]
    recent = [flag for _, fields in latest for flag in orjson.loads(fields[b"f"])]
    last_minute = this + round(previous * share)
    return {
        "rows_scored_last_minute": last_minute,
        "rows_per_s": round(last_minute / 60, 1),
        "estimated": bool(previous),
        "last_flag_age_s": (
            round(now - int(latest[0][0].split(b"-")[0]) / 1000, 1) if latest else None
        ),
        "recent_anomaly_rate": (
            round(sum(bool(f.get("is_anomaly")) for f in recent) / len(recent), 5)
            if recent
            else None
        ),
    }


def _lag_summary(raw: dict[str, float]) -> dict[str, Any]:
    """Count, mean and bucket-bound quantiles of the ledger-write-to-flag lag."""
    bounds = [*map(str, LAG_BUCKETS), "+Inf"]
    count = sum(raw.get(b, 0.0) for b in bounds)
    summary: dict[str, Any] = {"count": int(count), "mean_s": None, "p50_le_s": None}
    summary["p95_le_s"] = None
    if not count:
        return summary
    summary["mean_s"] = round(raw.get("sum", 0.0) / count, 4)
    for q in (50, 95):
        cumulative = 0.0
        for bound in bounds:
            cumulative += raw.get(bound, 0.0)
            if cumulative >= count * q / 100:
                summary[f"p{q}_le_s"] = float(bound) if bound != "+Inf" else None
                summary[f"p{q}_over_s"] = LAG_BUCKETS[-1] if bound == "+Inf" else None
                break
    return summary


def _memory(r: Redis, seen: int) -> dict[str, Any]:
    """Redis's memory, and what it comes to per interaction counted (all state included)."""
    shards = all_shards()
    if hasattr(r, "get_primaries"):  # a cluster: the state is on all of its primaries
        primaries = r.get_primaries()
        nodes = list(r.info("memory", target_nodes=primaries).values())
        holding = {r.get_node_from_key(shard.prefix).name for shard in shards}
        without_shard = sum(node.name not in holding for node in primaries)
    else:
        nodes, without_shard = [r.info("memory")], 0
    used = sum(int(node["used_memory"]) for node in nodes)
    limit = sum(int(node.get("maxmemory") or 0) for node in nodes)
    return {
        "used_bytes": used,
        "max_bytes": limit or None,
        "bytes_per_interaction": round(used / seen) if seen else None,
        "nodes": len(nodes),
        "shards": len(shards),
        # Primaries no shard's slot is on: they hold none of the state (THRONOS_CLUSTER_SHARDS).
        "nodes_without_shard": without_shard,
    }
