"""Per-interaction anomaly detection: an IsolationForest over ``analytics.features``.

The forest isolates rows that differ from the bulk in few random splits (Liu et al., 2008).
The flag threshold is the ``contamination`` quantile of the training window's scores, so
that setting is the expected share of flagged rows. Reasons are read off the features,
not the forest: each measure far from its provider's median (|robust z| >= 3) is named in
words, largest first.

>>> from analytics.contract import Row
>>> rows = [Row(str(i), 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 1500.0 + i, 900.0, None, True)
...         for i in range(300)]
>>> detector = AnomalyDetector(contamination=0.01).fit(rows)
>>> odd = Row("x", 1.8e9, "claude", None, "s", "w", 1.0, 0.8, 9800.0, 900.0, None, True)
>>> flag = detector.flag([odd])[0]
>>> flag["is_anomaly"], flag["reasons"][0]
(True, "latency 9.8 s, 6.5× claude's median (1.6 s)")
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from sklearn.ensemble import IsolationForest

from analytics.contract import Row
from analytics.features import (
    BASE,
    ProviderNorms,
    base_matrix,
    design_matrix,
    feature_names,
    to_natural,
)
from analytics.forest import CompiledForest

REASON_Z = 3.0
MAX_REASONS = 3
FORMAT = 1


class AnomalyDetector:
    def __init__(
        self,
        contamination: float = 0.01,
        n_estimators: int = 100,
        max_samples: int = 256,
        random_state: int = 0,
    ) -> None:
        self.contamination = contamination
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, rows: Sequence[Row]) -> AnomalyDetector:
        if not rows:
            raise ValueError("cannot train the anomaly model on zero rows")
        base = base_matrix(rows)
        providers = [r.provider for r in rows]
        self.norms_ = ProviderNorms.fit(base, providers)
        X = design_matrix(base, self.norms_.index(providers), self.norms_)
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(rows)),
            random_state=self.random_state,
        ).fit(X)
        self.forest_ = CompiledForest.from_sklearn(forest)
        scores = self.forest_.score_samples(X)
        self.threshold_ = float(np.quantile(scores, self.contamination))
        self.n_samples_ = len(rows)
        return self

    @property
    def feature_names_(self) -> list[str]:
        return feature_names(self.norms_.providers)

    def flag(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        """``{id, anomaly_score, is_anomaly, reasons}`` per row, in order."""
        if not rows:
            return []
        base = base_matrix(rows)
        idx = self.norms_.index([r.provider for r in rows])
        X = design_matrix(base, idx, self.norms_)
        scores = self.forest_.score_samples(X)
        flags = []
        for i, row in enumerate(rows):
            is_anomaly = bool(scores[i] < self.threshold_)
            flags.append(
                {
                    "id": row.id,
                    # sklearn's score is in (0, 1], lower is stranger; flip it for people.
                    "anomaly_score": round(float(-scores[i]), 6),
                    "is_anomaly": is_anomaly,
                    "reasons": self._reasons(row, base[i], X[i], idx[i]) if is_anomaly else [],
                }
            )
        return flags

    def _reasons(self, row: Row, base: np.ndarray, x: np.ndarray, idx: int) -> list[str]:
        n = len(BASE)
        distance = x[n : 2 * n]
        whose = f"{row.provider}'s" if idx < len(self.norms_.providers) else "all providers'"
        reasons = []
        if idx == len(self.norms_.providers):
            reasons.append(f"provider {row.provider!r} was not seen in training")
        for j in np.argsort(-np.abs(distance)):
            if abs(distance[j]) < REASON_Z or np.isnan(base[j]) or len(reasons) >= MAX_REASONS:
                continue
            value = float(to_natural(base[j : j + 1], j)[0])
            median = float(to_natural(self.norms_.median[idx, j : j + 1], j)[0])
            reasons.append(_describe(BASE[j], value, median, whose))
        return reasons or ["unusual combination of provider and measures"]

    def to_bytes(self) -> bytes:
        """A pickle-free artifact: numpy arrays and a JSON header in one ``.npz``."""
        header = {
            "format": FORMAT,
            "contamination": self.contamination,
            "threshold": self.threshold_,
            "n_samples": self.n_samples_,
            "providers": self.norms_.providers,
        }
        arrays: dict[str, Any] = {f"forest_{k}": v for k, v in self.forest_.to_arrays().items()}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            header=np.frombuffer(orjson.dumps(header), dtype=np.uint8),
            norms_median=self.norms_.median,
            norms_scale=self.norms_.scale,
            **arrays,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> AnomalyDetector:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            header = orjson.loads(npz["header"].tobytes())
            if header.get("format") != FORMAT:
                raise ValueError(f"anomaly model format {header.get('format')} is not {FORMAT}")
            detector = cls(contamination=header["contamination"])
            detector.norms_ = ProviderNorms(
                header["providers"], npz["norms_median"], npz["norms_scale"]
            )
            detector.forest_ = CompiledForest.from_arrays(
                {k.removeprefix("forest_"): npz[k] for k in npz.files if k.startswith("forest_")}
            )
        detector.threshold_ = header["threshold"]
        detector.n_samples_ = header["n_samples"]
        return detector


def _describe(measure: str, value: float, median: float, whose: str) -> str:
    ratio = f"{value / median:.2g}×" if median > 0 else "far from"
    if measure == "latency_ms":
        return f"latency {_seconds(value)}, {ratio} {whose} median ({_seconds(median)})"
    if measure == "output_len":
        return f"output length {value:,.0f}, {ratio} {whose} median ({median:,.0f})"
    if measure == "credits_used":
        return f"credits {value:.3g}, {ratio} {whose} median ({median:.3g})"
    return f"score {value:.2f}, {whose} median {median:.2f}"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"
