"""Every registered model is a scikit-learn estimator, and its registry entry works end to end.

The estimators take ledger rows (sequences of rows, frames, aggregate frames), not numeric
arrays, so of scikit-learn's own checks only those that need no data apply; the rest (fit
returns self, learned attributes end in ``_``, clone, a fit and its per-row output) is
checked here on a small simulated ledger read back from a real Redis, as training reads it.
The tests iterate the registry, so a new model is checked without a new test.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone
from sklearn.utils import estimator_checks

from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.workers import export, registry, training
from thronos_analytics.workers.celery_app import app

MODELS = [pytest.param(model, id=model.name) for model in registry.MODELS]
# scikit-learn's checks that need no numeric data.
DATA_FREE_CHECKS = (
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_repr,
    estimator_checks.check_mixin_order,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
)


@pytest.fixture
def ledger(r) -> list[Row]:
    """A small simulated ledger, ingested as the workers ingest it."""
    lines, _ = simulate(SimConfig(rows=3000, seed=2))
    rows = sorted((x for x in map(parse_line, lines) if type(x) is Row), key=lambda x: x.ts)
    for i in range(0, len(rows), 500):
        store.apply_batch(r, rows[i : i + 500], None)
    return rows


def per_row_output(fitted: BaseEstimator, X) -> np.ndarray:
    """The estimator's output for each row of its input (each session, for aggregates)."""
    rows = X[0] if isinstance(X, tuple) else X
    for method in ("score_samples", "predict", "transform"):
        if hasattr(fitted, method):
            out = getattr(fitted, method)(rows)
            assert len(out) == len(rows), method
            return out
    raise AssertionError(f"{type(fitted).__name__} has no per-row method")


def test_every_model_has_its_task_and_report_section():
    app.loader.import_default_modules()
    assert len({model.task for model in registry.MODELS}) == len(registry.MODELS)
    for model in registry.MODELS:
        assert model.task in app.tasks, model.name
        assert model.report == f"sections/{model.name}.html.j2"


@pytest.mark.parametrize("model", MODELS)
def test_is_a_scikit_learn_estimator(model: registry.Model):
    estimator = model.estimator()
    assert isinstance(estimator, BaseEstimator)
    for check in DATA_FREE_CHECKS:
        check(type(estimator).__name__, estimator)
    params = estimator.get_params()
    assert clone(estimator).get_params() == params
    assert type(estimator)(**params).get_params() == params
    assert estimator.set_params(**params) is estimator


@pytest.mark.parametrize("model", MODELS)
def test_fits_on_what_training_reads_and_scores_each_row(r, ledger, model: registry.Model):
    X = model.read(r, True)
    estimator = model.estimator()
    unfitted = dict(vars(estimator))
    fitted = estimator.fit(X)
    assert fitted is estimator
    learned = set(vars(fitted)) - set(unfitted)
    assert learned and all(a.endswith("_") or a.startswith("_") for a in learned), learned
    assert {k: v for k, v in vars(fitted).items() if k in unfitted} == unfitted
    # A clone is unfitted, with the same parameters, and fits to the same output.
    twin = clone(fitted)
    assert not set(vars(twin)) & learned
    first, again = per_row_output(fitted, X), per_row_output(twin.fit(X), X)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("model", MODELS)
def test_artifact_round_trip_feeds_the_export(r, ledger, model: registry.Model):
    blob, info = training.fit_model(r, model, force=True)
    assert info["n_samples"] > 0
    assert isinstance(model.codec.encode(model.estimator().fit(model.read(r, True))), bytes)
    decoded = model.codec.decode(blob)
    assert decoded is not None
    store.publish_model(r, model.name, blob, {**info, "trained_at": 0.0})
    section = model.export(r, export.Artifacts(r))
    assert section and all(isinstance(k, str) for k in section)


def test_the_export_has_every_models_section(r, ledger):
    for model in registry.MODELS:
        blob, info = training.fit_model(r, model, force=True)
        store.publish_model(r, model.name, blob, {**info, "trained_at": 0.0})
    document = export.build_analytics(r)
    assert set(document["models"]) == set(registry.NAMES)
    for key in ("profiles", "anomalies", "recommendations", "warnings", "incidents"):
        assert key in document


def test_the_first_anomaly_model_reads_only_the_newest_first_model_rows(r, ledger, monkeypatch):
    from thronos_analytics.core.settings import use_settings

    monkeypatch.setenv("THRONOS_FIRST_MODEL_ROWS", "1500")
    use_settings(None)  # read once per process, and the ledger was ingested with them
    anomaly = registry.model("anomaly")
    first = training.read_rows(r)  # no model yet: rows wait for this one
    assert [row.id for row in first] == [row.id for row in ledger[-1500:]]
    blob, info = training.fit_model(r, anomaly)
    store.publish_model(r, "anomaly", blob, {**info, "trained_at": 0.0})
    assert info["n_samples"] == 1500
    assert len(training.read_rows(r)) == len(ledger)  # later ones read the whole window
