"""Scoring a batch: validate the rows, flag them with the current model, apply the batch.

A batch may carry score events too; they are applied first, so rows that they score are
flagged and counted with their scores.

Each worker process keeps the model it last loaded and reloads only when the published
version changes, which costs one GET per batch. A published version that cannot be
loaded (corrupt, tampered, wrong format) is refused once, recorded as the model's failure,
and scoring goes on with the last good version.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from thronos_analytics.analytics.anomaly_scoring import AnomalyScorer
from thronos_analytics.core import store
from thronos_analytics.core.contract import Rejection, Row, RowError, ScoreEvent

log = logging.getLogger(__name__)
# Rows scored per Lua call at most; bounds a worker's memory whatever a message holds.
MAX_BATCH = 5000
_loaded: tuple[str, AnomalyScorer] | None = None
_refused: set[str] = set()


def current_detector(r: store.Redis) -> tuple[str, AnomalyScorer] | None:
    global _loaded
    version = store.current_version(r, "anomaly")
    if version is None:
        return None
    if (_loaded is not None and _loaded[0] == version) or version in _refused:
        return _loaded or _last_good(r)
    try:
        _loaded = (version, load(r, version))
    except Exception as exc:
        _refuse(r, version, exc)
        return _loaded or _last_good(r)
    # What is alive now (the imports, the model) stays for the process's life. Frozen, the
    # cyclic collector stops walking it each time a batch's rows trigger a collection,
    # which cost ~40% of a scoring process's CPU.
    gc.freeze()
    return _loaded


def load(r: store.Redis, version: str) -> AnomalyScorer:
    """The published anomaly model ``version``; raises if it cannot be loaded."""
    published = store.model_version(r, "anomaly", version)
    if published is None:
        raise LookupError(f"anomaly model {version} has no artifact")
    return AnomalyScorer.from_bytes(published[1])


def _refuse(r: store.Redis, version: str, exc: Exception) -> None:
    _refused.add(version)
    error = f"cannot load anomaly model {version}: {type(exc).__name__}: {exc}"
    log.error("%s; scoring with the last good model", error)
    store.record_failure(r, "anomaly", {"model": "anomaly", "error": error, "at": time.time()})


def _last_good(r: store.Redis) -> tuple[str, AnomalyScorer] | None:
    """A fresh process whose current model is unusable: the newest version that loads."""
    global _loaded
    for version in store.versions(r, "anomaly"):
        if version in _refused:
            continue
        try:
            _loaded = (version, load(r, version))
            return _loaded
        except Exception as exc:
            _refuse(r, version, exc)
    return None


def validate(payload: list[Any]) -> tuple[list[Row], list[Rejection]]:
    """Workers re-check the contract: a message is input like any other."""
    return _validate(payload, Row.from_wire)


def validate_events(payload: list[Any]) -> tuple[list[ScoreEvent], list[Rejection]]:
    return _validate(payload, ScoreEvent.from_wire)


def _validate(payload: list[Any], read: Callable[[Any], Any]) -> tuple[list, list[Rejection]]:
    items, rejections = [], []
    for i, item in enumerate(payload):
        try:
            items.append(read(item))
        except RowError as exc:
            try:
                raw = orjson.dumps(item).decode()
            except TypeError:
                raw = repr(item)
            rejections.append(Rejection(i + 1, str(exc), raw))
    return items, rejections


def score_batch(
    r: store.Redis, payload: list[Any], events: list[Any] | None = None
) -> dict[str, Any]:
    if events:
        valid, bad = validate_events(events)
        store.record_rejections(r, "message", bad)
        store.apply_scores(r, valid)
    if len(payload) > MAX_BATCH:
        # A message bigger than any producer sends: score it in bounded pieces.
        results = [
            score_batch(r, payload[i : i + MAX_BATCH]) for i in range(0, len(payload), MAX_BATCH)
        ]
        return {
            "rows": sum(x["rows"] for x in results),
            "new": sum(x["new"] for x in results),
            "scored": sum(x["scored"] for x in results),
            "pending": any(x["pending"] for x in results),
            "rejected": sum(x["rejected"] for x in results),
        }
    rows, rejections = validate(payload)
    rejected = store.record_rejections(r, "message", rejections)
    while True:
        try:
            return _score(r, rows, rejected)
        except store.JoinsChanged:  # a score event for one of the rows came meanwhile
            continue


def _score(r: store.Redis, rows: list[Row], rejected: int) -> dict[str, Any]:
    joins = store.read_joins(r, rows)
    while True:
        loaded = current_detector(r)
        if loaded is None:
            unusable = store.current_version(r, "anomaly") is not None
            new, scored = store.apply_batch(r, rows, None, bool(unusable), joins)
            if scored == -1:  # a model was published meanwhile
                continue
            return {
                "rows": len(rows),
                "new": new,
                "scored": 0,
                "pending": True,
                "rejected": rejected,
            }
        version, detector = loaded
        now = time.time()
        # Scored with its session's and wallet's history as it is now, as in training.
        context = store.provider_context(r, rows, detector.context_.providers)
        flags = detector.flag(store.joined(rows, joins.events), context)
        for flag in flags:
            flag["model_version"] = version
            flag["scored_at"] = now
        new, scored = store.apply_batch(r, rows, flags, joins=joins)
        if scored:
            store.record_lag(r, [now - row.ts for row in rows])
        return {
            "rows": len(rows),
            "new": new,
            "scored": scored,
            "pending": False,
            "rejected": rejected,
            "model_version": version,
        }
