"""Retraining: read the shared state from Redis, fit a model from ``analytics``, publish it.

Which models there are, and what each reads and keeps, is ``workers/registry.py``; the
functions below that its entries name are the workers' side of each.

Each retrain holds a lock named after its model, so two retrains of one model never
overlap, and records a failure without touching the current version, so workers keep
scoring with the last good model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from thronos_analytics.analytics.anomaly import AnomalyDetector
from thronos_analytics.analytics.incidents import IncidentDetector
from thronos_analytics.analytics.profiles import Profiles
from thronos_analytics.analytics.quality import QualityDropDetector
from thronos_analytics.analytics.recommend import Recommender
from thronos_analytics.core import aggregates, keys, store
from thronos_analytics.core.contract import Row
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import registry

log = logging.getLogger(__name__)
LOCK_TTL = 900


class Skipped(Exception):
    """Nothing to do this time (another retrain runs, or too little data yet)."""


@contextmanager
def exclusive(r: store.Redis, name: str) -> Iterator[None]:
    lock = store.lock(r, name, LOCK_TTL)
    if not lock.acquire(blocking=False):
        raise Skipped(f"a retrain of {name} is already running")
    try:
        yield
    finally:
        store.release(lock)


def retrain(r: store.Redis, name: str, fit: Callable[[], tuple[bytes, dict]]) -> dict[str, Any]:
    """Run ``fit`` under the model's lock, publish what it returns, record any failure."""
    started = time.perf_counter()
    try:
        with exclusive(r, name):
            blob, info = fit()
            info = {
                **info,
                "trained_at": time.time(),
                "duration_s": round(time.perf_counter() - started, 3),
            }
            info["version"] = store.publish_model(r, name, blob, info)
    except Skipped as exc:
        return {"model": name, "skipped": str(exc)}
    except Exception as exc:
        log.exception("retrain of %s failed; the current model stays", name)
        failure = {"model": name, "error": f"{type(exc).__name__}: {exc}", "at": time.time()}
        store.record_failure(r, name, failure)
        return failure
    log.info(
        "published %s model %s", name, info["version"], extra={"model_version": info["version"]}
    )
    return {"model": name, **info}


def fit_model(r: store.Redis, model: registry.Model, force: bool = False) -> tuple[bytes, dict]:
    """Read the model's training data, fit its estimator, and return its artifact and info."""
    X = model.read(r, force)
    if model.warm_start:
        current = store.current_model(r, model.name)
        previous = model.codec.decode(current[1]) if current else None
        estimator = model.estimator(previous=previous)
    else:
        estimator = model.estimator()
    fitted = estimator.fit(X)
    # Before encoding: reporting adds to what the artifact keeps (first_reported_at).
    info = model.info(r, fitted, X)
    return model.codec.encode(fitted), info


def retrain_model(r: store.Redis, name: str, force: bool = False) -> dict[str, Any]:
    """Retrain the registry's model ``name`` (see :func:`retrain`)."""
    model = registry.model(name)
    return retrain(r, name, lambda: fit_model(r, model, force))


# --- what the registry's entries read and keep ---------------------------------------------


def read_rows(r: store.Redis, force: bool = False) -> list[Row]:
    """The training window's rows; ``force`` trains on as few as two. The first model, which
    rows wait for, reads only the newest ``first_model_rows``."""
    config = settings()
    first = store.current_version(r, "anomaly") is None
    rows = store.window_rows(
        r, min(config.window_rows, config.first_model_rows) if first else config.window_rows
    )
    if len(rows) < (2 if force else config.min_train_rows):
        raise Skipped(f"{len(rows)} rows in the window, {config.min_train_rows} needed")
    return rows


def anomaly_detector() -> AnomalyDetector:
    return AnomalyDetector(level=settings().anomaly_level)


def anomaly_info(r: store.Redis, detector: AnomalyDetector, rows: list[Row]) -> dict[str, Any]:
    """Refuse a model that would flag far more rows than asked for."""
    sample = rows[-2000:]
    flagged = np.mean([f["is_anomaly"] for f in detector.flag(sample)])
    # Flagging by level, the share follows the data: allow what a bad day could show.
    expected = 0.05 if detector.contamination is None else detector.contamination
    if not np.isfinite(detector.threshold_) or flagged > 10 * expected + 0.01:
        raise ValueError(f"model flags {flagged:.1%} of its own window; refusing it")
    return {"n_samples": len(rows), "providers": detector.norms_.providers}


def read_aggregates(r: store.Redis, force: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The session and wallet aggregates, as :func:`analytics.profiles.aggregates_from_rows`
    computes them from rows."""
    session_values = store.aggregate_values(r, "session")
    wallet_values = store.aggregate_values(r, "wallet")
    sessions = _aggregates(session_values)
    wallets = _aggregates(wallet_values)
    if len(sessions) < 3:
        raise Skipped(f"{len(sessions)} sessions, 3 needed to cluster")
    wallets["sessions"] = (
        pd.Series(wallet_values["sessions"]).reindex(wallets.index).fillna(0)
    )
    # Sessions are described with their wallet's habits: a session alone is often short.
    sessions["wallet"] = pd.Series(session_values["wallet"]).reindex(sessions.index)
    return sessions, wallets


def profiles_info(r: store.Redis, model: Profiles, X: tuple[pd.DataFrame, pd.DataFrame]) -> dict:
    sessions, wallets = X
    return {"n_samples": len(sessions), "k": model.profiles_["k"], "wallets": len(wallets)}


def _aggregates(values: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One scope's aggregates as a frame: a column per measure, and per provider (mix_*) or
    use case (uc_*) for the measures kept per value (core/aggregates.py)."""
    columns = {
        m.name: pd.Series(values[m.name], dtype=float)
        for m in aggregates.MEASURES
        if m.per is None
    }
    frame = pd.DataFrame(columns).fillna(0.0)
    for m in aggregates.MEASURES:
        if m.per is None:
            continue
        pairs = {tuple(k.split("\t", 1)): v for k, v in values[m.name].items()}
        if pairs:
            wide = pd.Series(pairs).unstack(fill_value=0.0).add_prefix(f"{m.name}_")
            frame = frame.join(wide, how="left").fillna(0.0)
    return frame


WINDOW_COLUMNS = [
    *("ts", "provider", "model", "use_case", "wallet", "score", "latency_ms", "credits_used"),
    *("success", "output_len", "output_unit", "cost_usd"),  # for incidents
]


def window_frame(r: store.Redis) -> pd.DataFrame:
    rows = store.window_rows(r, settings().window_rows)
    return pd.DataFrame(rows, columns=Row._fields)[WINDOW_COLUMNS]  # rows are named tuples


def read_frame(r: store.Redis, force: bool = False) -> pd.DataFrame:
    return window_frame(r)


def read_use_case_frame(r: store.Redis, force: bool = False) -> pd.DataFrame:
    frame = window_frame(r)
    if frame["use_case"].notna().sum() < 10:
        raise Skipped("fewer than 10 rows with a use case")
    return frame


def recommender_info(r: store.Redis, model: Recommender, frame: pd.DataFrame) -> dict:
    return {"n_samples": len(frame), "use_cases": len(model.table_["use_cases"])}


def _report_once(r: store.Redis, key: str, items: list[dict[str, Any]], what: str) -> None:
    """Keep ``items`` (warnings or incidents, by their ``key``) in the hash ``key``, each with
    the time it was first reported, and log each once, when it is first found active."""
    known = store.reported(r, key)
    now = time.time()
    for item in items:
        seen = known.get(item["key"])
        item["first_reported_at"] = seen["first_reported_at"] if seen else now
        if item.get("active", True) and not (seen and seen.get("active", True)):
            log.warning("%s: %s", what, item["message"])
    store.replace_reported(r, key, items)


def quality_info(r: store.Redis, model: QualityDropDetector, frame: pd.DataFrame) -> dict:
    """The window's active quality warnings and, apart, its drops that ended.

    Each active warning keeps the time it was first reported, so it is announced once;
    ``thronos:warnings`` holds the active ones, with their current numbers.
    """
    # A warning that cleared is forgotten, so a later drop is announced again.
    _report_once(r, keys.WARNINGS, model.warnings_, "quality warning")
    return {"n_samples": len(frame), "active": len(model.warnings_), "ended": len(model.ended_)}


def incidents_info(r: store.Redis, model: IncidentDetector, frame: pd.DataFrame) -> dict:
    """The window's incidents, newest first, on the ledger's own clock (its newest row).

    ``thronos:incidents`` holds those of the current window, each with the time it was first
    reported; an incident is logged once, when it is first found active.
    """
    incidents = model.incidents_
    _report_once(r, keys.INCIDENTS, incidents, "incident")
    active = sum(i["active"] for i in incidents)
    return {"n_samples": len(frame), "incidents": len(incidents), "active": active}
