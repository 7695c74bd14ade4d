"""Behaviour profiles: personas found with StandardScaler + KMeans and kept across retrains.

Each session is described by the spec's measures (total calls, average score, total
credits, provider mix) plus, when the frame has ``uc_<use case>`` columns, its use-case
mix. Calls and credits are heavy-tailed, so they enter as ``log1p``. A persona belongs to a
person more than to one sitting, so when the frame has a ``wallet`` column each session is
described by its wallet's average session (all the wallet's calls pooled): a two-call
session alone says little, its wallet's forty calls say a lot.

k is chosen in ``k_range`` by silhouette, skipping any k that leaves a cluster smaller than
``min_cluster_share`` of the sessions. Clusters keep their numbers *and labels* across
retrains: new centroids are matched to the previous ones by the Hungarian algorithm, and a
matched cluster inherits its predecessor's label. Labels are read off the centroid
("Power coder · claude"). Every wallet gets the persona its average session falls in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from thronos_analytics.core.contract import Row

SILHOUETTE_SAMPLE = 5000
# k is chosen on at most this many sessions (see _choose_kmeans).
FIT_SAMPLE = 20_000
# A matched cluster whose centroid moved further than this (in standard deviations of the
# features) is a new persona, not the old one drifting.
MAX_MATCH_DISTANCE = 3.0
# The previous k is kept while its silhouette is within this of the best k's.
K_STICKINESS = 0.05
ROLE = {
    "coding": "coder",
    "research": "researcher",
    "writing": "writer",
    "chat": "chatter",
    "quantum": "quantum user",
}


def session_features(sessions: pd.DataFrame, providers: list[str]) -> pd.DataFrame:
    """Model input from a frame with calls, score_sum, score_n, credits, mix_<provider> and
    optionally uc_<use case> (calls per use case)."""
    calls = sessions["calls"].clip(lower=1)
    avg_score = (sessions["score_sum"] / sessions["score_n"].replace(0, np.nan)).fillna(
        sessions["score_sum"].sum() / max(sessions["score_n"].sum(), 1)
    )
    features = pd.DataFrame(
        {
            "log_calls": np.log1p(sessions["calls"]),
            "avg_score": avg_score,
            "log_credits": np.log1p(sessions["credits"]),
        },
        index=sessions.index,
    )
    for provider in providers:
        features[f"mix_{provider}"] = sessions.get(f"mix_{provider}", 0.0) / calls
    for column in sorted(c for c in sessions.columns if str(c).startswith("uc_")):
        features[column] = sessions[column] / calls
    return features


def _pooled_by_wallet(sessions: pd.DataFrame) -> pd.DataFrame:
    """Each session replaced by its wallet's average session (sessions without a wallet
    keep their own measures)."""
    measures = sessions.drop(columns=["wallet"])
    wallet = sessions["wallet"]
    has = wallet.notna() & (wallet.astype(str) != "")
    totals = measures[has].groupby(wallet[has]).sum()
    count = measures[has].groupby(wallet[has]).size()
    average = totals.div(count, axis=0)
    pooled = measures.copy()
    pooled.loc[has] = average.reindex(wallet[has]).to_numpy()
    return pooled


def fit_profiles(
    sessions: pd.DataFrame,
    wallets: pd.DataFrame,
    previous: dict[str, Any] | None = None,
    k_range: tuple[int, int] = (2, 8),
    min_cluster_share: float = 0.02,
    random_state: int = 0,
) -> dict[str, Any]:
    """Cluster sessions; label them and the wallets. Returns the JSON-ready profiles."""
    providers = sorted(c.removeprefix("mix_") for c in sessions.columns if c.startswith("mix_"))
    described = _pooled_by_wallet(sessions) if "wallet" in sessions.columns else sessions
    X_frame = session_features(described, providers)
    scaler = StandardScaler().fit(X_frame.to_numpy())
    X = scaler.transform(X_frame.to_numpy())
    previous_k = int(previous["k"]) if previous and previous.get("k") else None
    model = _choose_kmeans(X, k_range, min_cluster_share, random_state, previous_k)
    centroids = scaler.inverse_transform(model.cluster_centers_)
    order, inherited = _match(centroids, X_frame.columns, previous, scaler.scale_)
    labels = order[model.labels_]

    clusters: list[dict[str, Any]] = []
    names: dict[int, str] = {}
    for old, cluster in enumerate(order):
        centroid = dict(zip(X_frame.columns, centroids[old].round(4).tolist(), strict=True))
        label, description = _persona(centroid, providers, X_frame)
        label = inherited.get(int(cluster), label)
        if label in names.values():
            label = f"{label} ({int(cluster)})"
        names[int(cluster)] = label
        clusters.append(
            {
                "cluster": int(cluster),
                "label": label,
                "description": description,
                "size": int((labels == cluster).sum()),
                "centroid": centroid,
            }
        )
    clusters.sort(key=lambda c: c["cluster"])

    wallet_frame = wallets_as_sessions(wallets.drop(columns=["wallet"], errors="ignore"))
    wallet_features = session_features(wallet_frame, providers).reindex(
        columns=X_frame.columns, fill_value=0.0
    )
    wallet_labels = order[model.predict(scaler.transform(wallet_features.to_numpy()))]
    return {
        "k": int(model.n_clusters),
        "features": list(X_frame.columns),
        "clusters": clusters,
        "sessions": {
            str(sid): {"label": names[int(c)], "cluster": int(c)}
            for sid, c in zip(sessions.index, labels, strict=True)
        },
        "wallets": {
            str(w): {"label": names[int(c)], "cluster": int(c), "sessions": int(n)}
            for w, c, n in zip(wallets.index, wallet_labels, wallets["sessions"], strict=True)
        },
    }


def wallets_as_sessions(wallets: pd.DataFrame) -> pd.DataFrame:
    """A wallet's average session, so wallets are placed in the sessions' feature space."""
    per_session = wallets.drop(columns=["sessions"]).div(wallets["sessions"].clip(lower=1), axis=0)
    return per_session


def _choose_kmeans(
    X: np.ndarray,
    k_range: tuple[int, int],
    min_share: float,
    random_state: int,
    previous_k: int | None = None,
) -> KMeans:
    """The k with the best silhouette; the previous k while it is nearly as good, so the
    personas do not split and merge from one retrain to the next over noise.

    Past ``FIT_SAMPLE`` sessions, k is chosen on a sample and the chosen model is refit on
    every session from the sample's centroids: the retrain at a million rows (~100k
    sessions) takes a fifth of the time, and the centroids are those of all sessions.
    """
    n = len(X)
    rng = np.random.default_rng(random_state)
    fit_on = X[rng.choice(n, FIT_SAMPLE, replace=False)] if n > FIT_SAMPLE else X
    sample = rng.choice(len(fit_on), min(len(fit_on), SILHOUETTE_SAMPLE), replace=False)
    fits: dict[int, tuple[float, KMeans]] = {}
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        model = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit(fit_on)
        if np.bincount(model.labels_, minlength=k).min() < min_share * len(fit_on):
            continue
        fits[k] = (float(silhouette_score(fit_on[sample], model.labels_[sample])), model)
    if not fits:
        # Too few sessions, or every split leaves a sliver: one persona for everybody.
        return KMeans(n_clusters=1, n_init=1, random_state=random_state).fit(X)
    best = max(fits, key=lambda k: fits[k][0])
    if previous_k in fits and fits[previous_k][0] >= fits[best][0] - K_STICKINESS:
        best = previous_k
    chosen = fits[best][1]
    if fit_on is X:
        return chosen
    return KMeans(n_clusters=best, init=chosen.cluster_centers_, n_init=1).fit(X)


def _match(
    centroids: np.ndarray,
    columns: pd.Index,
    previous: dict[str, Any] | None,
    scale: np.ndarray,
) -> tuple[np.ndarray, dict[int, str]]:
    """New cluster i gets number order[i]: its matched previous cluster, else a fresh one.

    Also returns the labels the matched clusters inherit, so a persona keeps its name.
    """
    k = len(centroids)
    if not previous or not previous.get("clusters"):
        return np.arange(k), {}
    old_clusters = previous["clusters"]
    old_ids = [int(c["cluster"]) for c in old_clusters]
    old = np.array([[c["centroid"].get(col, 0.0) for col in columns] for c in old_clusters])
    # Compare on the features' own scale, the one the clustering used.
    spread = np.maximum(scale, 1e-3)
    cost = np.linalg.norm((centroids[:, None, :] - old[None, :, :]) / spread, axis=2)
    cost /= np.sqrt(len(columns))
    rows, cols = linear_sum_assignment(cost)
    order = np.full(k, -1)
    inherited: dict[int, str] = {}
    for i, j in zip(rows, cols, strict=True):
        if cost[i, j] <= MAX_MATCH_DISTANCE:
            order[i] = old_ids[j]
            inherited[old_ids[j]] = str(old_clusters[j]["label"])
    fresh = iter(range(max(old_ids) + 1, max(old_ids) + 1 + k))
    for i in np.flatnonzero(order < 0):
        order[i] = next(fresh)
    return order, inherited


def _persona(
    centroid: dict[str, float], providers: list[str], features: pd.DataFrame
) -> tuple[str, str]:
    """A short label and a one-line description, both read off the centroid."""
    calls = float(np.expm1(centroid["log_calls"]))
    credits = float(np.expm1(centroid["log_credits"]))
    calls_q = features["log_calls"].quantile([1 / 3, 2 / 3]).to_numpy()
    credits_q = features["log_credits"].quantile([1 / 3, 2 / 3]).to_numpy()
    tier = int(np.searchsorted(calls_q, centroid["log_calls"]))
    activity = ("Casual", "Regular", "Power")[tier]
    amount = ("few", "some", "many")[tier]
    spend = ("low", "medium", "high")[int(np.searchsorted(credits_q, centroid["log_credits"]))]
    mix = {p: centroid.get(f"mix_{p}", 0.0) for p in providers}
    top = max(mix, key=lambda p: mix[p]) if mix else "no provider"
    share = mix.get(top, 0.0)
    uses = {c.removeprefix("uc_"): v for c, v in centroid.items() if c.startswith("uc_")}
    task = max(uses, key=lambda u: uses[u]) if uses else None
    role = ROLE.get(task, f"{task} user") if task else "user"
    provider = f"mostly {top} ({share:.0%})" if share >= 0.5 else f"led by {top} ({share:.0%})"
    task_note = f", {task} {uses[task]:.0%}" if task else ""
    description = (
        f"{activity} {role}: {amount} calls ({calls:.0f} a session), {spend} credits "
        f"({credits:.3g}), score {centroid['avg_score']:.2f}{task_note}, {provider}"
    )
    return f"{activity} {role} · {top}", description


def aggregates_from_rows(
    rows: Sequence[Row], use_cases: bool = True, wallet: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The session and wallet frames the workers read from Redis, computed from rows.

    Columns: calls, score_sum, score_n, credits, mix_<provider> (calls per provider), with
    ``use_cases`` uc_<use case> (calls per use case), and with ``wallet`` the session's
    wallet; wallets also get ``sessions``. Used by tests and benchmarks.
    """
    frame = pd.DataFrame(
        {
            "session": [r.session_id for r in rows],
            "wallet": [r.wallet for r in rows],
            "provider": [r.provider for r in rows],
            "score": [r.score for r in rows],
            "credits": [r.credits_used for r in rows],
            "use_case": [r.use_case for r in rows],
        }
    )
    out = []
    for scope in ("session", "wallet"):
        part = frame[frame[scope].notna()]
        grouped = part.groupby(scope)
        agg = pd.DataFrame(
            {
                "calls": grouped.size().astype(float),
                "score_sum": grouped["score"].sum(),
                "score_n": grouped["score"].count().astype(float),
                "credits": grouped["credits"].sum(),
            }
        )
        mix = part.groupby([scope, "provider"]).size().unstack(fill_value=0).add_prefix("mix_")
        agg = agg.join(mix.astype(float)).fillna(0.0)
        if use_cases:
            uc = part.dropna(subset=["use_case"]).groupby([scope, "use_case"]).size()
            agg = agg.join(uc.unstack(fill_value=0).add_prefix("uc_").astype(float)).fillna(0.0)
        agg.index = agg.index.astype(str)
        out.append(agg)
    sessions, wallets = out
    first_wallet = frame.dropna(subset=["session"]).groupby("session")["wallet"].first()
    if wallet:
        sessions["wallet"] = first_wallet.reindex(sessions.index)
    wallets["sessions"] = (
        (frame.dropna(subset=["session", "wallet"]).groupby("wallet")["session"].nunique())
        .reindex(wallets.index)
        .fillna(0)
        .astype(float)
    )
    return sessions, wallets
