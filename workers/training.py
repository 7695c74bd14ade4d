"""Retraining: read the shared state from Redis, fit a model from ``analytics``, publish it.

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
import orjson
import pandas as pd
from thronos_analytics.analytics.anomaly import AnomalyDetector
from thronos_analytics.analytics.incidents import detect_incidents
from thronos_analytics.analytics.profiles import fit_profiles
from thronos_analytics.analytics.quality import active_warnings, ended_warnings, find_episodes
from thronos_analytics.analytics.recommend import fit_recommender
from thronos_analytics.core import keys, store
from thronos_analytics.core.contract import Row
from thronos_analytics.core.settings import settings

log = logging.getLogger(__name__)
LOCK_TTL = 900
PENDING_CHUNK = 500


class Skipped(Exception):
    """Nothing to do this time (another retrain runs, or too little data yet)."""


@contextmanager
def exclusive(r: store.Redis, name: str) -> Iterator[None]:
    token = str(time.time_ns())
    if not r.set(keys.lock(name), token, nx=True, ex=LOCK_TTL):
        raise Skipped(f"a retrain of {name} is already running")
    try:
        yield
    finally:
        # Release only our own lock: compare-and-delete in one step.
        r.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end",
            1,
            keys.lock(name),
            token,
        )


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
        r.set(keys.model_failure(name), orjson.dumps(failure))
        return failure
    log.info(
        "published %s model %s", name, info["version"], extra={"model_version": info["version"]}
    )
    return {"model": name, **info}


def fit_anomaly(r: store.Redis, force: bool = False) -> tuple[bytes, dict]:
    config = settings()
    rows = store.window_rows(r, config.window_rows)
    if len(rows) < (2 if force else config.min_train_rows):
        raise Skipped(f"{len(rows)} rows in the window, {config.min_train_rows} needed")
    detector = AnomalyDetector(level=config.anomaly_level).fit(rows)
    _check_anomaly_model(detector, rows)
    return detector.to_bytes(), {"n_samples": len(rows), "providers": detector.norms_.providers}


def _check_anomaly_model(detector: AnomalyDetector, rows: list[Row]) -> None:
    """Refuse a model that would flag far more rows than asked for."""
    sample = rows[-2000:]
    flagged = np.mean([f["is_anomaly"] for f in detector.flag(sample)])
    # Flagging by level, the share follows the data: allow what a bad day could show.
    expected = detector.contamination if np.isfinite(detector.contamination) else 0.05
    if not np.isfinite(detector.threshold_) or flagged > 10 * expected + 0.01:
        raise ValueError(f"model flags {flagged:.1%} of its own window; refusing it")


def drain_pending(r: store.Redis, send: Callable[[list[dict]], None]) -> int:
    """Send the rows that waited for the first model to scoring, oldest first.

    A chunk is sent before it is trimmed: a crash in between sends it twice, which
    scoring ignores, rather than never.
    """
    sent = 0
    while chunk := r.lrange(keys.PENDING, 0, PENDING_CHUNK - 1):
        send([orjson.loads(item) for item in chunk])
        r.ltrim(keys.PENDING, len(chunk), -1)
        sent += len(chunk)
    return sent


def fit_profiles_model(r: store.Redis) -> tuple[bytes, dict]:
    sessions = _aggregates(r, "session")
    wallets = _aggregates(r, "wallet")
    if len(sessions) < 3:
        raise Skipped(f"{len(sessions)} sessions, 3 needed to cluster")
    wallets["sessions"] = (
        pd.Series({k.decode(): int(v) for k, v in r.hgetall(keys.WALLET_SESSIONS).items()})
        .reindex(wallets.index)
        .fillna(0)
    )
    # Sessions are described with their wallet's habits: a session alone is often short.
    session_wallet = {k.decode(): v.decode() for k, v in r.hgetall(keys.SESSION_WALLET).items()}
    sessions["wallet"] = pd.Series(session_wallet).reindex(sessions.index)
    previous = store.current_model(r, "profiles")
    profiles = fit_profiles(sessions, wallets, orjson.loads(previous[1]) if previous else None)
    info = {"n_samples": len(sessions), "k": profiles["k"], "wallets": len(wallets)}
    return orjson.dumps(profiles), info


def _aggregates(r: store.Redis, scope: str) -> pd.DataFrame:
    pipe = r.pipeline(transaction=False)
    for measure in keys.AGG_MEASURES:
        pipe.hgetall(keys.agg(scope, measure))
    values = dict(zip(keys.AGG_MEASURES, pipe.execute(), strict=True))
    frame = pd.DataFrame(
        {
            m: pd.Series({k.decode(): float(v) for k, v in values[m].items()}, dtype=float)
            for m in keys.AGG_MEASURES
            if m not in keys.PAIR_MEASURES
        }
    ).fillna(0.0)
    for measure in keys.PAIR_MEASURES:  # one column per provider (mix_*) or use case (uc_*)
        pairs = {tuple(k.decode().split("\t", 1)): float(v) for k, v in values[measure].items()}
        if pairs:
            wide = pd.Series(pairs).unstack(fill_value=0.0).add_prefix(f"{measure}_")
            frame = frame.join(wide, how="left").fillna(0.0)
    return frame


WINDOW_COLUMNS = [
    *("ts", "provider", "model", "use_case", "wallet", "score", "latency_ms", "credits_used"),
    *("success", "output_len", "output_unit", "cost_usd"),  # for incidents
]


def window_frame(r: store.Redis) -> pd.DataFrame:
    rows = store.window_rows(r, settings().window_rows)
    return pd.DataFrame(rows, columns=Row._fields)[WINDOW_COLUMNS]  # rows are named tuples


def fit_recommender_model(r: store.Redis) -> tuple[bytes, dict]:
    frame = window_frame(r)
    if frame["use_case"].notna().sum() < 10:
        raise Skipped("fewer than 10 rows with a use case")
    model = fit_recommender(frame)
    return orjson.dumps(model), {"n_samples": len(frame), "use_cases": len(model["use_cases"])}


def _report_once(r: store.Redis, key: str, items: list[dict[str, Any]], what: str) -> None:
    """Keep ``items`` (warnings or incidents, by their ``key``) in the hash ``key``, each with
    the time it was first reported, and log each once, when it is first found active."""
    known = {k.decode(): orjson.loads(v) for k, v in r.hgetall(key).items()}
    now = time.time()
    for item in items:
        seen = known.get(item["key"])
        item["first_reported_at"] = seen["first_reported_at"] if seen else now
        if item.get("active", True) and not (seen and seen.get("active", True)):
            log.warning("%s: %s", what, item["message"])
    pipe = r.pipeline()
    gone = set(known) - {i["key"] for i in items}
    if gone:
        pipe.hdel(key, *gone)
    if items:
        pipe.hset(key, mapping={i["key"]: orjson.dumps(i) for i in items})
    pipe.execute()


def fit_quality_model(r: store.Redis) -> tuple[bytes, dict]:
    """The window's active quality warnings and, apart, its drops that ended.

    Each active warning keeps the time it was first reported, so it is announced once;
    ``thronos:warnings`` holds the active ones, with their current numbers.
    """
    frame = window_frame(r)
    found = find_episodes(frame) if len(frame) else []
    warnings, ended = active_warnings(found), ended_warnings(found)
    # A warning that cleared is forgotten, so a later drop is announced again.
    _report_once(r, keys.WARNINGS, warnings, "quality warning")
    info = {"n_samples": len(frame), "active": len(warnings), "ended": len(ended)}
    return orjson.dumps({"warnings": warnings, "ended": ended}), info


def fit_incidents_model(r: store.Redis) -> tuple[bytes, dict]:
    """The window's incidents, newest first, on the ledger's own clock (its newest row).

    ``thronos:incidents`` holds those of the current window, each with the time it was first
    reported; an incident is logged once, when it is first found active.
    """
    frame = window_frame(r)
    incidents = detect_incidents(frame) if len(frame) else []
    _report_once(r, keys.INCIDENTS, incidents, "incident")
    active = sum(i["active"] for i in incidents)
    info = {"n_samples": len(frame), "incidents": len(incidents), "active": active}
    return orjson.dumps({"incidents": incidents}), info
