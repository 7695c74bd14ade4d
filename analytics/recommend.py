"""Provider recommendation: rank providers by the score they earned for a use case.

The spec's model, a classifier ``use_case -> provider``, learns which provider people
*used*. It is kept as ``popularity``, a prior and a baseline. The ranking itself is by
expected score: the mean score of (use case, provider), plus, per wallet, how much better
or worse that provider does *for this wallet* than for everyone. That offset is the mean of
the wallet's residuals with the provider over all its use cases (more rows than any one
cell has), shrunk toward zero as ``n / (n + K)``: a wallet with little data gets the global
answer. K is the ratio of the residual noise to the spread of true offsets, both estimated
from the data (empirical Bayes). Latency and cost budgets filter candidates on their
median latency and mean credits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

SHRINKAGE = 20.0
# K never falls below this: a handful of calls never outweighs everyone's, however
# spread out the offsets seem.
MIN_SHRINKAGE = 5.0
MIN_CELL_ROWS = 5
# Weights are a softmax of expected score; at this temperature a 0.05 lead is e-fold.
TEMPERATURE = 0.05
SUGGESTION_MIN_GAIN = 0.03
SUGGESTION_MIN_ROWS = 10


def fit_recommender(rows: pd.DataFrame) -> dict[str, Any]:
    """The recommender table from a frame of use_case, provider, wallet, score,
    latency_ms and credits_used. JSON-ready; :func:`rank` reads it."""
    rows = rows[rows["use_case"].notna()]
    scored = rows[rows["score"].notna()]
    cells = scored.groupby(["use_case", "provider"]).agg(
        score=("score", "mean"), n=("score", "size")
    )
    costs = rows.groupby(["use_case", "provider"]).agg(
        latency_ms=("latency_ms", "median"), credits=("credits_used", "mean")
    )
    cells = cells.join(costs, how="left")
    popularity = _popularity(rows)
    table: dict[str, Any] = {}
    for (use_case, provider), cell in cells.iterrows():
        if cell["n"] < MIN_CELL_ROWS:
            continue
        table.setdefault(use_case, {})[provider] = {
            "score": round(float(cell["score"]), 4),
            "n": int(cell["n"]),
            "latency_ms": _round(cell["latency_ms"]),
            "credits": _round(cell["credits"]),
            "popularity": round(popularity.get(use_case, {}).get(provider, 0.0), 4),
        }
    wallets: dict[str, Any] = {}
    per_wallet = scored.dropna(subset=["wallet"]).groupby(["wallet", "use_case", "provider"])
    means = per_wallet["score"].agg(["mean", "size"])
    # zip over columns, not iterrows: tens of thousands of groups at 200k rows.
    for (wallet, use_case, provider), mean, size in zip(
        means.index, means["mean"], means["size"], strict=True
    ):
        if provider in table.get(use_case, {}):
            wallets.setdefault(wallet, {}).setdefault(use_case, {})[provider] = {
                "score": round(float(mean), 4),
                "n": int(size),
            }
    offsets, shrinkage = _wallet_offsets(scored, cells["score"])
    return {"shrinkage": shrinkage, "use_cases": table, "wallets": wallets, "offsets": offsets}


def _wallet_offsets(scored: pd.DataFrame, cell_score: pd.Series) -> tuple[dict[str, Any], float]:
    """Per (wallet, provider): mean residual against the cell means, its n, and K."""
    scored = scored.dropna(subset=["wallet"])
    if scored.empty:
        return {}, SHRINKAGE
    expected = cell_score.reindex(pd.MultiIndex.from_frame(scored[["use_case", "provider"]]))
    residual = scored["score"].to_numpy() - expected.to_numpy()
    frame = pd.DataFrame(
        {
            "wallet": scored["wallet"].to_numpy(),
            "provider": scored["provider"].to_numpy(),
            "residual": residual,
        }
    )
    groups = frame.groupby(["wallet", "provider"])["residual"].agg(["mean", "size"])
    noise = float(np.nanvar(residual))
    # Spread of true offsets = spread of the means minus what their noise alone explains.
    true_var = float(np.nanvar(groups["mean"]) - np.mean(noise / groups["size"]))
    shrinkage = float(np.clip(noise / true_var, MIN_SHRINKAGE, 1000.0)) if true_var > 0 else 1000.0
    offsets: dict[str, Any] = {}
    for (wallet, provider), mean, size in zip(
        groups.index, groups["mean"], groups["size"], strict=True
    ):
        offsets.setdefault(wallet, {})[provider] = {"offset": round(float(mean), 4), "n": int(size)}
    return offsets, round(shrinkage, 2)


def rank(
    model: dict[str, Any],
    use_case: str,
    wallet: str | None = None,
    max_latency_ms: float | None = None,
    max_credits: float | None = None,
    top: int = 3,
) -> list[dict[str, Any]]:
    """Top providers for a use case, best first, each with a weight and a one-line reason."""
    cells = model["use_cases"].get(use_case.strip().lower(), {})
    mine = model["wallets"].get(wallet, {}).get(use_case, {}) if wallet else {}
    k = model.get("shrinkage", SHRINKAGE)
    candidates = []
    for provider, cell in cells.items():
        if max_latency_ms is not None and (cell["latency_ms"] or 0) > max_latency_ms:
            continue
        if max_credits is not None and (cell["credits"] or 0) > max_credits:
            continue
        own = mine.get(provider, {"score": 0.0, "n": 0})
        offset = model.get("offsets", {}).get(wallet, {}).get(provider) if wallet else None
        expected = cell["score"]
        if offset:
            expected += offset["n"] * offset["offset"] / (offset["n"] + k)
        candidates.append((expected, provider, cell, own))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    if not candidates:
        return []
    scores = np.array([c[0] for c in candidates])
    weights = np.exp((scores - scores.max()) / TEMPERATURE)
    weights /= weights.sum()
    ranked = []
    for (expected, provider, cell, own), weight in zip(candidates, weights, strict=True):
        mine_note = f", {own['n']} of yours" if own["n"] else ""
        ranked.append(
            {
                "provider": provider,
                "weight": round(float(weight), 4),
                "expected_score": round(float(expected), 4),
                "n": cell["n"],
                "latency_ms": cell["latency_ms"],
                "credits": cell["credits"],
                "popularity": cell["popularity"],
                "reason": (
                    f"expected score {expected:.2f} over {cell['n']} calls{mine_note}, "
                    f"median latency {_ms(cell['latency_ms'])}, {cell['credits']} credits"
                ),
            }
        )
    return ranked[:top]


def suggestions(model: dict[str, Any]) -> dict[str, list[str]]:
    """Per wallet: where another provider currently scores better than the one it uses most."""
    out: dict[str, list[str]] = {}
    for wallet, use_cases in model["wallets"].items():
        for use_case, cells in sorted(use_cases.items()):
            usual = max(cells, key=lambda p: (cells[p]["n"], p))
            best = rank(model, use_case, wallet, top=1)
            if not best or best[0]["provider"] == usual:
                continue
            better = best[0]
            usual_score = cells[usual]["score"]
            n_better = cells.get(better["provider"], {}).get("n", 0)
            if better["expected_score"] - usual_score < SUGGESTION_MIN_GAIN:
                continue
            if cells[usual]["n"] < SUGGESTION_MIN_ROWS:
                continue
            evidence = f"{n_better} of your calls" if n_better else f"{better['n']} calls by all"
            out.setdefault(wallet, []).append(
                f"For {use_case} tasks, {better['provider']} currently has higher score for you "
                f"({better['expected_score']:.2f} vs {usual_score:.2f} with {usual}, {evidence})"
            )
    return out


def _popularity(rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The spec's classifier: one-hot use case -> provider, read as P(provider | use case)."""
    if rows["provider"].nunique() < 2:
        return {uc: {p: 1.0 for p in rows["provider"].unique()} for uc in rows["use_case"].unique()}
    X = pd.get_dummies(rows["use_case"]).astype(float)
    clf = LogisticRegression(max_iter=500).fit(X.to_numpy(), rows["provider"].to_numpy())
    probs = clf.predict_proba(np.eye(X.shape[1]))
    return {
        use_case: dict(zip(clf.classes_.tolist(), probs[i].tolist(), strict=True))
        for i, use_case in enumerate(X.columns)
    }


def _round(value: Any) -> float | None:
    return None if pd.isna(value) else round(float(value), 2)


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f} ms"
