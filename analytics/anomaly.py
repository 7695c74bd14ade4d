"""Per-interaction anomaly detection: robust distances from the norm, context, and a forest.

Each row gets five pieces of evidence (``analytics.features``): how far its output
length, score, latency and credits are from the median of comparable rows, in robust
standard deviations (latency and credits at the row's output length, which explains a
long answer's wait and cost), and how surprising its provider is given the other calls of its
session and wallet (``-log P(provider | context)`` from a multinomial logistic
regression). Each is put on a common scale, 0 at the median and 1 where a clean window's
99th percentile would be, and an IsolationForest (Liu et al., 2008) over them adds a sixth
for combinations no single one shows. A row's ``anomaly_score`` is the largest of the six,
so a row far out on one measure is never averaged away by the others being normal.

**The threshold is a fixed evidence level** (``level``, ``THRONOS_ANOMALY_LEVEL``, default
``DEFAULT_LEVEL``), not a share of rows: the share flagged follows the data, from none on
a clean ledger to all of the anomalies when they are 5% of it. What makes that hold is the
scale. Taken from the window's own 99th percentile, it would belong to any kind of anomaly
over 1% of rows, which would then hide itself; so it is estimated from the 90th percentile
(``_tail_spread``), which anomalies up to a tenth of the window barely move. On clean
ledgers built apart from the simulator (tests/layouts.py) and on real LLM traces, the
default flags 0.0-0.1% of rows (docs/quality.md). ``contamination`` instead flags a fixed
share, the quantile of the window's scores, as the spec's IsolationForest does: kept for
comparison. Reasons are read off the evidence, largest first, in words: the measure and
its value against its norm; "unusual combination" only when no single piece of evidence
would flag the row on its own.

A scikit-learn outlier detector: ``fit(rows)`` returns it, ``score_samples`` is minus the
anomaly score (lower is stranger), ``decision_function`` is negative and ``predict`` -1 for
the rows flagged. Scoring lives in :class:`analytics.anomaly_scoring.AnomalyScorer`, the
base class, which a scoring worker loads without scikit-learn.

>>> from thronos_analytics.core.contract import Row
>>> rows = [Row(str(i), 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 1500.0 + i, 900.0, None, True)
...         for i in range(300)]
>>> detector = AnomalyDetector().fit(rows)
>>> odd = Row("x", 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 9800.0, 900.0, None, True)
>>> flag = detector.flag([odd])[0]
>>> flag["is_anomaly"], flag["reasons"][0]
(True, "latency 9.8 s, 5.9× claude's median (1.6 s)")
>>> detector.predict([odd]).tolist()
[-1]

References: F. T. Liu, K. M. Ting, Z.-H. Zhou, "Isolation Forest", ICDM 2008.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

from thronos_analytics.analytics.anomaly_scoring import (
    DEFAULT_LEVEL,
    SURPRISE,
    AnomalyScorer,
)
from thronos_analytics.analytics.features import (
    ProviderNorms,
    base_matrix,
    context_counts,
    featurise,
)
from thronos_analytics.analytics.forest import CompiledForest
from thronos_analytics.core.contract import Row

# A clean window's 99th percentile lies about TAIL_STRETCH times as far above the median
# as its 90th: 1.96 for a normal distance, 2.43 for an exponential one.
TAIL_QUANTILE = 0.9
TAIL_STRETCH = 2.2
MIN_SPREAD = 1.5
# -log P(provider | context) per unit of evidence: at the default level, a provider that
# the row's session and wallet give less than a 1 in 100 chance.
SURPRISE_NATS = float(np.log(100.0)) / DEFAULT_LEVEL
# The context model learns from at most this many rows: enough for five providers.
CONTEXT_SAMPLE = 60_000


def _tail_spread(values: np.ndarray, center: np.ndarray | float) -> np.ndarray:
    """How far above the median a clean window's 99th percentile lies, estimated from its
    ``TAIL_QUANTILE``: anomalous rows, up to ``1 - TAIL_QUANTILE`` of the window, barely
    move that quantile, where they would own the 99th percentile itself."""
    return TAIL_STRETCH * (np.quantile(values, TAIL_QUANTILE, axis=0) - center)


class AnomalyDetector(OutlierMixin, AnomalyScorer, BaseEstimator):
    """Flags rows whose evidence exceeds ``level`` (or the top ``contamination`` share).

    Parameters: ``level``, the evidence level a row is flagged above; ``contamination``,
    when set, the share of the training rows flagged instead; ``n_estimators``,
    ``max_samples`` and ``random_state``, the IsolationForest's. Learned: ``norms_``,
    ``context_``, ``classes_``, ``coef_``, ``intercept_`` (the context model),
    ``center_``, ``spread_``, ``forest_``, ``forest_center_``, ``forest_spread_``,
    ``threshold_`` and ``n_samples_``.
    """

    def fit(self, X: Sequence[Row], y: None = None) -> AnomalyDetector:
        """Learn the norms, the context model, the evidence's scale, the forest and the
        threshold from ``X``, a sequence of ledger rows; ``y`` is ignored."""
        rows = X
        if not rows:
            raise ValueError("cannot train the anomaly model on zero rows")
        if self.contamination is not None and not 0.0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5) or None, not {self.contamination}")
        if not (np.isfinite(self.level) and self.level > 0):
            raise ValueError(f"the anomaly level must be a positive number, not {self.level}")
        base = base_matrix(rows)
        self.norms_ = ProviderNorms.fit(base, rows)
        use_cases = sorted({r.use_case for r in rows if r.use_case})
        self.context_ = context_counts(rows, self.norms_.providers, use_cases)
        features = featurise(rows, self.norms_, self.context_)
        self._fit_context_model(features.context, [r.provider for r in rows])

        raw, _ = self._evidence(features, np.zeros(SURPRISE + 1), np.ones(SURPRISE + 1))
        self.center_ = np.median(raw, axis=0)
        # Never under MIN_SPREAD robust SDs: a measure that is nearly constant (a benchmark's
        # fixed output length) would otherwise make a small change look extreme.
        self.spread_ = np.maximum(_tail_spread(raw, self.center_), MIN_SPREAD)
        # The provider's surprise is in nats, a scale of its own: fixed, not learned.
        self.center_[SURPRISE], self.spread_[SURPRISE] = 0.0, SURPRISE_NATS
        _, evidence = self._evidence(features, self.center_, self.spread_)
        # scikit-learn is imported only to fit: scoring runs on the compiled arrays, and a
        # scoring worker that never imports it stays ~120 MB smaller.
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(rows)),
            random_state=self.random_state,
        ).fit(evidence)
        self.forest_ = CompiledForest.from_sklearn(forest)
        strangeness = -self.forest_.score_samples(evidence)
        self.forest_center_ = float(np.median(strangeness))
        self.forest_spread_ = max(
            float(_tail_spread(strangeness, self.forest_center_)), 1e-6
        )
        _, scores = self._combine(evidence, -strangeness)
        if self.contamination is None:
            self.threshold_ = float(self.level)
        else:
            self.threshold_ = float(np.quantile(scores, 1.0 - self.contamination))
        self.n_samples_ = len(rows)
        return self

    def _fit_context_model(self, X: np.ndarray, providers: list[str]) -> None:
        self.classes_ = sorted(set(providers))
        if len(self.classes_) < 2:
            # One provider: nothing about it can be unexpected.
            self.coef_ = np.zeros((len(self.classes_), X.shape[1]))
            self.intercept_ = np.zeros(len(self.classes_))
            self._prepare_context_model()
            return
        y = np.asarray(providers)
        if len(y) > CONTEXT_SAMPLE:
            keep = np.random.default_rng(self.random_state).choice(
                len(y), CONTEXT_SAMPLE, replace=False
            )
            X, y = X[keep], y[keep]
        from sklearn.linear_model import LogisticRegression  # fitting only, as above

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a not-quite-converged fit is still a good prior
            model = LogisticRegression(max_iter=200).fit(X, y)
        coef, intercept = model.coef_, model.intercept_
        if len(model.classes_) == 2:  # sklearn keeps one row for two classes
            coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-1, 1]) * intercept / 2
        self.classes_ = model.classes_.tolist()
        self.coef_, self.intercept_ = coef, intercept
        self._prepare_context_model()


__all__ = ["AnomalyDetector", "DEFAULT_LEVEL"]
