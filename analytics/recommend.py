"""Provider recommendation: which provider is most probably the best for a use case, now.

Every (use case, provider) cell is a posterior over its *current* mean score, and every
(wallet, use case, provider) cell one over how far this wallet's scores with that provider
sit from everyone's. A ranking is read off those posteriors.

**Recent calls count more.** Each scored call is weighted ``0.5 ** (age / half_life)``,
where ``age`` is the number of later calls *of the same cell* (``HALF_LIFE`` = 50 calls,
the ``half_life`` parameter of :func:`fit_recommender`). The half-life is in calls rather
than in time because what a posterior can tell is a matter of how many calls it has seen:
one cell takes a thousand calls a day and another ten a week, and a half-life of days would
let the busy cell ignore 150 bad calls (an hour of them) and make the quiet one forget
everything. In calls, a drop counts after the same number of bad calls everywhere (the
quality check, ``analytics/quality.py``, also accumulates evidence per call), and ledger
clocks, which may be made up or replayed, do not matter, only their order. The cost: a cell nobody
calls keeps what it knew when it was last called, and the training window
(``THRONOS_WINDOW_ROWS``) is what eventually drops it. With a half-life of 50 calls, 150
calls after a change the calls before it keep 1/8 of the weight, so a drop of 0.25 over the
last 150 calls shows as 0.22 and ranks a provider that led by 0.2 below the next one; a
cell never counts more than ~72 effective calls (``n_eff``, the sum of the weights), which
on a stable cell costs precision (p_best is then conservative) but keeps the ranking able
to follow a change. ``benchmarks/recommend_scenarios.py`` compares half-lives.

**The posterior** is Normal, with estimated noise. A cell's decayed mean ``m`` over
``n_eff`` effective calls, with noise ``s²`` (the decayed variance, pooled with the
window's as if from ``NOISE_PRIOR_CALLS`` more calls, so six identical scores do not claim
no noise), updates a prior N(μ, τ²): μ is the use case's mean over its providers and τ the
spread of true provider means around it, estimated from the data (empirical Bayes). Scores
are 0..1 but not Bernoulli (a score of 0.8 is not 80% of one success), so a Beta would get
their noise wrong; for 0/1 scores the Normal's variance is the Bernoulli one. A wallet's
offset with a provider in a use case is a two-level Normal: its residuals (score minus the
cell's mean around that time: a smoother over the cell's calls, so calls made before a drop
are compared with scores before the drop) are shrunk toward the wallet's offset with that
provider over all its use cases, which is shrunk toward zero. The two spreads (across
wallets, and across a wallet's use cases) are estimated from the data, each as a shrinkage
``K`` = noise / spread, kept within ``MIN_SHRINKAGE``..``MAX_SHRINKAGE`` calls: a wallet
that does worse with claude on research only gets that advice on research only, once it
has a few dozen calls there.

**The ranking.** ``p_best`` is the probability that a provider is the best for that use
case (and wallet), by Thompson sampling: ``DRAWS`` draws from every candidate's posterior,
with a fixed seed, so the same model always gives the same numbers. ``expected_score`` is
the posterior mean and ``interval`` its 90% credible interval. A provider with fewer than
``MIN_EFFECTIVE_CALLS`` effective calls is ``explore``: listed, never ranked ahead of a
known one. One with an active quality warning in the use case (from the quality model's
``warnings``) carries it in ``warning`` and is listed after those without one. ``p_best``
is shared among the providers of the first tier listed (known and unwarned, if any), and
is 0 for the others, which are there for information; ``weight``, the old softmax weight's
name, is the same number, kept for one release. Budgets apply to the p90 latency
(one call in ten may be slower) and the mean credits of recent calls; when nothing fits,
:func:`explain_empty` says why and names the closest provider.

The spec's model, a classifier ``use_case -> provider``, learns which provider people
*used*. It is kept as ``popularity``, a baseline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter
from scipy.special import ndtr
from scipy.stats import norm
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from thronos_analytics.analytics import _kernels

# Half-life of a call's weight, in later calls of the same cell (see the module docstring).
HALF_LIFE = 50.0
# A cell with fewer effective calls is "explore": too few to tell, never ranked first.
MIN_EFFECTIVE_CALLS = 20.0
# A cell's noise is its own decayed variance pooled with the window's, worth this many calls.
NOISE_PRIOR_CALLS = 10.0
# The prior spread of provider means in a use case: estimated, within these bounds.
DEFAULT_PRIOR_SD = 0.1
MIN_PRIOR_SD = 0.02
# Wallet shrinkage K (noise / spread of true offsets, in calls), estimated, within these.
MIN_SHRINKAGE = 5.0
MAX_SHRINKAGE = 100.0
# Thompson sampling: draws per ranking, and the fixed seed that makes them deterministic.
DRAWS = 2000
SEED = 20240506
CREDIBLE = 0.9
_Z = float(norm.ppf(0.5 + CREDIBLE / 2))
LATENCY_QUANTILE = 0.9
SUGGESTION_MIN_GAIN = 0.03
SUGGESTION_MIN_ROWS = 10
SUGGESTION_MIN_CONFIDENCE = 0.9


class Recommender(BaseEstimator):
    """The providers most probably best for each use case (and wallet), as posteriors.

    ``fit(X)`` takes a frame of ts, use_case, provider, wallet, score, latency_ms and
    credits_used (oldest first if it has no ``ts``); ``half_life`` is as in the module
    docstring. Learned: ``table_``, the JSON-ready table :func:`rank` reads (see
    :meth:`fit`). ``predict`` gives each row's recommended provider.

    >>> import pandas as pd
    >>> rows = pd.DataFrame({"use_case": ["coding"] * 60, "wallet": ["w"] * 60,
    ...                      "provider": ["claude", "local"] * 30,
    ...                      "score": [0.9, 0.5] * 30})
    >>> model = Recommender().fit(rows)
    >>> model.predict(pd.DataFrame({"use_case": ["coding", "chat"]})).tolist()
    ['claude', None]
    """

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        self.half_life = half_life

    def fit(self, X: pd.DataFrame, y: None = None) -> Recommender:
        """Learn ``table_`` from a frame of rows; ``y`` is ignored. The table:

        ``use_cases[u][p]``: ``score`` and ``n``, the plain mean and count of scored calls in
        the window; ``expected_score`` and ``sd``, the posterior; ``recent_score`` and
        ``n_eff``, the decayed mean and effective calls; ``latency_ms`` and ``latency_p90_ms``,
        ``credits`` (decayed median, p90 and mean); ``popularity``. ``wallets[w][u][p]``: the
        wallet's ``score``, ``n``, and ``offset`` / ``offset_sd``, the posterior of its offset
        from the cell; ``offsets[w][p]``: its offset with the provider over all use cases.
        """
        rows, half_life = X, self.half_life
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, not {half_life!r}")
        decay = 0.5 ** (1.0 / half_life)
        rows = rows[rows["use_case"].notna()]
        if "ts" in rows.columns:
            rows = rows.sort_values("ts", kind="stable")
        frame = pd.DataFrame(
            {
                "use_case": rows["use_case"].astype(str).to_numpy(),
                "provider": rows["provider"].astype(str).to_numpy(),
                "wallet": rows["wallet"].to_numpy() if "wallet" in rows else None,
                "score": pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype=float),
                "latency_ms": _numeric(rows, "latency_ms"),
                "credits": _numeric(rows, "credits_used"),
            }
        )
        scored = frame[np.isfinite(frame["score"])].reset_index(drop=True)
        cells = _cells(scored, decay)
        costs = _costs(frame, decay)
        popularity = _popularity(rows) if len(rows) else {}
        table: dict[str, Any] = {}
        for (use_case, provider), cell in cells.iterrows():
            cost = costs.get((use_case, provider), {})
            table.setdefault(use_case, {})[provider] = {
                "score": round(float(cell["score"]), 4),
                "n": int(cell["n"]),
                "expected_score": round(float(cell["post_mean"]), 4),
                "sd": round(float(cell["post_sd"]), 5),
                "recent_score": round(float(cell["m"]), 4),
                "n_eff": round(float(cell["n_eff"]), 1),
                "latency_ms": cost.get("latency_ms"),
                "latency_p90_ms": cost.get("latency_p90_ms"),
                "credits": cost.get("credits"),
                "popularity": round(popularity.get(use_case, {}).get(provider, 0.0), 4),
            }
        wallets, offsets, fit = _wallets(scored, decay)
        self.table_: dict[str, Any] = {
            "method": "decayed-normal-thompson",
            "half_life": half_life,
            "half_life_unit": "calls of the cell",
            "min_effective_calls": MIN_EFFECTIVE_CALLS,
            "prior_sd": round(float(cells.attrs.get("prior_sd", DEFAULT_PRIOR_SD)), 4),
            "shrinkage": fit["shrinkage"],
            "shrinkage_use_case": fit["shrinkage_use_case"],
            "wallet_noise_sd": fit["noise_sd"],
            "use_cases": table,
            "wallets": wallets,
            "offsets": offsets,
        }
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The provider ranked first for each row's use case (and wallet, if the frame has
        one), or None where the use case was not seen."""
        wallets = X["wallet"] if "wallet" in X.columns else [None] * len(X)
        best = []
        for use_case, wallet in zip(X["use_case"], wallets, strict=True):
            known = use_case in self.table_["use_cases"]
            ranked = rank(self.table_, use_case, wallet, top=1) if known else []
            best.append(ranked[0]["provider"] if ranked else None)
        return np.array(best, dtype=object)


def fit_recommender(rows: pd.DataFrame, half_life: float = HALF_LIFE) -> dict[str, Any]:
    """The recommender table (:class:`Recommender`'s ``table_``) from a frame of rows."""
    return Recommender(half_life).fit(rows).table_


def _numeric(rows: pd.DataFrame, column: str) -> np.ndarray:
    if column not in rows:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)


def _age_weights(frame: pd.DataFrame, keys: list[str], decay: float) -> np.ndarray:
    """``decay ** (later calls of the same group)`` for each row of a time-ordered frame."""
    if frame.empty:
        return np.zeros(0)
    grouped = frame.groupby(keys, sort=False)
    later = grouped.cumcount(ascending=False).to_numpy()
    return np.power(decay, later)


def _cells(scored: pd.DataFrame, decay: float) -> pd.DataFrame:
    """Per (use case, provider): plain and decayed statistics, and the Normal posterior."""
    columns = ["score", "n", "n_eff", "m", "post_mean", "post_sd"]
    if scored.empty:
        return pd.DataFrame(columns=columns)
    w = _age_weights(scored, ["use_case", "provider"], decay)
    y = scored["score"].to_numpy()
    parts = pd.DataFrame(
        {
            "use_case": scored["use_case"],
            "provider": scored["provider"],
            "y": y,
            "w": w,
            "wy": w * y,
            "wyy": w * y * y,
        }
    )
    sums = parts.groupby(["use_case", "provider"]).agg(
        score=("y", "mean"),
        n=("y", "size"),
        n_eff=("w", "sum"),
        wy=("wy", "sum"),
        wyy=("wyy", "sum"),
    )
    n_eff = sums["n_eff"].to_numpy()
    m = sums["wy"].to_numpy() / n_eff
    s2 = np.clip(sums["wyy"].to_numpy() / n_eff - m * m, 0.0, None)
    pooled = max(float(np.sum(n_eff * s2) / np.sum(n_eff)), 1e-4)
    noise = (n_eff * s2 + NOISE_PRIOR_CALLS * pooled) / (n_eff + NOISE_PRIOR_CALLS)
    use_cases = sums.index.get_level_values("use_case").to_numpy()
    # The prior: each use case's mean over its providers (by effective calls), and the
    # spread of true provider means around it, from the use cases with 2+ known providers.
    mu = np.empty(len(m))
    squares, dof, sampling = 0.0, 0, []
    for use_case in np.unique(use_cases):
        mine = use_cases == use_case
        mu[mine] = np.sum(n_eff[mine] * m[mine]) / np.sum(n_eff[mine])
        known = mine & (n_eff >= MIN_EFFECTIVE_CALLS)
        if known.sum() >= 2:
            centre = np.sum(n_eff[known] * m[known]) / np.sum(n_eff[known])
            squares += float(np.sum((m[known] - centre) ** 2))
            dof += int(known.sum()) - 1
            sampling += list(noise[known] / n_eff[known])
    tau2 = DEFAULT_PRIOR_SD**2
    if dof:
        tau2 = max(squares / dof - float(np.mean(sampling)), MIN_PRIOR_SD**2)
    precision = 1.0 / tau2 + n_eff / noise
    sums["n_eff"] = n_eff
    sums["m"] = m
    sums["post_mean"] = (mu / tau2 + n_eff * m / noise) / precision
    sums["post_sd"] = 1.0 / np.sqrt(precision)
    out = sums[columns]
    out.attrs["prior_sd"] = float(np.sqrt(tau2))
    return out


def _costs(frame: pd.DataFrame, decay: float) -> dict[tuple[str, str], dict[str, float | None]]:
    """Per (use case, provider), over all its calls, scored or not, recent ones counting
    more: median and p90 latency, mean credits."""
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    if frame.empty:
        return out
    weights = _age_weights(frame, ["use_case", "provider"], decay)
    for key, index in frame.groupby(["use_case", "provider"]).indices.items():
        w = weights[index]
        latency = frame["latency_ms"].to_numpy()[index]
        credits = frame["credits"].to_numpy()[index]
        ok = np.isfinite(latency)
        paid = np.isfinite(credits)
        out[key] = {
            "latency_ms": _round(_weighted_quantile(latency[ok], w[ok], 0.5)),
            "latency_p90_ms": _round(_weighted_quantile(latency[ok], w[ok], LATENCY_QUANTILE)),
            "credits": _round(np.sum(w[paid] * credits[paid]) / np.sum(w[paid]))
            if paid.any()
            else None,
        }
    return out


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    if len(values) == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    at = int(np.searchsorted(cumulative, q * cumulative[-1]))
    return float(values[order][min(at, len(values) - 1)])


def _trend_residuals(scored: pd.DataFrame, decay: float) -> np.ndarray:
    """Each score minus its cell's mean around that call: every other call of the cell
    weighted ``decay ** distance`` in calls, either side (NaN for a cell of one call)."""
    residual = np.full(len(scored), np.nan)
    y_all = scored["score"].to_numpy()
    for index in scored.groupby(["use_case", "provider"]).indices.values():
        y = y_all[index]
        ones = np.ones_like(y)
        forward = lfilter([1.0], [1.0, -decay], y)
        backward = lfilter([1.0], [1.0, -decay], y[::-1])[::-1]
        weight = lfilter([1.0], [1.0, -decay], ones) + lfilter([1.0], [1.0, -decay], ones)[::-1]
        others = weight - 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            trend = (forward + backward - 2.0 * y) / others
        residual[index] = np.where(others > 1e-9, y - trend, np.nan)
    return residual


def _wallets(
    scored: pd.DataFrame, decay: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Per (wallet, use case, provider) and (wallet, provider): the offset posteriors."""
    fit = {
        "shrinkage": MAX_SHRINKAGE,
        "shrinkage_use_case": MAX_SHRINKAGE,
        "noise_sd": 0.0,
    }
    keys = ["wallet", "use_case", "provider"]
    mine = scored[scored["wallet"].notna()].copy()
    if mine.empty:
        return {}, {}, fit
    mine["wallet"] = mine["wallet"].astype(str)
    mine["r"] = _trend_residuals(mine, decay)
    ok = np.isfinite(mine["r"].to_numpy())
    # A wallet's own calls decay too, counted in its own calls of the cell.
    mine["w"] = 0.0
    mine.loc[ok, "w"] = _age_weights(mine[ok], keys, decay)
    mine["wr"] = mine["w"] * mine["r"].fillna(0.0)
    cells = mine.groupby(keys).agg(
        score=("score", "mean"), n=("score", "size"), s=("w", "sum"), wr=("wr", "sum")
    )
    cells["rows"] = mine[ok].groupby(keys).size().reindex(cells.index).fillna(0).to_numpy()
    s = cells["s"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(s > 0, cells["wr"].to_numpy() / s, 0.0)
    # Noise: the spread of residuals within each wallet's cell.
    centred = (
        mine.loc[ok, "r"].to_numpy()
        - pd.Series(mean, index=cells.index)
        .reindex(pd.MultiIndex.from_frame(mine.loc[ok, keys]))
        .to_numpy()
    )
    dof = ok.sum() - (cells["rows"] > 0).sum()
    noise = float(np.sum(centred**2) / dof) if dof > 0 else float(np.var(mine.loc[ok, "r"]))
    noise = max(noise, 1e-6)
    # Spreads of true offsets, by the method of moments on cells with 2+ calls: the total
    # (mean square minus what noise explains) and the part shared by a wallet's use cases
    # with one provider (the mean product of two of its cells' means).
    big = cells["rows"].to_numpy() >= 2
    tau2_b = tau2_c = 0.0
    if big.any():
        total = float(np.mean(mean[big] ** 2) - np.mean(noise / s[big]))
        pair = pd.DataFrame(
            {
                "wallet": cells.index.get_level_values("wallet")[big],
                "provider": cells.index.get_level_values("provider")[big],
                "m": mean[big],
                "m2": mean[big] ** 2,
            }
        ).groupby(["wallet", "provider"])
        sums = pair["m"].sum()
        count = pair["m"].size()
        pairs = float((count * (count - 1) / 2).sum())
        tau2_b = float(((sums**2 - pair["m2"].sum()) / 2).sum() / pairs) if pairs else total
        tau2_c = total - tau2_b
    k_b = _shrinkage(noise, tau2_b)
    k_c = _shrinkage(noise, tau2_c)
    tau2_b, tau2_c = noise / k_b, noise / k_c
    # The two-level Normal: cell mean M_u = b + c_u + e_u, c_u ~ N(0, tau_c²), b ~ N(0, tau_b²).
    lam = s / noise
    q = 1.0 / (tau2_c + np.where(lam > 0, 1.0 / np.maximum(lam, 1e-12), np.inf))
    wp = [cells.index.get_level_values("wallet"), cells.index.get_level_values("provider")]
    p_b = 1.0 / tau2_b + pd.Series(q).groupby(wp).transform("sum").to_numpy()
    b_hat = pd.Series(q * mean).groupby(wp).transform("sum").to_numpy() / p_b
    a = lam / (1.0 / tau2_c + lam)
    offset = (1 - a) * b_hat + a * mean
    offset_var = (1 - a) ** 2 / p_b + 1.0 / (1.0 / tau2_c + lam)
    wallets: dict[str, Any] = {}
    offsets: dict[str, Any] = {}
    for (wallet, use_case, provider), score, n, o, v, b, pb in zip(
        cells.index,
        cells["score"].to_numpy(),
        cells["n"].to_numpy(),
        offset,
        offset_var,
        b_hat,
        p_b,
        strict=True,
    ):
        wallets.setdefault(wallet, {}).setdefault(use_case, {})[provider] = {
            "score": round(float(score), 4),
            "n": int(n),
            "offset": round(float(o), 4),
            "offset_sd": round(float(np.sqrt(v)), 5),
        }
        entry = offsets.setdefault(wallet, {}).setdefault(
            provider, {"offset": round(float(b), 4), "sd": round(float(pb**-0.5), 5), "n": 0}
        )
        entry["n"] += int(n)
    fit = {
        "shrinkage": round(k_b, 2),
        "shrinkage_use_case": round(k_c, 2),
        "noise_sd": round(float(np.sqrt(noise)), 4),
    }
    return wallets, offsets, fit


def _shrinkage(noise: float, tau2: float) -> float:
    if not np.isfinite(tau2) or tau2 <= 0:
        return MAX_SHRINKAGE
    return float(np.clip(noise / tau2, MIN_SHRINKAGE, MAX_SHRINKAGE))


# --- ranking ---------------------------------------------------------------------------------


def _candidates(model: dict[str, Any], use_case: str, wallet: str | None) -> list[dict[str, Any]]:
    """Every provider of the use case with its posterior for ``wallet`` (or everyone)."""
    cells = model.get("use_cases", {}).get(use_case, {})
    mine = model.get("wallets", {}).get(wallet, {}).get(use_case, {}) if wallet else {}
    theirs = model.get("offsets", {}).get(wallet, {}) if wallet else {}
    # What is known of a wallet with no calls of a provider: the spread of offsets.
    k_b = model.get("shrinkage", MAX_SHRINKAGE)
    k_c = model.get("shrinkage_use_case", MAX_SHRINKAGE)
    noise = model.get("wallet_noise_sd", 0.0) ** 2
    out = []
    for provider, cell in cells.items():
        n = cell["n"]
        mean = cell.get("expected_score", cell["score"])
        var = cell.get("sd", 0.1 / math.sqrt(max(n, 1))) ** 2
        own = mine.get(provider)
        if own and "offset" in own:
            mean += own["offset"]
            var += own["offset_sd"] ** 2
        elif wallet and provider in theirs and "sd" in theirs[provider]:
            mean += theirs[provider]["offset"]
            var += theirs[provider]["sd"] ** 2 + noise / k_c
        elif wallet and (mine or theirs):
            var += noise / k_b + noise / k_c
        out.append(
            {
                "provider": provider,
                "cell": cell,
                "mean": float(mean),
                "sd": math.sqrt(var),
                "n_wallet": own["n"] if own else 0,
                "explore": cell.get("n_eff", n)
                < model.get("min_effective_calls", MIN_EFFECTIVE_CALLS),
            }
        )
    return out


def _fits(cell: dict[str, Any], max_latency_ms: float | None, max_credits: float | None) -> bool:
    latency = cell.get("latency_p90_ms", cell.get("latency_ms"))
    if max_latency_ms is not None and latency is not None and latency > max_latency_ms:
        return False
    credits = cell.get("credits")
    return not (max_credits is not None and credits is not None and credits > max_credits)


def _warning_for(
    warnings: list[dict[str, Any]] | None, provider: str, use_case: str
) -> dict[str, Any] | None:
    """The first active warning on ``provider`` that covers ``use_case``: its own, or the
    provider's (``use_case`` None), which covers the use cases it lists in ``use_cases``,
    or all of them when it lists none."""
    for warning in warnings or ():
        if warning.get("provider") != provider or warning.get("active") is False:
            continue
        scope = warning.get("use_case")
        if scope == use_case or (
            scope is None and use_case in (warning.get("use_cases") or [use_case])
        ):
            return warning
    return None


@functools.lru_cache(maxsize=32)
def _draws(k: int) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((DRAWS, k))


def p_best(means: Sequence[float], sds: Sequence[float]) -> np.ndarray:
    """P(each is the largest), by Thompson sampling from independent Normal posteriors
    (``DRAWS`` draws, fixed seed: deterministic). A candidate more than 8 standard
    deviations behind another wins under 1 draw in 30,000 and is given 0 unsampled."""
    out = np.zeros(len(means))
    # A few candidates each time, thousands of times an export: plain floats, not arrays.
    floor = max((m - 4 * s for m, s in zip(means, sds, strict=True)), default=0.0)
    alive = [i for i, (m, s) in enumerate(zip(means, sds, strict=True)) if m + 4 * s >= floor]
    if len(alive) == 1:
        out[alive[0]] = 1.0
    elif len(alive) > 1:
        m, s = np.array([means[i] for i in alive]), np.array([sds[i] for i in alive])
        out[alive] = _kernels.thompson_wins(m, s, _draws(len(alive))) / DRAWS
    return out


def known_wallet(model: dict[str, Any], wallet: str) -> bool:
    """Whether the model has scored calls of ``wallet`` (else it gets everyone's ranking)."""
    return wallet in model.get("wallets", {}) or wallet in model.get("offsets", {})


def _ranked(
    model: dict[str, Any],
    use_case: str,
    wallet: str | None,
    max_latency_ms: float | None,
    max_credits: float | None,
    warnings: list[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The candidates within the budgets, sorted, each with its tier and ``p_best``."""
    candidates = _candidates(model, use_case, wallet)
    if max_latency_ms is not None or max_credits is not None:
        candidates = [c for c in candidates if _fits(c["cell"], max_latency_ms, max_credits)]
    if not candidates:
        return []
    for c in candidates:
        c["warning"] = _warning_for(warnings, c["provider"], use_case)
        c["tier"] = 2 if c["explore"] else 1 if c["warning"] else 0
        c["p_best"] = 0.0
    first = min(c["tier"] for c in candidates)
    pool = [c for c in candidates if c["tier"] == first]
    probabilities = p_best([c["mean"] for c in pool], [c["sd"] for c in pool])
    for c, p in zip(pool, probabilities, strict=True):
        c["p_best"] = float(p)
        c["first"] = True
    candidates.sort(key=lambda c: (c["tier"], -c["p_best"], -c["mean"], c["provider"]))
    return candidates


def rank(
    model: dict[str, Any],
    use_case: str,
    wallet: str | None = None,
    max_latency_ms: float | None = None,
    max_credits: float | None = None,
    top: int | None = 3,
    warnings: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Providers for a use case (and wallet) within the budgets, best first; ``top=None``
    lists all.

    Known providers without an active quality warning come first, by ``p_best``; then
    those with one (``warning`` holds its message); then those with too few calls to tell
    (``explore``). ``p_best`` sums to 1 over the first of these groups that has anyone and
    is 0 for the others. ``weight`` is ``p_best`` under its old name, kept for one release.
    ``warnings`` is the quality model's list (each with ``provider``, ``use_case``, None
    for all use cases, and ``message``). An empty list means nothing fits the budgets, or
    the use case is unknown: :func:`explain_empty` says which, and names the closest.
    """
    use_case = use_case.strip().lower()
    if wallet is not None and not known_wallet(model, wallet):
        wallet = None  # no calls of it in the window: everyone's ranking
    candidates = _ranked(model, use_case, wallet, max_latency_ms, max_credits, warnings)
    z = _Z
    ranked = []
    for c in candidates[:top]:
        cell = c["cell"]
        p = round(c["p_best"], 4)
        ranked.append(
            {
                "provider": c["provider"],
                "p_best": p,
                "weight": p,
                "expected_score": round(c["mean"], 4),
                "interval": [round(c["mean"] - z * c["sd"], 4), round(c["mean"] + z * c["sd"], 4)],
                "n": cell["n"],
                "n_eff": cell.get("n_eff", cell["n"]),
                "n_wallet": c["n_wallet"],
                "latency_ms": cell.get("latency_ms"),
                "latency_p90_ms": cell.get("latency_p90_ms", cell.get("latency_ms")),
                "credits": cell.get("credits"),
                "popularity": cell.get("popularity", 0.0),
                "explore": bool(c["explore"]),
                "warning": c["warning"]["message"] if c["warning"] else None,
                "reason": _reason(c, z, wallet is not None),
            }
        )
    return ranked


def _reason(c: dict[str, Any], z: float, for_wallet: bool) -> str:
    cell = c["cell"]
    costs = (
        f"p90 latency {_ms(cell.get('latency_p90_ms', cell.get('latency_ms')))}, "
        f"{_credits(cell.get('credits'))}"
    )
    if c["explore"]:
        return (
            f"only {cell['n']} scored calls ({cell.get('n_eff', cell['n']):.0f} effective): "
            f"too few to tell, listed to explore (mean so far {cell['score']:.2f}); {costs}"
        )
    mine = f", {c['n_wallet']} of them yours" if c["n_wallet"] else ""
    who = " for you" if for_wallet else ""
    text = (
        f"expected score{who} {c['mean']:.2f} (90%: {c['mean'] - z * c['sd']:.2f}-"
        f"{c['mean'] + z * c['sd']:.2f}) from {cell.get('n_eff', cell['n']):.0f} effective "
        f"of {cell['n']} calls{mine}"
    )
    if c.get("first"):
        p = c["p_best"]
        text += f"; best with probability {'over 99%' if p >= 0.995 else f'{p:.0%}'}"
    if c["warning"]:
        warning = c["warning"]["message"]
        text = f"quality warning, listed after providers without one: {warning}; {text}"
    return f"{text}; {costs}"


def explain_empty(
    model: dict[str, Any],
    use_case: str,
    wallet: str | None = None,
    max_latency_ms: float | None = None,
    max_credits: float | None = None,
) -> dict[str, Any] | None:
    """Why :func:`rank` returns nothing with these budgets, or None when it returns someone:
    ``reason``, ``closest`` (the provider that misses the budgets by the least, with its
    p90 latency, credits and expected score, and by how much it misses each) and ``text``."""
    use_case = use_case.strip().lower()
    candidates = _candidates(model, use_case, wallet)
    if any(_fits(c["cell"], max_latency_ms, max_credits) for c in candidates):
        return None
    if not candidates:
        known = ", ".join(sorted(model.get("use_cases", {}))) or "none yet"
        return {
            "use_case": use_case,
            "reason": "unknown use case",
            "closest": None,
            "text": (
                f"no provider has scored calls for use case {use_case!r} in the training "
                f"window (known: {known})"
            ),
        }
    budgets = []
    if max_latency_ms is not None:
        budgets.append(f"a p90 latency of {_ms(max_latency_ms)}")
    if max_credits is not None:
        budgets.append(f"{_credits(max_credits)} a call")

    def misses(c: dict[str, Any]) -> dict[str, float]:
        cell, out = c["cell"], {}
        latency = cell.get("latency_p90_ms", cell.get("latency_ms"))
        if max_latency_ms is not None and latency is not None and latency > max_latency_ms:
            out["latency_p90_ms"] = latency / max(max_latency_ms, 1e-9)
        credits = cell.get("credits")
        if max_credits is not None and credits is not None and credits > max_credits:
            out["credits"] = credits / max(max_credits, 1e-9)
        return out

    closest = min(candidates, key=lambda c: (max(misses(c).values()), -c["mean"], c["provider"]))
    over = misses(closest)
    cell = closest["cell"]
    latency = cell.get("latency_p90_ms", cell.get("latency_ms"))
    parts = []
    if "latency_p90_ms" in over:
        parts.append(f"p90 latency {_ms(latency)} ({over['latency_p90_ms']:.1f}× the budget)")
    if "credits" in over:
        parts.append(f"{_credits(cell.get('credits'))} ({over['credits']:.1f}× the budget)")
    return {
        "use_case": use_case,
        "reason": "no provider within the budget",
        "closest": {
            "provider": closest["provider"],
            "latency_p90_ms": latency,
            "credits": cell.get("credits"),
            "expected_score": round(closest["mean"], 4),
            "over_budget": {k: round(v, 2) for k, v in over.items()},
        },
        "text": (
            f"none of the {len(candidates)} providers for {use_case} fits within "
            f"{' and '.join(budgets)}: the closest is {closest['provider']}, "
            f"{' and '.join(parts)}, expected score {closest['mean']:.2f}"
        ),
    }


def suggestions(
    model: dict[str, Any], warnings: list[dict[str, Any]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Per wallet: where another provider is, with confidence, better for a use case than
    the one the wallet uses most there. Never a provider with too few calls to tell
    (``explore``) or an active quality warning.

    Each: ``use_case``, ``provider`` (the suggested one), ``instead_of`` (the usual one),
    ``expected_score`` and ``alternative_score`` (the wallet's posterior means with each),
    ``n_wallet`` and ``n_all`` (the wallet's and everyone's scored calls with ``provider``
    there), ``confidence`` (P(``provider`` scores better than ``instead_of`` for the
    wallet), from the two posteriors) and ``text``, the same in plain words.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for wallet, use_cases in model.get("wallets", {}).items():
        for use_case, cells in sorted(use_cases.items()):
            usual = max(cells, key=lambda p: (cells[p]["n"], p))
            if cells[usual]["n"] < SUGGESTION_MIN_ROWS:
                continue
            ranked = _ranked(model, use_case, wallet, None, None, warnings)
            if not ranked or ranked[0]["provider"] == usual or ranked[0]["tier"] != 0:
                continue
            better = ranked[0]
            current = next(c for c in ranked if c["provider"] == usual)
            gain = better["mean"] - current["mean"]
            spread = math.hypot(better["sd"], current["sd"])
            confidence = float(ndtr(gain / spread)) if spread > 0 else float(gain > 0)
            if gain < SUGGESTION_MIN_GAIN or confidence < SUGGESTION_MIN_CONFIDENCE:
                continue
            name, mine, n_all = better["provider"], better["n_wallet"], better["cell"]["n"]
            evidence = (
                f"{mine} of your calls with {name}, {n_all:,} by all"
                if mine
                else f"none of your calls with {name} yet, {n_all:,} by all"
            )
            note = f"; {usual} has a quality warning there" if current["warning"] else ""
            sure = "over 99%" if confidence >= 0.995 else f"{confidence:.0%}"
            out.setdefault(wallet, []).append(
                {
                    "use_case": use_case,
                    "provider": name,
                    "instead_of": usual,
                    "expected_score": round(better["mean"], 4),
                    "alternative_score": round(current["mean"], 4),
                    "n_wallet": mine,
                    "n_all": n_all,
                    "confidence": round(confidence, 4),
                    "text": (
                        f"For {use_case} tasks, {name} is expected to score "
                        f"{better['mean']:.2f} for you, against {current['mean']:.2f} with "
                        f"{usual}, which you use most there ({sure} sure it is better; "
                        f"{evidence}){note}"
                    ),
                }
            )
    return out


def _popularity(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The spec's classifier: one-hot use case -> provider, read as P(provider | use case)."""
    if rows["provider"].nunique() < 2:
        return {uc: {p: 1.0 for p in rows["provider"].unique()} for uc in rows["use_case"].unique()}
    # Fitted on each (use case, provider) pair once, weighted by its rows: the same loss as
    # on every row, ~100x faster on a 200k-row window.
    pairs = rows.groupby(["use_case", "provider"], observed=True).size().reset_index(name="n")
    X = pd.get_dummies(pairs["use_case"]).astype(float)
    clf = LogisticRegression(max_iter=500).fit(
        X.to_numpy(), pairs["provider"].to_numpy(), sample_weight=pairs["n"].to_numpy()
    )
    probs = clf.predict_proba(np.eye(X.shape[1]))
    return {
        use_case: dict(zip(clf.classes_.tolist(), probs[i].tolist(), strict=True))
        for i, use_case in enumerate(X.columns)
    }


def _round(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 2)


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f} ms"


def _credits(value: float | None) -> str:
    return "credits unknown" if value is None else f"{value:g} credits"
