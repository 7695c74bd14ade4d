"""Celery tasks. Each is thin: read arguments, call the plain function that does the work.

Training and export code (pandas, scikit-learn) is imported inside the tasks that use it,
so a process that only scores never loads it.

Task names are part of the message format (see tests/test_task_names.py): rename one and
messages already queued under the old name are lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import chord
from celery.signals import worker_process_init
from thronos_analytics.core import keys, store
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import scoring
from thronos_analytics.workers.celery_app import app

log = logging.getLogger(__name__)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    # Load the model once per process, before the first batch waits for it.
    try:
        scoring.current_detector(store.connect())
    except Exception:  # Redis not up yet: the first batch loads it
        log.warning("could not preload the anomaly model", exc_info=True)


@app.task(name="thronos.score_batch", bind=True, acks_late=True, reject_on_worker_lost=True)
def score_batch(self: Any, rows: list[Any], events: list[Any] | None = None) -> dict[str, Any]:
    r = store.connect()
    result = scoring.score_batch(r, rows, events)
    r.hincrby(keys.WORKER_ROWS, self.request.hostname or "unknown", len(rows))
    # Enough rows to train the first model: trigger it, once a minute at most.
    if (
        result["pending"]
        and store.counts(r)["interactions_seen"] >= settings().min_train_rows
        and r.set(keys.AUTOTRAIN_LOCK, 1, nx=True, ex=60)
    ):
        retrain_anomaly.delay()
    return result


def send_rows(rows: list[dict]) -> None:
    score_batch.delay(rows)


@app.task(name="thronos.retrain_anomaly", ignore_result=False)
def retrain_anomaly(force: bool = False) -> dict[str, Any]:
    from thronos_analytics.workers import training

    r = store.connect()
    result = training.retrain(r, "anomaly", lambda: training.fit_anomaly(r, force))
    if "version" in result:
        result["drained"] = training.drain_pending(r, send_rows)
    return result


@app.task(name="thronos.retrain_profiles", ignore_result=False)
def retrain_profiles() -> dict[str, Any]:
    from thronos_analytics.workers import training

    r = store.connect()
    return training.retrain(r, "profiles", lambda: training.fit_profiles_model(r))


@app.task(name="thronos.retrain_recommender", ignore_result=False)
def retrain_recommender() -> dict[str, Any]:
    from thronos_analytics.workers import training

    r = store.connect()
    return training.retrain(r, "recommender", lambda: training.fit_recommender_model(r))


@app.task(name="thronos.detect_quality_drops", ignore_result=False)
def detect_quality_drops() -> dict[str, Any]:
    from thronos_analytics.workers import training

    r = store.connect()
    return training.retrain(r, "quality", lambda: training.fit_quality_model(r))


@app.task(name="thronos.detect_incidents", ignore_result=False)
def detect_incidents() -> dict[str, Any]:
    from thronos_analytics.workers import training

    r = store.connect()
    return training.retrain(r, "incidents", lambda: training.fit_incidents_model(r))


@app.task(name="thronos.write_analytics", ignore_result=False)
def write_analytics(retrains: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from thronos_analytics.workers import export

    summary = export.write_analytics(store.connect(), settings().analytics_json)
    return {**summary, "retrains": retrains or []}


TASKS = {
    "anomaly": retrain_anomaly,
    "profiles": retrain_profiles,
    "recommender": retrain_recommender,
    "quality": detect_quality_drops,
    "incidents": detect_incidents,
}


def refresh_signature(models: tuple[str, ...] = keys.MODEL_NAMES, force: bool = False) -> Any:
    """Retrain ``models`` in parallel, then write the export once all have finished."""
    header = [TASKS[m].si(force) if m == "anomaly" else TASKS[m].si() for m in models]
    return chord(header, write_analytics.s())


@app.task(name="thronos.refresh_analytics")
def refresh_analytics(force: bool = False) -> None:
    """Beat's retrain and export. Sent as a task whose result is ignored, so the sender
    does not follow the chord's results (a process that exits would have to let go)."""
    refresh_signature(force=force).apply_async()
