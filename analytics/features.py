"""The features of anomaly scoring: how far each measure of a row is from its norm, and how
expected its provider is in its session and wallet.

Each row gives four measures (``BASE``). Heavy-tailed ones are taken as ``log1p`` so a
ratio to the norm becomes a difference. A measure is compared with the median of the rows
most like it, in robust standard deviations (1.4826 × MAD): output length and score with
the same (provider, use case), latency and credits with the same (provider, model), since
that is what they depend on. A cell with fewer than ``MIN_CELL_ROWS`` rows falls back to
the provider's norm, and an unseen provider to the norm of all rows. A missing measure
counts as normal, so the other measures still count.

Latency and credits are compared **at the row's output length**: a long answer takes
longer and costs more. In each group (cell, provider, all rows) a robust slope ``b`` of
the measure's log on ``x = log1p(output_len)`` is fitted (Theil–Sen: the median of
pairwise slopes), and the measure compared is divided by ``exp(b·(x - x̃))``, ``x̃`` the
group's median log length; the group's median and MAD are those of these residuals. The
log of the measure itself, not its ``log1p``: for a cheap model's credits of 0.05,
``log1p`` is no ratio scale. Only an answer longer than ``x̃`` is adjusted: a call also
pays for its prompt and waits for its first token, so a short answer is not expected to
cost less, and an empty one keeps its full cost. A row without a length is not adjusted;
a group whose lengths barely vary, or are counted in different units, gets no slope.

A failed call (``success`` false) has no answer to measure: its latency and length are
a refusal's (often 0), so all its measures count as missing, in the norms as in its own
evidence; failures are counted as incidents instead.

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
from dataclasses import dataclass, field
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
# The measures compared at the row's output length (column 0 of BASE): latency and credits.
BY_LENGTH = np.array([False, False, True, True])
# Slopes are held to this range: a cost that falls with length, or grows faster than
# length squared, is noise of the sample, not a price.
SLOPE_RANGE = (0.0, 1.5)
# A slope whose adjustment, over the spread of lengths, is under this share of the
# measure's own spread is noise: there is no relation to take out.
MIN_EXPLAINED = 0.1
# A group whose log lengths have a robust SD under this (10%) has no length to explain by.
MIN_LENGTH_SPREAD = 0.1
# Theil–Sen on a bounded sample: SLOPE_PAIRS random pairs of the group's rows, of which
# those at least MIN_PAIR_DX apart in log length count; too few and there is no slope.
SLOPE_PAIRS = 20_000
MIN_PAIR_DX = 0.05
MIN_PAIRS = 100
# Columns of a group's length model (``ProviderNorms.length``).
_SLOPE, _PIVOT = range(2)
_LENGTH_MODEL = 2

# attrgetter reads a dataclass and a named tuple alike, in one C call per row.
_MEASURES = attrgetter(*BASE)
_NO_MEASURES = (None,) * len(BASE)  # a failed call's
_KEYS = attrgetter("provider", "use_case", "model", "session_id", "wallet")
# Columns of the codes that featurise passes its kernel (named alike in _kernels.pyx).
_NORM, _PROVIDER, _USE_CASE, _SESSION, _WALLET = 0, 4, 5, 6, 7
# LOG_SCALED and LOW_SIDE_ONLY as the kernels take them.
_LOG_SCALED = LOG_SCALED.astype(np.uint8)
_LOW_SIDE_ONLY = LOW_SIDE_ONLY.astype(np.uint8)
_NOT_LOG_SCALED = np.zeros(len(BASE), dtype=np.uint8)  # for measures scaled already
# BY_LENGTH's columns as a slice: views, not copies, in the scoring path.
_BY_LENGTH = slice(int(np.flatnonzero(BY_LENGTH)[0]), int(np.flatnonzero(BY_LENGTH)[-1]) + 1)
assert BY_LENGTH[_BY_LENGTH].all() and BY_LENGTH.sum() == _BY_LENGTH.stop - _BY_LENGTH.start


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


def _groups(providers: list[str], cells: list[str]) -> dict[str, np.ndarray]:
    """Row indices of all rows (key ``""``), of each provider and of each cell, keys in
    order of first appearance, a row's provider before its cell."""
    import pandas as pd  # fitting only: a scoring worker never loads it

    n = len(providers)
    found = []
    for values in (providers, cells):
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))
        order = np.argsort(codes, kind="stable")  # each group's rows stay in ledger order
        counts = np.bincount(codes, minlength=len(uniques))
        members = np.split(order, np.cumsum(counts)[:-1]) if n else []
        found.append([(int(m[0]), key, m) for key, m in zip(uniques, members, strict=True)])
    # Ties on the first row go to the provider: the order a row-by-row pass would meet them.
    ordered = sorted(found[0] + found[1], key=lambda group: group[0])
    return {"": np.arange(n), **{key: m for _, key, m in ordered}}


class Norm(NamedTuple):
    """Each row's norm per measure, (n, len(BASE)) each: what :meth:`ProviderNorms.lookup` gives."""

    median: np.ndarray  # at the row's output length, for the measures compared there
    scale: np.ndarray
    level: np.ndarray  # index into LEVELS
    slope: np.ndarray  # of the measure on log length; 0 where the row was not adjusted


@dataclass
class ProviderNorms:
    """Median and robust scale of each measure per cell, per provider and over all rows.

    ``keys[j]`` names the groups of measure ``j``: ``"provider<SEP>refinement"`` for a cell,
    ``"provider"`` for a provider and ``""`` for all rows. ``length[j]`` holds, per group,
    how the measure follows output length: slope and median log length
    (``_length_model``); none, as in a model from before lengths were taken into account,
    is no slope anywhere. Treat it as immutable: lookup tables are built from it once.
    """

    providers: list[str]
    keys: list[list[str]]
    median: list[np.ndarray]
    scale: list[np.ndarray]
    length: list[np.ndarray] = field(default_factory=list)

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
        if not self.length:
            self.length = [np.zeros((len(keys), _LENGTH_MODEL)) for keys in self.keys]
        self._length = np.concatenate([*self.length, np.zeros((1, _LENGTH_MODEL))])
        # Without a slope anywhere, scoring skips the adjustment altogether.
        self._sloped = bool((self._length[:, _SLOPE] != 0).any())
        self._memo: dict[tuple, tuple[int, ...]] = {}

    @classmethod
    def fit(cls, base: np.ndarray, rows: Sequence[Row]) -> ProviderNorms:
        providers = [r.provider for r in rows]
        units = np.array([r.output_unit or "" for r in rows])
        lengths = base[:, 0]
        names: list[list[str]] = []
        medians: list[np.ndarray] = []
        scales: list[np.ndarray] = []
        models: list[np.ndarray] = []
        by_refinement = {
            attribute: _groups(providers, _cell_keys(rows, REFINED_BY.index(attribute)))
            for attribute in dict.fromkeys(REFINED_BY)
        }
        for j in range(len(BASE)):
            groups = by_refinement[REFINED_BY[j]]
            key_list, med, scale, model_list = [], [], [], []
            for key, members in groups.items():
                is_cell = SEP in key
                if is_cell and key.endswith(SEP):  # no use case or model: the provider's norm
                    continue
                column = base[members, j]
                have = ~np.isnan(column)
                column = column[have]
                if column.size == 0 or (is_cell and column.size < MIN_CELL_ROWS):
                    continue
                model = np.zeros(_LENGTH_MODEL)
                if BY_LENGTH[j]:
                    x = lengths[members][have]
                    known = ~np.isnan(x)
                    # Chars and tokens are no common scale: no slope across them.
                    if np.unique(units[members][have][known]).size == 1:
                        natural = np.expm1(column[known])
                        paid = natural > 0  # a free call has no cost to scale
                        model = _length_model(x[known][paid], np.log(natural[paid]))
                    if model[_SLOPE]:
                        column = _take_out(column, _adjustment(model, x))
                m = float(np.median(column))
                key_list.append(key)
                med.append(m)
                scale.append(max(1.4826 * float(np.median(np.abs(column - m))), MIN_SCALE[j]))
                model_list.append(model)
            names.append(key_list)
            medians.append(np.array(med, dtype=float))
            scales.append(np.array(scale, dtype=float))
            models.append(np.array(model_list, dtype=float).reshape(-1, _LENGTH_MODEL))
        return cls(sorted(set(providers)), names, medians, scales, models)

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

    def residuals(self, base: np.ndarray, entries: np.ndarray) -> np.ndarray:
        """``base`` as compared with the norms: latency and credits less what each row's
        output length explains (a copy), or ``base`` itself when no group has a slope.
        ``entries[:, :len(BASE)]`` are the rows' norm entries."""
        if not self._sloped:
            return base
        out = base.copy()
        adjustment = _adjustment(self._length[entries[:, _BY_LENGTH]], base[:, :1])
        out[:, _BY_LENGTH] = _take_out(base[:, _BY_LENGTH], adjustment)
        return out

    def lookup(self, rows: Sequence[Row]) -> Norm:
        """Each row's norm per measure, at its own output length (see :class:`Norm`)."""
        resolved = [self.resolve(r.provider, r.use_case, r.model) for r in rows]
        shape = (len(rows), len(BASE))
        entries = np.array([e for e, _ in resolved], dtype=np.int64).reshape(shape)
        levels = np.array([lv for _, lv in resolved], dtype=np.int8).reshape(shape)
        model = self._length[entries]
        x = base_matrix(rows)[:, :1]
        slope = np.where(np.isnan(x), 0.0, model[..., _SLOPE])
        median = _put_back(self._median[entries], _adjustment(model, x))
        return Norm(median, self._scale[entries], levels, slope)

    def distances(self, base: np.ndarray, rows: Sequence[Row]) -> np.ndarray:
        """Signed robust z of each measure, oriented so that larger is stranger; 0 if missing."""
        entries = [self.resolve(r.provider, r.use_case, r.model)[0] for r in rows]
        codes = np.array(entries, dtype=np.int64).reshape(len(rows), len(BASE))
        distance = np.empty((len(rows), len(BASE)))
        base = self.residuals(np.ascontiguousarray(base, np.float64), codes)  # the kernel's type
        _kernels.distances(base, codes, self._median, self._scale, _LOW_SIDE_ONLY, distance)
        return distance


def _length_model(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How log measure ``y`` follows log length ``x`` in one group (both without NaN):
    ``[slope, median x]``.

    The slope is Theil–Sen's, the median of the slopes of ``SLOPE_PAIRS`` random pairs,
    held to ``SLOPE_RANGE``. It is 0 when the lengths barely vary, when too few pairs
    differ in length, or when it explains under ``MIN_EXPLAINED`` of ``y``'s spread.
    Empty outputs take no part: they have no length to explain a cost by, and are an
    anomaly of their own.
    """
    none = np.zeros(_LENGTH_MODEL)
    answered = x > 0
    x, y = x[answered], y[answered]
    if x.size < MIN_CELL_ROWS:
        return none
    pivot = float(np.median(x))
    x_spread = 1.4826 * float(np.median(np.abs(x - pivot)))
    if x_spread < MIN_LENGTH_SPREAD:
        return none
    # A fixed seed: the same rows always give the same model.
    first, second = np.random.default_rng(0).integers(x.size, size=(2, SLOPE_PAIRS))
    dx = x[second] - x[first]
    apart = np.abs(dx) >= MIN_PAIR_DX
    if apart.sum() < MIN_PAIRS:
        return none
    slope = float(np.median((y[second] - y[first])[apart] / dx[apart]))
    slope = min(max(slope, SLOPE_RANGE[0]), SLOPE_RANGE[1])
    y_spread = 1.4826 * float(np.median(np.abs(y - np.median(y))))
    if slope * x_spread <= MIN_EXPLAINED * y_spread:
        return none
    return np.array([slope, pivot])


def _take_out(y: np.ndarray, adjustment: np.ndarray) -> np.ndarray:
    """Log-scaled measures ``y`` divided by ``exp(adjustment)``, on the log scale still."""
    return np.log1p(np.expm1(y) * np.exp(-adjustment))


def _put_back(y: np.ndarray, adjustment: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_take_out`."""
    return np.log1p(np.expm1(y) * np.exp(adjustment))


def _adjustment(model: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``slope·max(x - median x, 0)`` of length models ``model`` (..., 2) and log lengths
    ``x`` (broadcast against ``model[..., 0]``); 0 where x is missing."""
    dx = np.fmax(x - model[..., _PIVOT], 0.0)  # fmax: a missing x gives 0
    return model[..., _SLOPE] * dx


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


# Fresher counts of each row's session's and wallet's other calls per provider: a mapping
# per row ({"session": {p: n}, "wallet": {p: n}}, either may be missing), or the same as
# arrays, counts (n, 2, providers) and which were given (n, 2).
FreshCounts = Sequence[Mapping[str, Mapping[str, float]] | None] | tuple[np.ndarray, np.ndarray]


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
    context: FreshCounts | None = None,
) -> Features:
    """Every feature of every row: distances from the norms, and the context model's input.

    The context model's input holds, for the session and the wallet, the share of their
    other calls per provider and per use case (over ``calls + 1``, so one call is weak
    evidence), then the row's own use case; ``others`` holds the other calls per provider
    and in total, for the reasons.

    The stored counts include the rows trained on, so a row's own call is taken off when
    its session or wallet holds one like it. ``context`` (:data:`FreshCounts`), when given,
    holds fresher counts of each row's other calls per provider, which replace the stored
    provider counts of that row.
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
    if isinstance(context, tuple):  # as arrays already (store.provider_context)
        fresh, has_fresh = context
    elif context is not None:
        fresh, has_fresh = _fresh_arrays(context, counts.providers, n)
    base = _raw_measures(measures, n)
    code_array = np.array(codes, dtype=np.int64).reshape(n, 8)
    measured, log_scaled = base, _LOG_SCALED  # the kernel puts base on the log scale
    if norms._sloped:
        # The residuals need the log scale first; base itself stays as measured, for reasons.
        _kernels.log_scale(base, _LOG_SCALED)
        measured, log_scaled = norms.residuals(base, code_array), _NOT_LOG_SCALED
    distance, X, others, provider = _kernels.featurise(
        measured,
        code_array,
        norms._median,
        norms._scale,
        log_scaled,
        _LOW_SIDE_ONLY,
        counts.session_counts,
        counts.wallet_counts,
        n_p,
        fresh,
        has_fresh.view(np.uint8),
    )
    return Features(base, distance, X, others, provider)


def _fresh_arrays(
    context: Sequence[Mapping[str, Mapping[str, float]] | None], providers: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mappings of fresh counts as the kernel reads them: (n, 2, providers) counts
    and (n, 2) flags of which were given."""
    given_at: list[int] = []  # 2 * row + (0 for the session, 1 for the wallet)
    given_counts: list[list[float]] = []
    for i, extra in enumerate(context):
        for k, scope in enumerate(("session", "wallet")):
            given = (extra or {}).get(scope)
            if given is not None:
                given_at.append(2 * i + k)
                given_counts.append([float(given.get(p, 0.0)) for p in providers])
    fresh, has_fresh = np.zeros((n, 2, len(providers))), np.zeros((n, 2), dtype=np.bool_)
    if given_at:  # more entries than rows is an IndexError, as it always was
        fresh.reshape(2 * n, len(providers))[given_at] = given_counts
        has_fresh.reshape(2 * n)[given_at] = True
    return fresh, has_fresh


# Stand-ins for "no fresh context": no rows, which the kernel reads as none given.
_NO_FRESH = np.zeros((0, 2, 0))
_NO_FRESH_FLAGS = np.zeros((0, 2), dtype=np.bool_)
