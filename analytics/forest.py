"""A fitted scikit-learn IsolationForest flattened into numpy arrays, scored without sklearn.

Scoring one row with ``IsolationForest.score_samples`` costs milliseconds of per-call and
per-tree overhead (validation, joblib, one Cython call per tree); walking every tree over
flat arrays in one compiled loop costs a couple of microseconds and needs no pickle to store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from thronos_analytics.analytics import _kernels

if TYPE_CHECKING:  # Scoring needs no scikit-learn; only from_sklearn imports it.
    from sklearn.ensemble import IsolationForest

SUPPORTED = "scikit-learn>=1.4,<1.10"
_PER_NODE = ("feature", "threshold", "left", "right", "missing_left", "value")
_ARRAY_NAMES = (*_PER_NODE, "roots", "depth", "denominator", "n_features")


class CompiledForest:
    """An IsolationForest as flat node arrays, walked for all rows and trees in compiled code.

    All trees' nodes are concatenated, leaves point to themselves, and every tree is walked
    the same number of steps (the deepest tree's depth); the leaf's precomputed path length
    then gives sklearn's ``score_samples`` exactly.

    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> X = np.random.default_rng(0).normal(size=(500, 4))
    >>> model = IsolationForest(n_estimators=50, random_state=0).fit(X)
    >>> forest = CompiledForest.from_sklearn(model)
    >>> bool(np.allclose(forest.score_samples(X), model.score_samples(X), rtol=0, atol=1e-12))
    True
    >>> CompiledForest.from_arrays(forest.to_arrays()).score_samples(X[:1]).shape
    (1,)

    References: F. T. Liu, K. M. Ting, Z.-H. Zhou, "Isolation Forest", ICDM 2008;
    ``sklearn/ensemble/_iforest.py`` (``_compute_score_samples``) for the exact formula.
    """

    n_features_in_: int

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        missing_left: np.ndarray,
        value: np.ndarray,
        roots: np.ndarray,
        depth: int,
        denominator: float,
        n_features: int,
    ) -> None:
        self._arrays = {
            "feature": np.array(feature, np.int64),
            "threshold": np.array(threshold, np.float64),
            "left": np.array(left, np.int64),
            "right": np.array(right, np.int64),
            "missing_left": np.array(missing_left, np.bool_),
            "value": np.array(value, np.float64),
            "roots": np.array(roots, np.int64),
            "depth": np.array(depth, np.int64),
            "denominator": np.array(denominator, np.float64),
            "n_features": np.array(n_features, np.int64),
        }
        per_node = [self._arrays[name] for name in _PER_NODE]
        n_nodes = self._arrays["feature"].size
        roots_ok = self._arrays["roots"].ndim == 1 and self._arrays["roots"].size > 0
        if any(a.shape != (n_nodes,) for a in per_node) or not roots_ok or depth < 0:
            raise ValueError("inconsistent forest arrays")
        children = np.concatenate([self._arrays[k] for k in ("left", "right", "roots")])
        if children.min() < 0 or children.max() >= n_nodes:
            raise ValueError("forest arrays hold a node index out of range")
        if self._arrays["feature"].min() < 0 or self._arrays["feature"].max() >= n_features:
            raise ValueError("forest arrays hold a feature index out of range")
        self.n_features_in_ = int(n_features)
        self._depth = int(depth)
        self._denominator = float(denominator)
        # What the kernel walks, in the dtypes it is compiled for: node numbers as uint32
        # (half the cache footprint of int64), a node's children at 2 * node and
        # 2 * node + 1 of ``_kids``, and the missing-value directions as bytes.
        if n_nodes >= 2**31:
            raise ValueError("forest has too many nodes for 32-bit node numbers")
        self._feature = self._arrays["feature"].astype(np.uint32)
        self._threshold = self._arrays["threshold"]
        kids = np.stack([self._arrays["left"], self._arrays["right"]], 1)
        self._kids = kids.ravel().astype(np.uint32)
        self._missing_right = np.logical_not(self._arrays["missing_left"]).view(np.uint8)
        self._value = self._arrays["value"]
        self._roots = self._arrays["roots"].astype(np.uint32)

    @classmethod
    def from_sklearn(cls, model: IsolationForest) -> CompiledForest:
        """Flatten a fitted ``IsolationForest``; reads private attributes of ``SUPPORTED``."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(model)
        try:
            from sklearn.ensemble._iforest import _average_path_length

            path_lengths = model._decision_path_lengths
            avg_lengths = model._average_path_length_per_tree
            max_samples = model._max_samples
            max_features = model._max_features
            trees = [estimator.tree_ for estimator in model.estimators_]
            missing_left = [tree.missing_go_to_left for tree in trees]
        except (AttributeError, ImportError) as error:
            raise RuntimeError(
                f"this scikit-learn's IsolationForest lacks {error.name!r}; "
                f"analytics.forest supports {SUPPORTED}"
            ) from error
        n_features = model.n_features_in_
        # Each tree was fit, and is scored, on X[:, estimators_features_[i]] only when sklearn
        # subsamples features; map its column numbers back to X's columns in that case.
        subsample = max_features != n_features
        offsets = np.cumsum([0] + [tree.node_count for tree in trees])
        feature, left, right = [], [], []
        for i, tree in enumerate(trees):
            leaf = tree.children_left == -1
            own = np.arange(tree.node_count)
            columns = model.estimators_features_[i] if subsample else np.arange(n_features)
            feature.append(columns[np.where(leaf, 0, tree.feature)])
            left.append(np.where(leaf, own, tree.children_left) + offsets[i])
            right.append(np.where(leaf, own, tree.children_right) + offsets[i])
        return cls(
            feature=np.concatenate(feature),
            threshold=np.concatenate([tree.threshold for tree in trees]),
            left=np.concatenate(left),
            right=np.concatenate(right),
            missing_left=np.concatenate(missing_left).astype(bool),
            # What _parallel_compute_tree_depths adds for a row ending in each node.
            value=np.concatenate(path_lengths) + np.concatenate(avg_lengths) - 1.0,
            roots=offsets[:-1],
            depth=max(tree.max_depth for tree in trees),
            denominator=len(trees) * float(_average_path_length([max_samples])[0]),
            n_features=n_features,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays (copies), loadable with ``np.load(..., allow_pickle=False)``."""
        return {name: array.copy() for name, array in self._arrays.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CompiledForest:
        """The inverse of ``to_arrays``; extra keys are ignored."""
        missing = [name for name in _ARRAY_NAMES if name not in arrays]
        if missing:
            raise ValueError(f"forest arrays lack {missing}")
        kwargs: dict[str, Any] = {name: np.asarray(arrays[name]) for name in _ARRAY_NAMES}
        for name in ("depth", "denominator", "n_features"):
            kwargs[name] = kwargs[name].item()
        return cls(**kwargs)

    def score_samples(self, X: Any) -> np.ndarray:
        """sklearn's ``IsolationForest.score_samples``: in [-1, 0), lower is more anomalous."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}; the forest expects (n_samples, {self.n_features_in_})"
            )
        # The kernel reads C-ordered rows; read-only arrays are fine as they are.
        return _kernels.score_samples(
            np.ascontiguousarray(X),
            self._feature,
            self._threshold,
            self._kids,
            self._missing_right,
            self._value,
            self._roots,
            self._depth,
            self._denominator,
        )
