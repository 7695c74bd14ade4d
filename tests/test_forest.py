"""analytics.forest.CompiledForest must score exactly as the IsolationForest it was built from."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from packaging.version import Version
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError

from thronos_analytics.analytics import forest as forest_module
from thronos_analytics.analytics.forest import CompiledForest

ATOL = 1e-9


def fit(X: np.ndarray, **params: object) -> tuple[IsolationForest, CompiledForest]:
    model = IsolationForest(random_state=0, **params).fit(X)
    return model, CompiledForest.from_sklearn(model)


def sklearn_scores(model: IsolationForest, X: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # Values beyond float32's range overflow in sklearn's cast; that is the point.
        warnings.simplefilter("ignore", RuntimeWarning)
        return model.score_samples(X)


def assert_same(model: IsolationForest, forest: CompiledForest, X: np.ndarray) -> None:
    expected = sklearn_scores(model, X)
    got = forest.score_samples(X)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_installed_scikit_learn_is_in_the_supported_range() -> None:
    # from_sklearn reads private attributes; pyproject.toml pins the range checked here.
    assert forest_module.SUPPORTED == "scikit-learn>=1.4,<1.10"
    assert Version("1.4") <= Version(sklearn.__version__) < Version("1.10")


@pytest.mark.parametrize(
    "params",
    [
        {"n_estimators": 100},
        {"n_estimators": 1},
        {"n_estimators": 7, "max_samples": 3},
        {"n_estimators": 30, "max_samples": 1.0},  # 600 samples: 10-level trees
    ],
)
def test_matches_sklearn_on_gaussian_data(params: dict) -> None:
    rng = np.random.default_rng(1)
    model, forest = fit(rng.normal(size=(600, 5)), **params)
    # With 100 trees, 1000 rows span several of score_samples' chunks; x3 reaches outliers.
    assert_same(model, forest, 3 * rng.normal(size=(1000, 5)))


@pytest.mark.parametrize("max_features", [0.5, 1, 3])
def test_maps_subsampled_features_to_original_columns(max_features: float) -> None:
    rng = np.random.default_rng(2)
    # Columns on very different scales, so reading the wrong column changes the leaf.
    scale = np.array([1.0, 10.0, 100.0, 1000.0, 1e4, 1e5])
    model, forest = fit(rng.normal(size=(400, 6)) * scale, max_features=max_features)
    assert model._max_features < 6
    assert_same(model, forest, rng.normal(size=(500, 6)) * scale)


def test_ties_at_thresholds_go_left_like_sklearn() -> None:
    # Integer-valued columns with thresholds snapped onto the integers: many rows sit exactly
    # on a threshold, so `<` instead of `<=` (or any rounding slip) changes leaves.
    rng = np.random.default_rng(4)
    X = rng.integers(0, 6, size=(500, 4)).astype(float)
    model = IsolationForest(n_estimators=40, random_state=0).fit(X)
    for estimator in model.estimators_:
        threshold = estimator.tree_.threshold  # a writable view of the tree's nodes
        threshold[:] = np.round(threshold)
    forest = CompiledForest.from_sklearn(model)
    Y = rng.integers(0, 6, size=(400, 4)).astype(float)
    assert_same(model, forest, Y)
    # The check has teeth: a `<` would score rows on a threshold like rows just above it,
    # and sklearn scores most of those differently.
    nudged = sklearn_scores(model, Y + 1e-6)
    assert (np.abs(nudged - sklearn_scores(model, Y)) > ATOL).mean() > 0.3


def test_compares_float32_inputs_with_float64_thresholds_like_sklearn() -> None:
    # Rows that reach a split with its feature at the threshold, or one float32 step either
    # side of it: exact only if X is cast to float32 first and then compared in float64.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    model, forest = fit(X, n_estimators=20)
    rows, at, below = [], [], []
    for estimator in model.estimators_:  # all features used: tree columns are X's columns
        tree = estimator.tree_
        reaches = estimator.decision_path(X.astype(np.float32)).toarray().astype(bool)
        for node in np.flatnonzero(tree.children_left != -1):
            t, t32 = tree.threshold[node], np.float32(tree.threshold[node])
            up, down = (np.nextafter(t32, np.float32(s * np.inf)) for s in (1, -1))
            row = X[np.flatnonzero(reaches[:, node])[0]]
            for value in (t, t32, up, down, np.nextafter(t, np.inf)):
                rows.append(row.copy())
                rows[-1][tree.feature[node]] = value
            if t32 > t:  # float32(t) goes right in sklearn, uncast t would go left
                at.append(len(rows) - 5)
                below.append(len(rows) - 2)
    X_edges = np.array(rows)
    assert_same(model, forest, X_edges)
    # The check has teeth: an uncast t would score like the row just below the threshold.
    expected = model.score_samples(X_edges)
    assert (expected[at] != expected[below]).sum() > 10


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_matches_sklearn_on_generated_inputs(data: st.DataObject) -> None:
    n_features = data.draw(st.integers(1, 4), label="n_features")
    n_train = data.draw(st.integers(1, 40), label="n_train")
    # Training values stay within float32's range so the trees have real splits; few
    # distinct values make duplicates and ties likely.
    train_values = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.sampled_from([0.0, 1.0, -1.0, 1e-30]),
    )
    X = data.draw(arrays(np.float64, (n_train, n_features), elements=train_values), label="X")
    model = IsolationForest(
        n_estimators=data.draw(st.integers(1, 8), label="n_estimators"),
        max_samples=data.draw(st.integers(1, n_train), label="max_samples"),
        max_features=data.draw(st.integers(1, n_features), label="max_features"),
        random_state=data.draw(st.integers(0, 2**16), label="random_state"),
    ).fit(X)
    forest = CompiledForest.from_sklearn(model)
    # Scored values: any finite float64, so huge ones overflow to +-inf in float32.
    any_finite = st.floats(allow_nan=False, allow_infinity=False)
    rows = st.integers(1, 30)
    Y = data.draw(
        arrays(np.float64, st.tuples(rows, st.just(n_features)), elements=any_finite), label="Y"
    )
    assert_same(model, forest, np.concatenate([Y, X]))


def test_single_rows_score_as_in_a_batch() -> None:
    rng = np.random.default_rng(6)
    model, forest = fit(rng.normal(size=(300, 4)), n_estimators=25)
    X = 2 * rng.normal(size=(20, 4))
    batch = forest.score_samples(X)
    for i in range(len(X)):
        one = forest.score_samples(X[i : i + 1])
        assert one.shape == (1,)
        assert one[0] == batch[i]
        np.testing.assert_allclose(one, model.score_samples(X[i : i + 1]), rtol=0, atol=ATOL)


def test_accepts_lists_and_dataframes() -> None:
    rng = np.random.default_rng(7)
    model, forest = fit(rng.normal(size=(200, 3)), n_estimators=10)
    X = rng.normal(size=(15, 3))
    expected = model.score_samples(X)
    np.testing.assert_allclose(forest.score_samples(X.tolist()), expected, rtol=0, atol=ATOL)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    np.testing.assert_allclose(forest.score_samples(frame), expected, rtol=0, atol=ATOL)


def test_missing_values_follow_each_splits_stored_direction() -> None:
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 3))
    X[rng.random(X.shape) < 0.1] = np.nan
    model, forest = fit(X, n_estimators=30)
    assert any(e.tree_.missing_go_to_left.any() for e in model.estimators_)
    Y = rng.normal(size=(300, 3))
    Y[rng.random(Y.shape) < 0.3] = np.nan
    assert_same(model, forest, Y)


@pytest.mark.parametrize("X", [np.ones((1, 2)), np.ones((50, 2)), np.arange(20.0)[:, None]])
def test_degenerate_training_sets(X: np.ndarray) -> None:
    # One sample (sklearn's zero denominator: score -0.5), all rows identical (single-leaf
    # trees), and one-sample trees via max_samples=1.
    for max_samples in ("auto", 1):
        model, forest = fit(X, n_estimators=5, max_samples=max_samples)
        Y = np.concatenate([X[:3], X[:3] + 7.0])
        assert_same(model, forest, Y)
    model, forest = fit(X[:1], n_estimators=3)
    np.testing.assert_array_equal(forest.score_samples(Y), np.full(len(Y), -0.5))


def test_round_trip_through_npz_without_pickle() -> None:
    rng = np.random.default_rng(9)
    model, forest = fit(rng.normal(size=(300, 4)), n_estimators=20, max_features=2)
    arrays_ = forest.to_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays_.values())
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays_)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        loaded = CompiledForest.from_arrays({name: npz[name] for name in npz.files})
    X = 2 * rng.normal(size=(100, 4))
    np.testing.assert_array_equal(loaded.score_samples(X), forest.score_samples(X))
    assert loaded.n_features_in_ == 4
    # to_arrays hands out copies: changing them changes neither the forest nor later exports.
    before = forest.score_samples(X)
    for array in arrays_.values():
        array[...] = 0
    np.testing.assert_array_equal(forest.score_samples(X), before)
    assert forest.to_arrays()["threshold"].any()


def test_from_arrays_rejects_incomplete_or_corrupt_arrays() -> None:
    rng = np.random.default_rng(10)
    _, forest = fit(rng.normal(size=(100, 2)), n_estimators=3)
    arrays_ = forest.to_arrays()
    with pytest.raises(ValueError, match="lack"):
        CompiledForest.from_arrays({k: v for k, v in arrays_.items() if k != "value"})
    arrays_["left"][0] = len(arrays_["left"])
    with pytest.raises(ValueError, match="out of range"):
        CompiledForest.from_arrays(arrays_)


@pytest.mark.parametrize("shape", [(3, 4), (3, 6), (5,), (1, 1, 5)])
def test_wrong_shape_is_a_clear_value_error(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(11)
    _, forest = fit(rng.normal(size=(100, 5)), n_estimators=3)
    assert forest.n_features_in_ == 5
    with pytest.raises(ValueError, match=r"expects \(n_samples, 5\)"):
        forest.score_samples(np.zeros(shape))


def test_unfitted_or_unrecognised_models_are_refused() -> None:
    with pytest.raises(NotFittedError):
        CompiledForest.from_sklearn(IsolationForest())
    model, _ = fit(np.random.default_rng(12).normal(size=(50, 2)), n_estimators=2)
    changed = copy.deepcopy(model)
    del changed._decision_path_lengths  # as if a scikit-learn release renamed it
    with pytest.raises(RuntimeError, match=r"_decision_path_lengths.*scikit-learn>=1.4,<1.10"):
        CompiledForest.from_sklearn(changed)
