"""Per-interaction anomaly detection: robust distances from the norm, context, and a forest.

Each row gets five pieces of evidence (``analytics.features``): how far its output
length, score, latency and credits are from the median of comparable rows, in robust
standard deviations, and how surprising its provider is given the other calls of its
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
comparison. Reasons are read off the evidence, largest first, in words.

>>> from analytics.contract import Row
>>> rows = [Row(str(i), 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 1500.0 + i, 900.0, None, True)
...         for i in range(300)]
>>> detector = AnomalyDetector().fit(rows)
>>> odd = Row("x", 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 9800.0, 900.0, None, True)
>>> flag = detector.flag([odd])[0]
>>> flag["is_anomaly"], flag["reasons"][0]
(True, "latency 9.8 s, 5.9× claude's median (1.6 s)")
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from thronos_analytics.analytics import _kernels
from thronos_analytics.analytics.features import (
    BASE,
    LEVELS,
    ContextCounts,
    Features,
    ProviderNorms,
    base_matrix,
    context_counts,
    feature_names,
    featurise,
    to_natural,
)
from thronos_analytics.analytics.forest import CompiledForest
from thronos_analytics.core.contract import Row

FORMAT = 3  # 3: the threshold is a level on a scale from the 90th percentile
# Evidence is scaled so a clean window's 99th percentile is 1; a row is flagged above this.
# At 2.0 a clean 30,000-row ledger had 0.03% flagged, and planted anomalies at 0.2% to 5%
# of rows were found with recall 0.98-0.99 (docs/quality.md).
DEFAULT_LEVEL = 2.0
# A clean window's 99th percentile lies about TAIL_STRETCH times as far above the median
# as its 90th: 1.96 for a normal distance, 2.43 for an exponential one.
TAIL_QUANTILE = 0.9
TAIL_STRETCH = 2.2
MIN_SPREAD = 1.5
# -log P(provider | context) per unit of evidence: at the default level, a provider that
# the row's session and wallet give less than a 1 in 100 chance.
SURPRISE_NATS = float(np.log(100.0)) / DEFAULT_LEVEL
# A piece of evidence is named in the reasons from this level on.
REASON_LEVEL = 1.0
MAX_REASONS = 3
# The context model learns from at most this many rows: enough for five providers.
CONTEXT_SAMPLE = 60_000
SURPRISE = len(BASE)  # column of the provider evidence
FOREST = len(BASE) + 1  # column of the forest's evidence


def _tail_spread(values: np.ndarray, center: np.ndarray | float) -> np.ndarray:
    """How far above the median a clean window's 99th percentile lies, estimated from its
    ``TAIL_QUANTILE``: anomalous rows, up to ``1 - TAIL_QUANTILE`` of the window, barely
    move that quantile, where they would own the 99th percentile itself."""
    return TAIL_STRETCH * (np.quantile(values, TAIL_QUANTILE, axis=0) - center)


class AnomalyDetector:
    def __init__(
        self,
        level: float = DEFAULT_LEVEL,
        contamination: float | None = None,
        n_estimators: int = 100,
        max_samples: int = 256,
        random_state: int = 0,
    ) -> None:
        self.level = level
        # None (flag by level, not by share) is kept as NaN, so the attribute stays a float.
        self.contamination: float = float("nan") if contamination is None else contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, rows: Sequence[Row]) -> AnomalyDetector:
        if not rows:
            raise ValueError("cannot train the anomaly model on zero rows")
        by_level = bool(np.isnan(self.contamination))
        if not by_level and not 0.0 < self.contamination < 0.5:
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
        if by_level:
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

    def _prepare_context_model(self) -> None:
        """The context model as the scoring kernel reads it, in the dtypes it is compiled for."""
        # A context provider's class; classes are the providers of the rows fitted on.
        where = {p: i for i, p in enumerate(self.classes_)}
        self._class_of = np.array(
            [where.get(p, -1) for p in self.context_.providers], dtype=np.int64
        )
        self.coef_ = np.ascontiguousarray(self.coef_, np.float64)
        self.intercept_ = np.ascontiguousarray(self.intercept_, np.float64)

    def _evidence(
        self, features: Features, center: np.ndarray, spread: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw evidence (distances, then provider surprise) and its rescaling by center, spread.

        The surprise is ``-log P(row's provider | its session's and wallet's other calls)``;
        an unseen provider is named in the reasons, but alone it is no anomaly.
        """
        return _kernels.evidence(
            features.distance,
            features.context,
            features.provider,
            self._class_of,
            self.coef_,
            self.intercept_,
            center,
            spread,
        )

    def _combine(
        self, evidence: np.ndarray, forest_score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Evidence with the forest's appended, and each row's largest: its anomaly score."""
        return _kernels.combine(
            evidence, forest_score, float(self.forest_center_), float(self.forest_spread_)
        )

    @property
    def feature_names_(self) -> list[str]:
        return feature_names()

    def score(
        self,
        rows: Sequence[Row],
        context: Sequence[Mapping[str, Mapping[str, float]] | None] | None = None,
    ) -> np.ndarray:
        """The anomaly score of each row: larger is stranger, the threshold is ``threshold_``."""
        return self._evaluate(rows, context)[0]

    def _evaluate(self, rows: Sequence[Row], context):
        features = featurise(rows, self.norms_, self.context_, context)
        raw, evidence = self._evidence(features, self.center_, self.spread_)
        evidence, scores = self._combine(evidence, self.forest_.score_samples(evidence))
        return scores, evidence, features.base, features.others, raw

    def flag(
        self,
        rows: Sequence[Row],
        context: Sequence[Mapping[str, Mapping[str, float]] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """``{id, anomaly_score, is_anomaly, reasons}`` per row, in order.

        ``context`` is optional, one entry per row: the calls per provider of the row's
        session and wallet other than the row, ``{"session": {provider: n}, "wallet":
        {provider: n}}``, for sessions newer than the model. Without it the counts kept
        from training are used.
        """
        if not rows:
            return []
        scores, evidence, base, others, raw = self._evaluate(rows, context)
        threshold = self.threshold_
        flags = [
            {
                "id": row.id,
                "anomaly_score": round(score, 4),
                "is_anomaly": score > threshold,
                "reasons": [],
            }
            for row, score in zip(rows, scores.tolist(), strict=True)
        ]
        for i, flag in enumerate(flags):
            if flag["is_anomaly"]:
                flag["reasons"] = self._reasons(rows[i], base[i], evidence[i], others[i], raw[i])
        return flags

    def _reasons(
        self, row: Row, base: np.ndarray, evidence: np.ndarray, others: np.ndarray, raw
    ) -> list[str]:
        reasons = []
        if row.provider not in self.norms_.providers:
            reasons.append(f"provider {row.provider!r} was not seen in training")
        median, _, level = self.norms_.lookup([row])
        for rank, j in enumerate(np.argsort(-evidence)):
            # The strongest evidence is always named; others only when strong on their own.
            level_needed = REASON_LEVEL if rank == 0 else self.threshold_
            if evidence[j] < level_needed or len(reasons) >= MAX_REASONS:
                break
            if j == FOREST:
                if not reasons:  # the forest only speaks when no single measure does
                    reasons.append("unusual combination of provider and measures")
            elif j == SURPRISE:
                reasons.append(self._describe_provider(row, others, float(np.exp(-raw[SURPRISE]))))
            elif not np.isnan(base[j]):
                value = float(to_natural(base[j : j + 1], j)[0])
                norm = float(to_natural(median[0, j : j + 1], j)[0])
                reasons.append(_describe(BASE[j], value, norm, _whose(row, j, level[0, j])))
        return reasons or ["unusual combination of provider and measures"]

    def _describe_provider(self, row: Row, others: np.ndarray, share: float) -> str:
        p = self.context_.provider_index.get(row.provider)
        parts = []
        for k, scope in enumerate(("session", "wallet")):
            total = int(others[k, -1])
            if total:
                mine = int(others[k, p]) if p is not None else 0
                parts.append(f"{mine} of its {scope}'s {total} other calls")
        evidence = "; ".join(parts) if parts else "no other calls of its session or wallet"
        return (
            f"provider {row.provider} is unusual here: {evidence}; "
            f"calls like these go to {row.provider} {_share(share)} of the time"
        )

    def to_bytes(self) -> bytes:
        """A pickle-free artifact: numpy arrays and a JSON header in one ``.npz``."""
        header = {
            "format": FORMAT,
            "contamination": None if np.isnan(self.contamination) else self.contamination,
            "level": self.level,
            "threshold": self.threshold_,
            "n_samples": self.n_samples_,
            "providers": self.norms_.providers,
            "norm_keys": self.norms_.keys,
            "classes": self.classes_,
            "use_cases": self.context_.use_cases,
            "context_providers": self.context_.providers,
            "forest_center": self.forest_center_,
            "forest_spread": self.forest_spread_,
        }
        arrays: dict[str, Any] = {f"forest_{k}": v for k, v in self.forest_.to_arrays().items()}
        for j in range(len(BASE)):
            arrays[f"norm_median_{j}"] = self.norms_.median[j]
            arrays[f"norm_scale_{j}"] = self.norms_.scale[j]
        arrays.update(
            header=np.frombuffer(orjson.dumps(header), dtype=np.uint8),
            center=self.center_,
            spread=self.spread_,
            coef=self.coef_,
            intercept=self.intercept_,
            session_ids=np.array(list(self.context_.sessions), dtype=str),
            session_counts=self.context_.session_counts,
            wallet_ids=np.array(list(self.context_.wallets), dtype=str),
            wallet_counts=self.context_.wallet_counts,
        )
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> AnomalyDetector:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            header = orjson.loads(npz["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"anomaly model format {header.get('format')} is not {FORMAT}")
            detector = cls(level=header["level"], contamination=header["contamination"])
            detector.norms_ = ProviderNorms(
                header["providers"],
                header["norm_keys"],
                [npz[f"norm_median_{j}"] for j in range(len(BASE))],
                [npz[f"norm_scale_{j}"] for j in range(len(BASE))],
            )
            detector.forest_ = CompiledForest.from_arrays(
                {k.removeprefix("forest_"): npz[k] for k in npz.files if k.startswith("forest_")}
            )
            sessions, wallets = npz["session_ids"].tolist(), npz["wallet_ids"].tolist()
            detector.context_ = ContextCounts(
                header["context_providers"],
                header["use_cases"],
                {s: i for i, s in enumerate(sessions)},
                npz["session_counts"],
                {w: i for i, w in enumerate(wallets)},
                npz["wallet_counts"],
            )
            detector.center_, detector.spread_ = npz["center"], npz["spread"]
            detector.coef_, detector.intercept_ = npz["coef"], npz["intercept"]
        detector.classes_ = header["classes"]
        detector.forest_center_ = header["forest_center"]
        detector.forest_spread_ = header["forest_spread"]
        detector.threshold_ = header["threshold"]
        detector.n_samples_ = header["n_samples"]
        detector._prepare_context_model()
        return detector


def _whose(row: Row, column: int, level: int) -> tuple[str, str]:
    """Whose median a measure was compared with, and on what, for the reasons."""
    if LEVELS[level] == "all":
        return "all providers'", ""
    if LEVELS[level] == "cell" and column >= 2:
        return f"{row.model}'s", ""
    if LEVELS[level] == "cell":
        return f"{row.provider}'s", f" for {row.use_case}"
    return f"{row.provider}'s", ""


def _describe(measure: str, value: float, median: float, whose: tuple[str, str]) -> str:
    """E.g. "latency 9.8 s, 6× claude's median (1.6 s)"."""
    who, on = whose
    if measure == "score":
        return f"score {value:.2f}, {who} median{on} {median:.2f}"
    if measure == "latency_ms":
        shown, norm = _seconds(value), _seconds(median)
    elif measure == "output_len":
        shown, norm = f"{value:,.0f}", f"{median:,.0f}"
    else:
        shown, norm = f"{value:.3g}", f"{median:.3g}"
    name = {"latency_ms": "latency", "output_len": "output length", "credits_used": "credits"}
    return f"{name[measure]} {shown}, {_ratio(value, median)} {who} median{on} ({norm})"


def _ratio(value: float, median: float) -> str:
    if median <= 0:
        return "far from"
    ratio = value / median
    if ratio >= 10:
        return f"{ratio:.0f}×"
    if ratio >= 0.5:
        return f"{ratio:.2g}×"
    return f"1/{1 / max(ratio, 1e-9):.0f} of"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _share(p: float) -> str:
    return f"{p:.1%}" if p >= 0.001 else "under 0.1%"


__all__ = ["AnomalyDetector"]
