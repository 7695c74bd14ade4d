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
from celery.signals import worker_init, worker_process_init

from thronos_analytics.core import store
from thronos_analytics.core.messages import TRAINING, takes_receipt
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import registry, scoring
from thronos_analytics.workers.celery_app import app

log = logging.getLogger(__name__)


@worker_init.connect
def _import_training(sender: Any, **_: Any) -> None:
    # A worker that trains imports the numeric libraries once, before its pool forks:
    # otherwise each of its processes imports them at its first retrain (~2 s of CPU each).
    if TRAINING in sender.app.amqp.queues.consume_from:
        from thronos_analytics.workers import export, training  # noqa: F401


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
    receipt = self.request.id if takes_receipt(len(rows) + len(events or ())) else None
    store.count_worker_rows(r, self.request.hostname or "unknown", len(rows), receipt)
    # Enough rows to train the first model: trigger it, once a minute at most.
    if (
        result["pending"]
        and store.counts(r)["interactions_seen"] >= settings().min_train_rows
        and store.first_in(r, "autotrain", 60)
    ):
        retrain_anomaly.delay()
    return result


def send_rows(rows: list[dict]) -> None:
    score_batch.delay(rows)


def _retrain_task(model: registry.Model) -> Any:
    """The task that retrains ``model``, under its registered name."""

    def retrain(force: bool = False) -> dict[str, Any]:
        from threadpoolctl import threadpool_limits

        from thronos_analytics.workers import training  # loads the numeric libraries

        r = store.connect()
        with threadpool_limits(settings().train_threads):
            result = training.retrain_model(r, model.name, force)
        if model.scores_rows and "version" in result:
            result["drained"] = store.drain_pending(r, send_rows)
        return result

    retrain.__name__ = retrain.__qualname__ = model.task.removeprefix("thronos.")
    return app.task(name=model.task, ignore_result=False)(retrain)


TASKS = {model.name: _retrain_task(model) for model in registry.MODELS}
retrain_anomaly = TASKS["anomaly"]  # the first model: score_batch and drain start it


@app.task(name="thronos.write_analytics", ignore_result=False)
def write_analytics(retrains: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from thronos_analytics.workers import export

    summary = export.write_analytics(store.connect(), settings().analytics_json)
    return {**summary, "retrains": retrains or []}


def refresh_signature(models: tuple[str, ...] = registry.NAMES, force: bool = False) -> Any:
    """Retrain ``models`` in parallel, then write the export once all have finished."""
    # Only the scoring model takes ``force``: the others' messages keep no arguments.
    header = [
        TASKS[m].si(force) if registry.model(m).scores_rows else TASKS[m].si() for m in models
    ]
    return chord(header, write_analytics.s())


@app.task(name="thronos.refresh_analytics")
def refresh_analytics(force: bool = False) -> None:
    """Beat's retrain and export. Sent as a task whose result is ignored, so the sender
    does not follow the chord's results (a process that exits would have to let go)."""
    refresh_signature(force=force).apply_async()
