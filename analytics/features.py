"""The features of anomaly scoring: how far each measure of a row is from its norm, and how
expected its provider is in its session and wallet.

Each row gives four measures (``BASE``). Heavy-tailed ones are taken as ``log1p`` so a
ratio to the norm becomes a difference. A measure is compared with the median of the rows
most like it, in robust standard deviations (1.4826 × MAD): output length and score with
the same (provider, use case), latency and credits with the same (provider, model), since
that is what they depend on. A cell with fewer than ``MIN_CELL_ROWS`` rows falls back to
the provider's norm, and an unseen provider to the norm of all rows. A missing measure
counts as normal, so the other measures still count.

The fifth feature is context (:func:`context_counts`, :func:`context_matrix`): the calls
per provider and per use case of the row's session and of its wallet, *other than the row
itself*. :class:`analytics.anomaly.AnomalyDetector` learns from it how likely the row's
provider is there, which is what reveals a provider that a kind of user never picks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analytics.contract import Row

BASE = ("output_len", "score", "latency_ms", "credits_used")
LOG_SCALED = np.array([True, False, True, True])
# The row attribute that refines each measure's norm beyond its provider.
REFINED_BY = ("use_case", "use_case", "model", "model")
# A provider's spread never counts as smaller than this, so a provider with constant
# values does not turn every tiny change into an extreme distance.
MIN_SCALE = np.array([0.05, 0.02, 0.05, 0.05])
# Below this many rows a cell's median and MAD are too noisy; its provider's norm is used.
MIN_CELL_ROWS = 50
# Only a low score is suspicious: a very good answer is no reason to look at a call.
LOW_SIDE_ONLY = np.array([False, True, False, False])
SEP = "\x1f"
LEVELS = ("cell", "provider", "all")


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


def _cell_keys(rows: Sequence[Row], column: int) -> list[str]:
    attribute = REFINED_BY[column]
    return [f"{r.provider}{SEP}{getattr(r, attribute) or ''}" for r in rows]


@dataclass
class ProviderNorms:
    """Median and robust scale of each measure per cell, per provider and over all rows.

    ``keys[j]`` names the groups of measure ``j``: ``"provider<SEP>refinement"`` for a cell,
    ``"provider"`` for a provider and ``""`` for all rows.
    """

    providers: list[str]
    keys: list[list[str]]
    median: list[np.ndarray]
    scale: list[np.ndarray]

    @classmethod
    def fit(cls, base: np.ndarray, rows: Sequence[Row]) -> ProviderNorms:
        providers = [r.provider for r in rows]
        names: list[list[str]] = []
        medians: list[np.ndarray] = []
        scales: list[np.ndarray] = []
        for j in range(len(BASE)):
            groups: dict[str, list[int]] = {"": list(range(len(rows)))}
            for i, (provider, cell) in enumerate(zip(providers, _cell_keys(rows, j), strict=True)):
                groups.setdefault(provider, []).append(i)
                groups.setdefault(cell, []).append(i)
            key_list, med, scale = [], [], []
            for key, members in groups.items():
                column = base[members, j]
                column = column[~np.isnan(column)]
                is_cell = SEP in key
                if is_cell and key.endswith(SEP):  # no use case or model: the provider's norm
                    continue
                if column.size == 0 or (is_cell and column.size < MIN_CELL_ROWS):
                    continue
                m = float(np.median(column))
                key_list.append(key)
                med.append(m)
                scale.append(max(1.4826 * float(np.median(np.abs(column - m))), MIN_SCALE[j]))
            names.append(key_list)
            medians.append(np.array(med, dtype=float))
            scales.append(np.array(scale, dtype=float))
        return cls(sorted(set(providers)), names, medians, scales)

    def lookup(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Median, scale and level (index into ``LEVELS``) of each row's norm, (n, len(BASE))."""
        n = len(rows)
        median, scale = np.zeros((n, len(BASE))), np.ones((n, len(BASE)))
        level = np.full((n, len(BASE)), 2, dtype=np.int8)
        for j in range(len(BASE)):
            where = {key: i for i, key in enumerate(self.keys[j])}
            everyone = where.get("")
            for i, (row, cell) in enumerate(zip(rows, _cell_keys(rows, j), strict=True)):
                for lvl, key in enumerate((cell, row.provider)):
                    found = where.get(key)
                    if found is not None:
                        level[i, j] = lvl
                        break
                else:
                    found = everyone
                if found is not None:
                    median[i, j] = self.median[j][found]
                    scale[i, j] = self.scale[j][found]
        return median, scale, level

    def distances(self, base: np.ndarray, rows: Sequence[Row]) -> np.ndarray:
        """Signed robust z of each measure, oriented so that larger is stranger; 0 if missing."""
        median, scale, _ = self.lookup(rows)
        z = (base - median) / scale
        z = np.where(LOW_SIDE_ONLY, -z, np.abs(z))
        return np.nan_to_num(z, nan=0.0)


def feature_names() -> list[str]:
    return [f"{name}_distance" for name in BASE] + ["provider_surprise"]


# --- context ----------------------------------------------------------------------------


@dataclass
class ContextCounts:
    """Calls per provider and per use case of each session and wallet seen in training."""

    providers: list[str]
    use_cases: list[str]
    sessions: dict[str, int]
    session_counts: np.ndarray  # (sessions, providers + use cases)
    wallets: dict[str, int]
    wallet_counts: np.ndarray


def context_counts(
    rows: Sequence[Row], providers: Sequence[str], use_cases: Sequence[str]
) -> ContextCounts:
    own = _own_onehot(rows, providers, use_cases)
    tables = []
    for attribute in ("session_id", "wallet"):
        index: dict[str, int] = {}
        codes = np.array([index.setdefault(getattr(r, attribute) or "", len(index)) for r in rows])
        counts = np.zeros((len(index), own.shape[1]), dtype=np.float32)
        if len(rows):
            np.add.at(counts, codes, own)
        index.pop("", None)
        tables.append((index, counts))
    (sessions, s_counts), (wallets, w_counts) = tables
    return ContextCounts(list(providers), list(use_cases), sessions, s_counts, wallets, w_counts)


def _own_onehot(
    rows: Sequence[Row], providers: Sequence[str], use_cases: Sequence[str]
) -> np.ndarray:
    p_index = {p: i for i, p in enumerate(providers)}
    u_index = {u: len(providers) + i for i, u in enumerate(use_cases)}
    own = np.zeros((len(rows), len(providers) + len(use_cases)), dtype=np.float32)
    for i, r in enumerate(rows):
        if r.provider in p_index:
            own[i, p_index[r.provider]] = 1.0
        if r.use_case in u_index:
            own[i, u_index[r.use_case]] = 1.0
    return own


def context_matrix(
    rows: Sequence[Row],
    counts: ContextCounts,
    context: Sequence[Mapping[str, Mapping[str, float]] | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The context model's input, and the other calls of each row's session and wallet.

    Returns ``(X, others)``: ``X`` holds, for the session and the wallet, the share of
    their other calls per provider and per use case (over ``calls + 1``, so one call is
    weak evidence), then the row's own use case; ``others`` is (n, 2, providers + 1):
    the other calls per provider and in total, for the reasons.

    The stored counts include the rows trained on, so a row's own call is taken off when
    its session or wallet holds one like it. ``context[i]``, when given, holds fresher
    counts of the other calls per provider (``{"session": {p: n}, "wallet": {p: n}}``) and
    replaces the stored provider counts of that row.
    """
    n_p, n_u = len(counts.providers), len(counts.use_cases)
    own = _own_onehot(rows, counts.providers, counts.use_cases)
    parts = []
    others = np.zeros((len(rows), 2, n_p + 1))
    for k, (attribute, index, table, name) in enumerate(
        (
            ("session_id", counts.sessions, counts.session_counts, "session"),
            ("wallet", counts.wallets, counts.wallet_counts, "wallet"),
        )
    ):
        mine = np.zeros((len(rows), n_p + n_u))
        found = np.array([index.get(getattr(r, attribute) or "", -1) for r in rows], dtype=int)
        known = found >= 0
        mine[known] = table[found[known]]
        mine = np.where(mine >= own, mine - own, mine)
        if context is not None:
            for i, extra in enumerate(context):
                fresh = (extra or {}).get(name)
                if fresh is not None:
                    mine[i, :n_p] = [float(fresh.get(p, 0.0)) for p in counts.providers]
        for block in (mine[:, :n_p], mine[:, n_p:]):
            parts.append(block / (block.sum(axis=1, keepdims=True) + 1.0))
        others[:, k, :n_p] = mine[:, :n_p]
        others[:, k, n_p] = mine[:, :n_p].sum(axis=1)
    parts.append(own[:, n_p:])
    return np.hstack(parts), others
