"""``run --drain``: push the whole ledger through the real pipeline, retrain, export, stop."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from producers.backfill import backfill
from producers.dead_letter import DeadLetter
from producers.emit import send_batch
from thronos_analytics import keys, store
from thronos_analytics.settings import Settings

CHECK_CHUNK = 5000


def wait_until_flagged(
    r: store.Redis, ids: Iterable[str], timeout: float, poll: float = 0.05
) -> None:
    """Block until every id has a flag in ``thronos:flags``."""
    missing = list(ids)
    deadline = time.monotonic() + timeout
    while missing:
        chunk = missing[:CHECK_CHUNK]
        present = [v is not None for v in r.hmget(keys.FLAGS, chunk)]
        if all(present):
            missing = missing[len(chunk) :]
            continue
        missing = [i for i, ok in zip(chunk, present, strict=True) if not ok] + missing[
            len(chunk) :
        ]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} rows still without a flag after {timeout:.0f}s")
        time.sleep(poll)


def drain(config: Settings, redis_url: str, timeout: float = 1800) -> dict[str, Any]:
    """Replay the ledger, train on it, score every row, retrain the rest and export."""
    from workers.tasks import refresh_signature, retrain_anomaly

    r = store.connect(redis_url)
    started = time.perf_counter()
    dead_letter = DeadLetter(config.rejected_file, config.ledger.name, r)
    # Returns once Redis has seen every row.
    replay = backfill(
        config.ledger, send_batch, dead_letter.record, confirm_with=r, timeout=timeout
    )
    ingested = time.perf_counter()
    # Rows wait in PENDING until a model exists; training now drains them to scoring.
    anomaly = retrain_anomaly.apply_async(kwargs={"force": True}).get(timeout=timeout)
    if "error" in anomaly:
        raise RuntimeError(f"training the anomaly model failed: {anomaly['error']}")
    wait_until_flagged(r, replay.ids, timeout)
    scored = time.perf_counter()
    export = refresh_signature(("profiles", "recommender", "quality")).apply_async()
    summary = export.get(timeout=timeout)
    finished = time.perf_counter()
    return {
        **summary,
        "ledger": str(config.ledger),
        "lines": replay.lines,
        "valid_rows": replay.rows,
        "distinct_ids": len(replay.ids),
        "rejected_lines": replay.rejected,
        "timings_s": {
            "ingest": round(ingested - started, 2),
            "train_and_score": round(scored - ingested, 2),
            "retrain_and_export": round(finished - scored, 2),
            "total": round(finished - started, 2),
        },
    }
