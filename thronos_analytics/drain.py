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
AUTOTRAIN_GRACE_S = 3.0  # for the workers' first model to start, once they asked for it


def wait_until_flagged(
    r: store.Redis, ids: Mapping[str, float], timeout: float, poll: float = 0.05
) -> None:
    """Block until every row (id -> ts) has a flag, or was counted late."""
    missing = list(ids.items())
    deadline = time.monotonic() + timeout
    while missing:
        # Every row the state has seen has its flag: these too, since Redis has seen them
        # all (backfill's receipts). Cheaper than asking for each of them.
        counts = store.counts(r)
        if counts["interactions_scored"] == counts["interactions_seen"]:
            return
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


def usable_model(r: store.Redis) -> bool:
    """Whether the current anomaly model loads, as a scoring worker would load it: the rows
    of a state whose model is corrupt or tampered with wait in PENDING for a new one."""
    from thronos_analytics.workers import scoring

    version = store.current_version(r, "anomaly")
    try:
        return version is not None and scoring.load(r, version) is not None
    except Exception:
        return False


def first_model(r: store.Redis, timeout: float) -> bool:
    """Wait for the workers' first anomaly model, or train one now, on the whole window,
    if they have none that loads (fewer than ``first_model_rows`` rows, or an unusable
    one): whether it was trained now. Training drains the rows waiting in PENDING."""
    from thronos_analytics.workers.tasks import retrain_anomaly

    # Only looked at: held while one trains, and for a minute after the workers ask for one.
    training, asked = store.lock(r, "anomaly", 1), store.lock(r, "autotrain", 1)
    deadline = time.monotonic() + timeout
    grace = time.monotonic() + AUTOTRAIN_GRACE_S
    while not usable_model(r):
        # One the workers asked for takes its lock at once, unless it was skipped.
        if not training.locked() and not (asked.locked() and time.monotonic() < grace):
            result = retrain_anomaly.apply_async(kwargs={"force": True}).get(timeout=timeout)
            if "error" in result:
                raise RuntimeError(f"training the anomaly model failed: {result['error']}")
            if "skipped" not in result:
                return True
            # Skipped with no training running and still no model: too few rows to train on.
            if not training.locked() and not usable_model(r):
                return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"no anomaly model after {timeout:.0f}s")
        time.sleep(0.1)
    return False


def drain(
    config: Settings,
    redis_url: str,
    ledgers: Sequence[Path] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Replay each ledger (default: ``config.ledgers``) in turn, train on them all, score
    every row, retrain the rest and export. A missing ledger counts as an empty one."""
    from thronos_analytics.workers.tasks import refresh_signature

    r = store.connect(redis_url)
    store.check_layout(r)
    started = time.perf_counter()
    ids: dict[str, float] = {}
    per_ledger = []
    # Rows sent before the first model are parked, then sent again: the replay waits for it.
    modelled = usable_model(r)
    for path in config.ledgers if ledgers is None else ledgers:
        entry: dict[str, Any] = {"ledger": str(path), "lines": 0, "valid_rows": 0}
        entry.update(distinct_ids=0, rejected_lines=0, events=0)
        if path.exists():
            dead_letter = DeadLetter(rejected_file(path), path.name, r)
            # Returns once Redis has seen every row.
            pause = None
            if not modelled and (left := config.first_model_rows - len(ids)) > 0:
                pause = (left, lambda: first_model(r, timeout))
            replay = backfill(
                path, send_batch, dead_letter.record, confirm_with=r, timeout=timeout, pause=pause
            )
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
    trained_now = first_model(r, timeout)
    # Too few rows to train on and no earlier model: they wait in PENDING for one.
    unscored = 0 if usable_model(r) else len(ids)
    if not unscored:
        wait_until_flagged(r, ids, timeout)
    scored = time.perf_counter()
    models: tuple[str, ...] = ("profiles", "recommender", "quality", "incidents")
    # A model of the first rows scored the rest: the next rows get one of the whole window.
    models = models if trained_now or unscored else ("anomaly", *models)
    summary = refresh_signature(models).apply_async().get(timeout=timeout)
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
