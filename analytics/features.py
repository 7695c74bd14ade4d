"""The feature list for anomaly scoring, and the per-provider norms it is measured against.

Each row gives four measures (``BASE``). Heavy-tailed ones are taken as ``log1p`` so a
ratio to the norm becomes a difference. The model sees, per row:

* the four measures, a missing one replaced by its provider's median (so it looks normal
  rather than extreme, and the other measures still count);
* each measure's distance from its provider's median in robust standard deviations
  (1.4826 × MAD), which is what makes a latency normal for one provider abnormal for
  another;
* the provider one-hot. A provider unseen in training has no column set and is measured
  against the norms of all providers together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analytics.contract import Row

BASE = ("output_len", "score", "latency_ms", "credits_used")
LOG_SCALED = np.array([True, False, True, True])
# A provider's spread never counts as smaller than this, so a provider with constant
# values does not turn every tiny change into an extreme distance.
MIN_SCALE = np.array([0.05, 0.02, 0.05, 0.05])


def base_matrix(rows: Sequence[Row]) -> np.ndarray:
    """(n, len(BASE)) float64 on the model's scale, NaN where a row lacks the measure."""
    raw = np.array(
        [[r.output_len, r.score, r.latency_ms, r.credits_used] for r in rows], dtype=float
    ).reshape(len(rows), len(BASE))
    raw[:, LOG_SCALED] = np.log1p(raw[:, LOG_SCALED])
    return raw


def to_natural(values: np.ndarray, column: int) -> np.ndarray:
    """Undo the log scale of one ``BASE`` column."""
    return np.expm1(values) if LOG_SCALED[column] else values


@dataclass
class ProviderNorms:
    """Median and robust scale of each measure, per provider; the last row is global."""

    providers: list[str]
    median: np.ndarray  # (len(providers) + 1, len(BASE))
    scale: np.ndarray

    @classmethod
    def fit(cls, base: np.ndarray, providers: Sequence[str]) -> ProviderNorms:
        names = sorted(set(providers))
        labels = np.asarray(providers)
        groups = [base[labels == name] for name in names] + [base]
        median = np.zeros((len(groups), len(BASE)))
        scale = np.tile(MIN_SCALE, (len(groups), 1))
        for i, group in enumerate(groups):
            for j in range(len(BASE)):
                column = group[:, j][~np.isnan(group[:, j])]
                if column.size:
                    median[i, j] = np.median(column)
                    mad = np.median(np.abs(column - median[i, j]))
                    scale[i, j] = max(1.4826 * mad, MIN_SCALE[j])
        return cls(names, median, scale)

    def index(self, providers: Sequence[str]) -> np.ndarray:
        """Row of the norms for each provider; unseen providers get the global row."""
        lookup = {name: i for i, name in enumerate(self.providers)}
        unseen = len(self.providers)
        return np.fromiter((lookup.get(p, unseen) for p in providers), int, len(providers))


def feature_names(providers: Sequence[str]) -> list[str]:
    return (
        list(BASE)
        + [f"{name}_vs_provider" for name in BASE]
        + [f"provider={name}" for name in providers]
    )


def design_matrix(base: np.ndarray, idx: np.ndarray, norms: ProviderNorms) -> np.ndarray:
    """The model's input, columns in ``feature_names(norms.providers)`` order."""
    median = norms.median[idx]
    filled = np.where(np.isnan(base), median, base)
    distance = (filled - median) / norms.scale[idx]
    onehot = np.zeros((len(idx), len(norms.providers)))
    seen = idx < len(norms.providers)
    onehot[np.flatnonzero(seen), idx[seen]] = 1.0
    return np.hstack([filled, distance, onehot])
