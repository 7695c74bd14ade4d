"""``run --drain``: push the ledgers through the real pipeline, retrain, export, stop."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from thronos_analytics.core import store
from thronos_analytics.core.messages import send_batch
from thronos_analytics.core.settings import Settings, rejected_file
from thronos_analytics.producers.backfill import backfill
from thronos_analytics.producers.dead_letter import DeadLetter
from thronos_analytics.producers.receipts import PROBE_ROWS

CHECK_CHUNK = 5000


def wait_until_flagged(
    r: store.Redis, ids: Mapping[str, float], timeout: float, poll: float = 0.05
) -> None:
    """Block until every row (id -> ts) has a flag, or was counted late."""
    missing = list(ids.items())
    deadline = time.monotonic() + timeout
    while missing:
        head = missing[:CHECK_CHUNK]
        # A few rows spread over the chunk first: while one waits, no need to ask for all.
        step = len(head) // PROBE_ROWS
        waiting = step > 1 and store.unflagged(r, head[::step])
        if not waiting:
            waiting = store.unflagged(r, head)
            missing = waiting + missing[CHECK_CHUNK:]
            if not waiting:
                continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} rows still without a flag after {timeout:.0f}s")
        time.sleep(poll)


def drain(
    config: Settings,
    redis_url: str,
    ledgers: Sequence[Path] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Replay each ledger (default: ``config.ledgers``) in turn, train on them all, score
    every row, retrain the rest and export. A missing ledger counts as an empty one."""
    from thronos_analytics.workers.tasks import refresh_signature, retrain_anomaly

    r = store.connect(redis_url)
    store.check_layout(r)
    started = time.perf_counter()
    ids: dict[str, float] = {}
    per_ledger = []
    for path in config.ledgers if ledgers is None else ledgers:
        entry: dict[str, Any] = {"ledger": str(path), "lines": 0, "valid_rows": 0}
        entry.update(distinct_ids=0, rejected_lines=0, events=0)
        if path.exists():
            dead_letter = DeadLetter(rejected_file(path), path.name, r)
            # Returns once Redis has seen every row.
            replay = backfill(path, send_batch, dead_letter.record, confirm_with=r, timeout=timeout)
            ids.update(replay.ids)
            entry.update(
                lines=replay.lines,
                valid_rows=replay.rows,
                distinct_ids=len(replay.ids),
                rejected_lines=replay.rejected,
                events=replay.events,
            )
        per_ledger.append(entry)
    ingested = time.perf_counter()
    # Rows wait in PENDING until a model exists; training now drains them to scoring.
    anomaly = retrain_anomaly.apply_async(kwargs={"force": True}).get(timeout=timeout)
    if "error" in anomaly:
        raise RuntimeError(f"training the anomaly model failed: {anomaly['error']}")
    # Too few rows to train on and no earlier model: they wait in PENDING for one.
    unscored = 0 if store.model_info(r, "anomaly") else len(ids)
    if not unscored:
        wait_until_flagged(r, ids, timeout)
    scored = time.perf_counter()
    export = refresh_signature(("profiles", "recommender", "quality", "incidents")).apply_async()
    summary = export.get(timeout=timeout)
    finished = time.perf_counter()

    def total(key: str) -> int:
        return sum(int(entry[key]) for entry in per_ledger)

    return {
        **summary,
        "ledgers": per_ledger,
        "lines": total("lines"),
        "valid_rows": total("valid_rows"),
        "distinct_ids": len(ids),
        "rejected_lines": total("rejected_lines"),
        "events": total("events"),
        "rows_waiting_for_a_model": unscored,
        "timings_s": {
            "ingest": round(ingested - started, 2),
            "train_and_score": round(scored - ingested, 2),
            "retrain_and_export": round(finished - scored, 2),
            "total": round(finished - started, 2),
        },
    }
