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

import copy
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from thronos_analytics.analytics.recommend import rank, suggestions
from thronos_analytics.core import store
from thronos_analytics.core.atomic_file import write_atomically
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import registry, report

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2  # 2: suggestion objects, p_best rankings, incidents
SCHEMA_PATH = Path(__file__).with_name("ai_analytics.schema.json")
TOP = 3


def build_analytics(r: store.Redis) -> dict[str, Any]:
    """The export: the models' versions, the counts, then each model's part (the registry's
    ``export`` functions, below)."""
    models = {model.name: store.model_info(r, model.name) for model in registry.MODELS}
    counts = store.counts(r)
    document: dict[str, Any] = {
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
    }
    artifacts = Artifacts(r)
    for model in registry.MODELS:
        document.update(model.export(r, artifacts))
    return document


class Artifacts:
    """Each model's current artifact, decoded when first asked for; before a model's first
    version, its registry entry's ``empty``."""

    def __init__(self, r: store.Redis) -> None:
        self._r = r
        self._decoded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._decoded:
            model = registry.model(name)
            current = store.current_model(self._r, name)
            decoded = model.codec.decode(current[1]) if current else None
            self._decoded[name] = decoded or copy.deepcopy(model.empty)
        return self._decoded[name]


# --- each model's part of the export -------------------------------------------------------


def anomalies_section(r: store.Redis, artifacts: Artifacts) -> dict[str, Any]:
    """The flagged rows, with their context, from the scoring workers' stream."""
    return {"anomalies": store.anomalies(r)}


def profiles_section(r: store.Redis, artifacts: Artifacts) -> dict[str, Any]:
    """Each wallet's and session's persona, the personas, and what changed since the
    previous model (absent from an artifact fitted before personas were compared)."""
    profiles = artifacts["profiles"]
    section = {
        "wallets": profiles["wallets"],
        "sessions": profiles["sessions"],
        "clusters": profiles["clusters"],
    }
    if "changes" in profiles:
        section["changes"] = profiles["changes"]
    return {"profiles": section}


def recommendations_section(r: store.Redis, artifacts: Artifacts) -> dict[str, Any]:
    """Rankings per use case, for everyone and per wallet, and suggestions; a provider's
    active quality warnings rank it after those without one."""
    recommender = artifacts["recommender"]
    warnings = artifacts["quality"]["warnings"]
    return {
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
        "suggestions": suggestions(recommender, warnings) if recommender["wallets"] else {},
    }


def quality_section(r: store.Redis, artifacts: Artifacts) -> dict[str, Any]:
    return {"warnings": artifacts["quality"]["warnings"]}


def incidents_section(r: store.Redis, artifacts: Artifacts) -> dict[str, Any]:
    return {"incidents": artifacts["incidents"]["incidents"]}


def write_analytics(r: store.Redis, path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    document = build_analytics(r)
    last = store.last_export(r)
    warning = _shrinks(path, document["stats"]["interactions_scored"], last)
    if warning:
        log.error("%s", warning)
        document["state_warning"] = warning
        kept = path.with_name(path.stem + ".previous.json")
        if _scored_in(path, last) > _scored_in(kept):
            path.replace(kept)
    write_atomically(path, orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
    stamp = _stamp(path)
    # The score trend is for the page only: the training window holds the rows it needs.
    trend = report.score_trend(store.window_rows(r, settings().window_rows))
    html_path = path.with_suffix(".html")
    page = report.render(
        document,
        trend,
        sections=[model.report for model in registry.MODELS],
        rejected=store.latest_rejections(r, report.MAX_TABLE_ROWS),
    )
    write_atomically(html_path, page.encode())
    summary = {
        "path": str(path),
        "html_path": str(html_path),
        "generated_at": document["generated_at"],
        "duration_s": round(time.perf_counter() - started, 3),
        **{k: v for k, v in document["stats"].items() if k != "dropped_fields"},
        "file_stamp": stamp,
    }
    store.record_export(r, summary, warning)
    if warning:
        summary["state_warning"] = warning
    return summary


def _shrinks(path: Path, scored: int, last: dict[str, str]) -> str | None:
    """Why an export of ``scored`` interactions must not silently replace ``path``: it, or
    the export kept the last time this happened, accounted for more. ``last`` is the last
    export's summary (``store.last_export``): while ``path`` is the file it wrote, its
    count is taken from there rather than by parsing tens of MB."""
    kept = path.with_name(path.stem + ".previous.json")
    before = max(_scored_in(path, last), _scored_in(kept))
    if scored >= before:
        return None
    return (
        f"this export accounts for {scored:,} interactions, fewer than the {before:,} of an"
        f" earlier one (kept as {kept.name}): Redis lost state and the ledgers are being read"
        " again; see ops/RUNBOOK.md"
    )


def _stamp(path: Path) -> str:
    """The file as it is now: another writer's file, even of the same size, differs."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _scored_in(path: Path, last: dict[str, str] | None = None) -> int:
    """The interactions an export file accounts for; while it is the file of ``last`` (the
    last export's summary), as that says."""
    if last and last.get("path") == str(path) and last.get("file_stamp") == _stamp(path):
        return int(last["interactions_scored"])
    try:
        scored = orjson.loads(path.read_bytes())["stats"]["interactions_scored"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # no export yet, or one unreadable: nothing to lose
    return scored if isinstance(scored, int) else 0
