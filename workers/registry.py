"""The models, one entry each: what retraining, the export and the report need to know of it.

An entry names the model (its key in Redis and in the export's ``models``) and the Celery
task that retrains it, then says how to make its estimator, where its training data comes
from and what to keep with a version, how its artifact is stored, which part of
``ai_analytics.json`` it writes and which template shows it in the report. The tasks
(``workers/tasks.py``), the retrain (``workers/training.py``) and the export
(``workers/export.py``) only iterate this list, so a new model is an estimator module in
``analytics/`` and one entry here.

Task names are part of the message format (see tests/test_task_names.py): rename one and
messages already queued under the old name are lost.

The entries' functions are named, not imported: the scoring worker imports this module (its
tasks are registered from it) and must not load pandas or scikit-learn, which only
training and the export use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


def _named(where: str) -> Callable[..., Any]:
    """``"<package>.<module>:<attribute>"`` under thronos_analytics, imported when called."""
    module, attribute = where.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        target: Any = importlib.import_module(f"thronos_analytics.{module}")
        for part in attribute.split("."):
            target = getattr(target, part)
        return target(*args, **kwargs)

    call.__name__ = call.__qualname__ = attribute
    return call


@dataclass(frozen=True)
class Codec:
    """How a fitted estimator becomes the artifact stored in Redis, and what is read back."""

    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


def json_codec(artifact: Callable[[Any], Any]) -> Codec:
    """An artifact that is JSON: ``artifact(fitted)``, read back as it was written."""
    return Codec(lambda fitted: orjson.dumps(artifact(fitted)), orjson.loads)


# The anomaly model: numpy arrays and a JSON header in one .npz, no pickle.
NPZ = Codec(
    lambda fitted: fitted.to_bytes(), _named("analytics.anomaly:AnomalyDetector.from_bytes")
)


@dataclass(frozen=True)
class Model:
    """One model. ``estimator()`` makes it unfitted (``estimator(previous=...)``, given the
    current artifact decoded, with ``warm_start``); ``read(r, force)`` returns its training
    data ``X``, or raises ``training.Skipped`` when there is too little; ``info(r, fitted,
    X)`` returns what is kept with the version (``n_samples``, ...), reports what the model
    found, or raises to refuse it. ``export(r, artifacts)`` is its part of the export, from
    the current artifacts (``export.Artifacts``: ``empty`` for a model not trained yet);
    ``report`` is the template of its section of the report.

    ``scores_rows`` marks the model scoring uses: ``force`` trains it on any number of rows,
    and publishing it sends the rows that waited for a model to scoring.
    """

    name: str
    task: str
    estimator: Callable[..., Any]
    read: Callable[[Any, bool], Any]
    info: Callable[[Any, Any, Any], dict[str, Any]]
    codec: Codec
    export: Callable[[Any, Any], dict[str, Any]]
    report: str
    empty: Any = None
    warm_start: bool = False
    scores_rows: bool = False


MODELS: tuple[Model, ...] = (
    # In the report's reading order: what may need action first.
    Model(
        name="incidents",
        task="thronos.detect_incidents",
        estimator=_named("analytics.incidents:IncidentDetector"),
        read=_named("workers.training:read_frame"),
        info=_named("workers.training:incidents_info"),
        codec=json_codec(lambda fitted: {"incidents": fitted.incidents_}),
        export=_named("workers.export:incidents_section"),
        report="sections/incidents.html.j2",
        empty={"incidents": []},
    ),
    Model(
        name="profiles",
        task="thronos.retrain_profiles",
        estimator=_named("analytics.profiles:Profiles"),
        read=_named("workers.training:read_aggregates"),
        info=_named("workers.training:profiles_info"),
        codec=json_codec(lambda fitted: fitted.profiles_),
        export=_named("workers.export:profiles_section"),
        report="sections/profiles.html.j2",
        empty={"wallets": {}, "sessions": {}, "clusters": []},
        warm_start=True,  # clusters keep their numbers and labels across retrains
    ),
    Model(
        name="anomaly",
        task="thronos.retrain_anomaly",
        estimator=_named("workers.training:anomaly_detector"),
        read=_named("workers.training:read_rows"),
        info=_named("workers.training:anomaly_info"),
        codec=NPZ,
        export=_named("workers.export:anomalies_section"),
        report="sections/anomaly.html.j2",
        scores_rows=True,
    ),
    Model(
        name="recommender",
        task="thronos.retrain_recommender",
        estimator=_named("analytics.recommend:Recommender"),
        read=_named("workers.training:read_use_case_frame"),
        info=_named("workers.training:recommender_info"),
        codec=json_codec(lambda fitted: fitted.table_),
        export=_named("workers.export:recommendations_section"),
        report="sections/recommender.html.j2",
        empty={"use_cases": {}, "wallets": {}},
    ),
    Model(
        name="quality",
        task="thronos.detect_quality_drops",
        estimator=_named("analytics.quality:QualityDropDetector"),
        read=_named("workers.training:read_frame"),
        info=_named("workers.training:quality_info"),
        codec=json_codec(lambda fitted: {"warnings": fitted.warnings_, "ended": fitted.ended_}),
        export=_named("workers.export:quality_section"),
        report="sections/quality.html.j2",
        empty={"warnings": []},
    ),
)

NAMES = tuple(model.name for model in MODELS)
_BY_NAME = {model.name: model for model in MODELS}


def model(name: str) -> Model:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no model named {name!r}; the models are {', '.join(NAMES)}") from None
