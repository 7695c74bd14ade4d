"""Scoring a batch: validate the rows, flag them with the current model, apply the batch.

Each worker process keeps the model it last loaded and reloads only when the published
version changes, which costs one GET per batch.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from analytics.anomaly import AnomalyDetector
from analytics.contract import Rejection, Row, RowError
from thronos_analytics import keys, store
from thronos_analytics.metrics import record_lag

_loaded: tuple[str, AnomalyDetector] | None = None


def current_detector(r: store.Redis) -> tuple[str, AnomalyDetector] | None:
    global _loaded
    version = r.get(keys.model_current("anomaly"))
    if version is None:
        return None
    if _loaded is None or _loaded[0] != version.decode():
        published = store.current_model(r, "anomaly")
        if published is None:
            return None
        _loaded = (published[0], AnomalyDetector.from_bytes(published[1]))
    return _loaded


def validate(payload: list[Any]) -> tuple[list[Row], list[Rejection]]:
    """Workers re-check the contract: a message is input like any other."""
    rows, rejections = [], []
    for i, item in enumerate(payload):
        try:
            rows.append(Row.from_wire(item))
        except RowError as exc:
            try:
                raw = orjson.dumps(item).decode()
            except TypeError:
                raw = repr(item)
            rejections.append(Rejection(i + 1, str(exc), raw))
    return rows, rejections


def score_batch(r: store.Redis, payload: list[Any]) -> dict[str, Any]:
    rows, rejections = validate(payload)
    rejected = store.record_rejections(r, "message", rejections)
    while True:
        loaded = current_detector(r)
        if loaded is None:
            new, scored = store.apply_batch(r, rows, None)
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
        flags = detector.flag(rows)
        for flag in flags:
            flag["model_version"] = version
            flag["scored_at"] = now
        new, scored = store.apply_batch(r, rows, flags)
        if scored:
            record_lag(r, [now - row.ts for row in rows])
        return {
            "rows": len(rows),
            "new": new,
            "scored": scored,
            "pending": False,
            "rejected": rejected,
            "model_version": version,
        }
