"""The final aggregation: gather the current models and counts into ``ai_analytics.json``.

The file is written to a temporary file in the same directory, flushed to disk and renamed
over the old one, so a reader sees the old export or the new one, never half of either.
Its contract is ``workers/ai_analytics.schema.json``. ``ai_analytics.html`` beside it is the
same export as a page for people (``workers/report.py``), written the same way.

An export that accounts for fewer interactions than the one it replaces (Redis lost its
state, and the ledgers are being read again) is never silent: the older file is kept as
``ai_analytics.previous.json``, and the new one carries ``state_warning``, which the log
and ``status`` repeat.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import orjson
from thronos_analytics.analytics.recommend import rank, suggestions
from thronos_analytics.core import keys, store
from thronos_analytics.core.atomic_file import write_atomically
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import report

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2  # 2: suggestion objects, p_best rankings, incidents
SCHEMA_PATH = Path(__file__).with_name("ai_analytics.schema.json")
TOP = 3


def build_analytics(r: store.Redis) -> dict[str, Any]:
    models = {name: store.model_info(r, name) for name in keys.MODEL_NAMES}
    profiles = _model_json(r, "profiles") or {"wallets": {}, "sessions": {}, "clusters": []}
    recommender = _model_json(r, "recommender") or {"use_cases": {}, "wallets": {}}
    quality = _model_json(r, "quality") or {"warnings": []}
    warnings = quality["warnings"]
    incidents = _model_json(r, "incidents") or {"incidents": []}
    counts = store.counts(r)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": time.time(),
        "models": {
            name: {
                "version": info["version"],
                "trained_at": info["trained_at"],
                "n_samples": info["n_samples"],
            }
            for name, info in models.items()
            if info
        },
        "stats": {
            **{k: v for k, v in counts.items() if k != "pending"},
            "dropped_fields": store.dropped_fields(r),
        },
        "profiles": {
            "wallets": profiles["wallets"],
            "sessions": profiles["sessions"],
            "clusters": profiles["clusters"],
        },
        "anomalies": [orjson.loads(fields[b"a"]) for _, fields in r.xrange(keys.ANOMALIES)],
        "recommendations": {
            "global": {
                use_case: rank(recommender, use_case, top=TOP, warnings=warnings)
                for use_case in sorted(recommender["use_cases"])
            },
            "wallets": {
                wallet: {
                    use_case: rank(recommender, use_case, wallet, top=TOP, warnings=warnings)
                    for use_case in sorted(use_cases)
                }
                for wallet, use_cases in recommender["wallets"].items()
            },
            "model": recommender,
        },
        "warnings": quality["warnings"],
        "incidents": incidents["incidents"],
        "suggestions": suggestions(recommender, warnings) if recommender["wallets"] else {},
    }


def write_analytics(r: store.Redis, path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    document = build_analytics(r)
    warning = _shrinks(path, document["stats"]["interactions_scored"])
    if warning:
        log.error("%s", warning)
        document["state_warning"] = warning
        kept = path.with_name(path.stem + ".previous.json")
        if _scored_in(path) > _scored_in(kept):
            path.replace(kept)
    write_atomically(path, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
    # The score trend is for the page only: the training window holds the rows it needs.
    trend = report.score_trend(store.window_rows(r, settings().window_rows))
    html_path = path.with_suffix(".html")
    write_atomically(html_path, report.render(document, trend).encode())
    summary = {
        "path": str(path),
        "html_path": str(html_path),
        "generated_at": document["generated_at"],
        "duration_s": round(time.perf_counter() - started, 3),
        **{k: v for k, v in document["stats"].items() if k != "dropped_fields"},
    }
    r.hset(keys.EXPORT, mapping={k: str(v) for k, v in summary.items()})
    if warning:
        summary["state_warning"] = warning
        r.hset(keys.EXPORT, "state_warning", warning)
    else:
        r.hdel(keys.EXPORT, "state_warning")
    return summary


def _shrinks(path: Path, scored: int) -> str | None:
    """Why an export of ``scored`` interactions must not silently replace ``path``: it, or
    the export kept the last time this happened, accounted for more."""
    kept = path.with_name(path.stem + ".previous.json")
    before = max(_scored_in(path), _scored_in(kept))
    if scored >= before:
        return None
    return (
        f"this export accounts for {scored:,} interactions, fewer than the {before:,} of an"
        f" earlier one (kept as {kept.name}): Redis lost state and the ledgers are being read"
        " again; see ops/RUNBOOK.md"
    )


def _scored_in(path: Path) -> int:
    try:
        scored = orjson.loads(path.read_bytes())["stats"]["interactions_scored"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # no export yet, or one unreadable: nothing to lose
    return scored if isinstance(scored, int) else 0


def _model_json(r: store.Redis, name: str) -> Any:
    current = store.current_model(r, name)
    return orjson.loads(current[1]) if current else None
