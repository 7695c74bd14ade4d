"""The features of anomaly scoring: how far each measure of a row is from its norm, and how
expected its provider is in its session and wallet.

Each row gives four measures (``BASE``). Heavy-tailed ones are taken as ``log1p`` so a
ratio to the norm becomes a difference. A measure is compared with the median of the rows
most like it, in robust standard deviations (1.4826 × MAD): output length and score with
the same (provider, use case), latency and credits with the same (provider, model), since
that is what they depend on. A cell with fewer than ``MIN_CELL_ROWS`` rows falls back to
the provider's norm, and an unseen provider to the norm of all rows. A missing measure
counts as normal, so the other measures still count. A failed call (``success`` false)
has no answer to measure: its latency and length are a refusal's (often 0), so all its
measures count as missing, in the norms as in its own evidence; failures are counted as
incidents instead.

The fifth feature is context (:func:`context_counts`, :func:`featurise`): the calls
per provider and per use case of the row's session and of its wallet, *other than the row
itself*. :class:`analytics.anomaly.AnomalyDetector` learns from it how likely the row's
provider is there, which is what reveals a provider that a kind of user never picks.

:func:`featurise` computes all of it: a Python pass over the rows turns each into a few
integer codes (dictionary lookups in tables built once per model), and one compiled kernel
does the arithmetic, for one row as for thousands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import numpy as np
from thronos_analytics.analytics import _kernels
from thronos_analytics.core.contract import Row

BASE = ("output_len", "score", "latency_ms", "credits_used")
LOG_SCALED = np.array([True, False, True, True])
# The row attribute that refines each measure's norm beyond its provider.
REFINED_BY = ("use_case", "use_case", "model", "model")
# A provider's spread never counts as smaller than this, so a provider with constant
# values does not turn every tiny change into an extreme distance.
MIN_SCALE = np.array([0.25, 0.02, 0.15, 0.05])
# Below this many rows a cell's median and MAD are too noisy; its provider's norm is used.
MIN_CELL_ROWS = 50
# Only a low score is suspicious: a very good answer is no reason to look at a call.
LOW_SIDE_ONLY = np.array([False, True, False, False])
SEP = "\x1f"
LEVELS = ("cell", "provider", "all")
# Distinct (provider, use case, model) triples whose norms are remembered; past this the
# memory starts over, so odd values in a stream cannot grow it without bound.
MEMO_SIZE = 4096

# attrgetter reads a dataclass and a named tuple alike, in one C call per row.
_MEASURES = attrgetter(*BASE)
_NO_MEASURES = (None,) * len(BASE)  # a failed call's
_KEYS = attrgetter("provider", "use_case", "model", "session_id", "wallet")
# Columns of the codes that featurise passes its kernel (named alike in _kernels.pyx).
_NORM, _PROVIDER, _USE_CASE, _SESSION, _WALLET = 0, 4, 5, 6, 7
# LOG_SCALED and LOW_SIDE_ONLY as the kernels take them.
_LOG_SCALED = LOG_SCALED.astype(np.uint8)
_LOW_SIDE_ONLY = LOW_SIDE_ONLY.astype(np.uint8)


def base_matrix(rows: Sequence[Row]) -> np.ndarray:
    """(n, len(BASE)) float64 on the model's scale, NaN where a row lacks the measure."""
    raw = _raw_measures(
        [value for r in rows for value in (_MEASURES(r) if r.success else _NO_MEASURES)],
        len(rows),
    )
    _kernels.log_scale(raw, _LOG_SCALED)
    return raw


def _raw_measures(measures: list[float | None], n: int) -> np.ndarray:
    """The measures of n rows, given flat, as (n, len(BASE)) float64 with NaN for None."""
    return np.array(measures, dtype=float).reshape(n, len(BASE))


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
    ``"provider"`` for a provider and ``""`` for all rows. Treat it as immutable: lookup
    tables are built from it once.
    """

    providers: list[str]
    keys: list[list[str]]
    median: list[np.ndarray]
    scale: list[np.ndarray]

    def __post_init__(self) -> None:
        # Every measure's norms in one flat table, and a last entry (median 0, scale 1) for
        # a measure that has no norm at all; ``_where[j]`` maps group keys to entries.
        offsets = np.cumsum([0] + [len(keys) for keys in self.keys])
        self._where = [
            {key: int(offsets[j]) + i for i, key in enumerate(keys)}
            for j, keys in enumerate(self.keys)
        ]
        self._median = np.concatenate([*self.median, [0.0]]).astype(np.float64)
        self._scale = np.concatenate([*self.scale, [1.0]]).astype(np.float64)
        self._memo: dict[tuple, tuple[int, ...]] = {}

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

    def resolve(
        self, provider: str, use_case: str | None, model: str | None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Each measure's entry in the flat tables, and its level (index into ``LEVELS``).

        The cell's norm if it has one, else the provider's, else that of all rows.
        """
        refinement = {"use_case": use_case, "model": model}
        entries, levels = [], []
        for j, attribute in enumerate(REFINED_BY):
            cell = f"{provider}{SEP}{refinement[attribute] or ''}"
            keys = (cell, provider, "")
            level = next((lv for lv, key in enumerate(keys) if key in self._where[j]), None)
            if level is None:  # not even a norm of all rows: the neutral entry
                entries.append(len(self._median) - 1)
                levels.append(LEVELS.index("all"))
            else:
                entries.append(self._where[j][keys[level]])
                levels.append(level)
        return tuple(entries), tuple(levels)

    def _entries(self, key: tuple[str, str | None, str | None]) -> tuple[int, ...]:
        """``resolve(*key)[0]``, remembered."""
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        entries = self._memo[key] = self.resolve(*key)[0]
        return entries

    def lookup(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Median, scale and level (index into ``LEVELS``) of each row's norm, (n, len(BASE))."""
        resolved = [self.resolve(r.provider, r.use_case, r.model) for r in rows]
        shape = (len(rows), len(BASE))
        entries = np.array([e for e, _ in resolved], dtype=np.int64).reshape(shape)
        levels = np.array([lv for _, lv in resolved], dtype=np.int8).reshape(shape)
        return self._median[entries], self._scale[entries], levels

    def distances(self, base: np.ndarray, rows: Sequence[Row]) -> np.ndarray:
        """Signed robust z of each measure, oriented so that larger is stranger; 0 if missing."""
        entries = [self.resolve(r.provider, r.use_case, r.model)[0] for r in rows]
        codes = np.array(entries, dtype=np.int64).reshape(len(rows), len(BASE))
        distance = np.empty((len(rows), len(BASE)))
        base = np.ascontiguousarray(base, np.float64)  # the one type the kernel takes
        _kernels.distances(base, codes, self._median, self._scale, _LOW_SIDE_ONLY, distance)
        return distance


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

    def __post_init__(self) -> None:
        self.provider_index = {p: i for i, p in enumerate(self.providers)}
        self.use_case_index = {u: i for i, u in enumerate(self.use_cases)}
        # The kernel takes C-ordered float32 tables.
        width = len(self.providers) + len(self.use_cases)
        self.session_counts = np.ascontiguousarray(self.session_counts, np.float32)
        self.wallet_counts = np.ascontiguousarray(self.wallet_counts, np.float32)
        for table in (self.session_counts, self.wallet_counts):
            if table.ndim != 2 or table.shape[1] != width:
                raise ValueError(f"context counts have shape {table.shape}, not (n, {width})")


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


# --- all features -----------------------------------------------------------------------


class Features(NamedTuple):
    base: np.ndarray  # (n, len(BASE)), from base_matrix
    distance: np.ndarray  # (n, len(BASE)), from ProviderNorms.distances
    context: np.ndarray  # (n, 2 * (providers + use cases) + use cases): the context model's input
    others: np.ndarray  # (n, 2, providers + 1)
    provider: np.ndarray  # (n,) index into ContextCounts.providers, -1 if unseen


def featurise(
    rows: Sequence[Row],
    norms: ProviderNorms,
    counts: ContextCounts,
    context: Sequence[Mapping[str, Mapping[str, float]] | None] | None = None,
) -> Features:
    """Every feature of every row: distances from the norms, and the context model's input.

    The context model's input holds, for the session and the wallet, the share of their
    other calls per provider and per use case (over ``calls + 1``, so one call is weak
    evidence), then the row's own use case; ``others`` holds the other calls per provider
    and in total, for the reasons.

    The stored counts include the rows trained on, so a row's own call is taken off when
    its session or wallet holds one like it. ``context[i]``, when given, holds fresher
    counts of the other calls per provider (``{"session": {p: n}, "wallet": {p: n}}``) and
    replaces the stored provider counts of that row.
    """
    memo, entries = norms._memo, norms._entries
    p_index, u_index = counts.provider_index, counts.use_case_index
    sessions, wallets = counts.sessions, counts.wallets
    # Flat lists: numpy converts them faster than lists of tuples.
    measures: list[float | None] = []
    codes: list[int] = []
    add_measures, add_codes = measures.extend, codes.extend
    for row in rows:
        provider, use_case, model, session, wallet = _KEYS(row)
        key = (provider, use_case, model)
        add_codes(memo.get(key) or entries(key))
        add_codes(
            (
                p_index.get(provider, -1),
                u_index.get(use_case, -1),
                sessions.get(session, -1),  # None and "" are never keys
                wallets.get(wallet, -1),
            )
        )
        add_measures(_MEASURES(row) if row.success else _NO_MEASURES)
    n, n_p = len(rows), len(counts.providers)
    fresh, has_fresh = _NO_FRESH, _NO_FRESH_FLAGS
    if context is not None:
        given_at: list[int] = []  # 2 * row + (0 for the session, 1 for the wallet)
        given_counts: list[list[float]] = []
        for i, extra in enumerate(context):
            for k, scope in enumerate(("session", "wallet")):
                given = (extra or {}).get(scope)
                if given is not None:
                    given_at.append(2 * i + k)
                    given_counts.append([float(given.get(p, 0.0)) for p in counts.providers])
        fresh, has_fresh = np.zeros((n, 2, n_p)), np.zeros((n, 2), dtype=np.bool_)
        if given_at:  # more entries than rows is an IndexError, as it always was
            fresh.reshape(2 * n, n_p)[given_at] = given_counts
            has_fresh.reshape(2 * n)[given_at] = True
    base = _raw_measures(measures, n)
    distance, X, others, provider = _kernels.featurise(
        base,
        np.array(codes, dtype=np.int64).reshape(n, 8),
        norms._median,
        norms._scale,
        _LOG_SCALED,
        _LOW_SIDE_ONLY,
        counts.session_counts,
        counts.wallet_counts,
        n_p,
        fresh,
        has_fresh.view(np.uint8),
    )
    return Features(base, distance, X, others, provider)


# Stand-ins for "no fresh context": no rows, which the kernel reads as none given.
_NO_FRESH = np.zeros((0, 2, 0))
_NO_FRESH_FLAGS = np.zeros((0, 2), dtype=np.bool_)
