"""The fitted anomaly detector as scoring uses it: its arrays, its scores, its flags, its artifact.

Scoring needs none of scikit-learn, and a scoring worker that never imports it stays ~120 MB
smaller; :class:`analytics.anomaly.AnomalyDetector`, which fits, adds it. A worker loads a
published model with :meth:`AnomalyScorer.from_bytes` and calls :meth:`AnomalyScorer.flag`.
Scores follow scikit-learn's outlier detectors: ``score_samples`` is lower for stranger
rows, ``decision_function`` is negative for flagged ones and ``predict`` is -1 for them.

>>> from thronos_analytics.analytics.anomaly import AnomalyDetector
>>> from thronos_analytics.core.contract import Row
>>> rows = [Row(str(i), 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 1500.0 + i, 900.0, None, True)
...         for i in range(300)]
>>> scorer = AnomalyScorer.from_bytes(AnomalyDetector().fit(rows).to_bytes())
>>> odd = Row("x", 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 9800.0, 900.0, None, True)
>>> scorer.predict([odd]).tolist(), scorer.flag([odd])[0]["is_anomaly"]
([-1], True)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import orjson

from thronos_analytics.analytics import _kernels
from thronos_analytics.analytics.features import (
    BASE,
    LEVELS,
    ContextCounts,
    Features,
    FreshCounts,
    ProviderNorms,
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
# A piece of evidence is named in the reasons from this level on.
REASON_LEVEL = 1.0
MAX_REASONS = 3
SURPRISE = len(BASE)  # column of the provider evidence
FOREST = len(BASE) + 1  # column of the forest's evidence
Context = FreshCounts | None


class AnomalyScorer:
    """A fitted anomaly detector without its fitting: what a scoring worker loads.

    Its attributes are :class:`analytics.anomaly.AnomalyDetector`'s, which this is the base
    of; see that class for the parameters and the evidence.
    """

    norms_: ProviderNorms
    context_: ContextCounts
    forest_: CompiledForest
    classes_: list[str]
    coef_: np.ndarray
    intercept_: np.ndarray
    center_: np.ndarray
    spread_: np.ndarray
    forest_center_: float
    forest_spread_: float
    threshold_: float
    n_samples_: int

    def __init__(
        self,
        level: float = DEFAULT_LEVEL,
        contamination: float | None = None,
        n_estimators: int = 100,
        max_samples: int = 256,
        random_state: int = 0,
    ) -> None:
        self.level = level
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

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

    def _anomaly_scores(self, rows: Sequence[Row], context: Context = None) -> np.ndarray:
        """Each row's ``anomaly_score``: its largest evidence, larger is stranger; a row is
        flagged above ``threshold_``."""
        return self._evaluate(rows, context)[0]

    def score_samples(self, X: Sequence[Row], context: Context = None) -> np.ndarray:
        """Minus each row's anomaly score, as scikit-learn's outlier detectors: the lower,
        the more abnormal. ``context`` is as :meth:`flag`'s."""
        return -self._anomaly_scores(X, context)

    def decision_function(self, X: Sequence[Row], context: Context = None) -> np.ndarray:
        """How far each row is inside the threshold: negative for the rows flagged."""
        return self.threshold_ - self._anomaly_scores(X, context)

    def predict(self, X: Sequence[Row], context: Context = None) -> np.ndarray:
        """-1 for each row flagged, 1 for the others."""
        return np.where(self.decision_function(X, context) < 0, -1, 1)

    def _evaluate(self, rows: Sequence[Row], context: Context):
        features = featurise(rows, self.norms_, self.context_, context)
        raw, evidence = self._evidence(features, self.center_, self.spread_)
        evidence, scores = self._combine(evidence, self.forest_.score_samples(evidence))
        return scores, evidence, features.base, features.others, raw

    def flag(self, rows: Sequence[Row], context: Context = None) -> list[dict[str, Any]]:
        """``{id, anomaly_score, is_anomaly, reasons}`` per row, in order.

        ``context`` is optional (:data:`features.FreshCounts`): the calls per provider of
        each row's session and wallet other than the row, for sessions newer than the
        model. Without it the counts kept from training are used.
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
        """The evidence in words, strongest first: each measure with its value and its norm
        (at the row's output length for latency and credits), the provider's surprise, and
        the forest's combination only when no single piece of evidence flags the row."""
        reasons = []
        if row.provider not in self.norms_.providers:
            reasons.append(f"provider {row.provider!r} was not seen in training")
        norm = self.norms_.lookup([row])
        single = evidence[:FOREST]
        for rank, j in enumerate(np.argsort(-single)):
            # The strongest evidence is named from REASON_LEVEL; others only when strong on
            # their own.
            level_needed = REASON_LEVEL if rank == 0 else self.threshold_
            if single[j] < level_needed or len(reasons) >= MAX_REASONS:
                break
            if j == SURPRISE:
                reasons.append(self._describe_provider(row, others, float(np.exp(-raw[SURPRISE]))))
            elif not np.isnan(base[j]):
                value = float(to_natural(base[j : j + 1], j)[0])
                expected = float(to_natural(norm.median[0, j : j + 1], j)[0])
                length = None
                if norm.slope[0, j] > 0:  # compared at the row's length: say which
                    length = f"{float(to_natural(base[:1], 0)[0]):,.0f} {row.output_unit}"
                whose = _whose(row, j, norm.level[0, j])
                reasons.append(_describe(BASE[j], value, expected, whose, length))
        if not (single >= self.threshold_).any() and len(reasons) < MAX_REASONS:
            # What flagged the row is how its measures go together, not one of them.
            reasons.append("unusual combination of provider and measures")
        return reasons

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
            "contamination": self.contamination,
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
            arrays[f"norm_length_{j}"] = self.norms_.length[j]
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
    def from_bytes(cls, blob: bytes) -> Self:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            header = orjson.loads(npz["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"anomaly model format {header.get('format')} is not {FORMAT}")
            detector = cls(level=header["level"], contamination=header["contamination"])
            # A model written before lengths were taken into account has no slopes.
            sloped = all(f"norm_length_{j}" in npz.files for j in range(len(BASE)))
            detector.norms_ = ProviderNorms(
                header["providers"],
                header["norm_keys"],
                [npz[f"norm_median_{j}"] for j in range(len(BASE))],
                [npz[f"norm_scale_{j}"] for j in range(len(BASE))],
                [npz[f"norm_length_{j}"] for j in range(len(BASE))] if sloped else [],
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


def _describe(
    measure: str, value: float, median: float, whose: tuple[str, str], length: str | None = None
) -> str:
    """E.g. "latency 9.8 s, 6× claude's median (1.6 s)"; with the ``length`` the norm was
    taken at, "credits 31.2 for 900 chars (expected ~3.1), 10× gpt-4o-mini's norm"."""
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
    if length is not None:
        return (
            f"{name[measure]} {shown} for {length} (expected ~{norm}), "
            f"{_ratio(value, median)} {who} norm"
        )
    if value == 0:  # no ratio says "empty" as plainly
        return f"{name[measure]} 0, against {who} median{on} ({norm})"
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


__all__ = ["AnomalyScorer", "DEFAULT_LEVEL"]
