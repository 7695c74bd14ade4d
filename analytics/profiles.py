"""Behaviour profiles: sessions clustered into personas with StandardScaler + KMeans.

Each session is described by the spec's measures: total calls, average score, total
credits and provider mix (share of calls per provider). Calls and credits are heavy-tailed,
so they enter as ``log1p``. k is chosen in ``k_range`` by silhouette, skipping any k that
leaves a cluster smaller than ``min_cluster_share`` of the sessions. Clusters keep their
numbers across retrains: new centroids are matched to the previous ones by the Hungarian
algorithm. A wallet is placed in the persona its average session falls in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

SILHOUETTE_SAMPLE = 5000


def session_features(sessions: pd.DataFrame, providers: list[str]) -> pd.DataFrame:
    """Model input from a frame with calls, score_sum, score_n, credits and mix_<provider>."""
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
    return features


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
    X_frame = session_features(sessions, providers)
    scaler = StandardScaler().fit(X_frame.to_numpy())
    X = scaler.transform(X_frame.to_numpy())
    model = _choose_kmeans(X, k_range, min_cluster_share, random_state)
    centroids = scaler.inverse_transform(model.cluster_centers_)
    order = _match(centroids, X_frame.columns, previous)
    labels = order[model.labels_]

    clusters: list[dict[str, Any]] = []
    names: dict[int, str] = {}
    for old, cluster in enumerate(order):
        centroid = dict(zip(X_frame.columns, centroids[old].round(4).tolist(), strict=True))
        label, description = _persona(centroid, providers, X_frame)
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

    wallet_features = session_features(wallets_as_sessions(wallets), providers)
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
            str(w): {
                "label": names[int(c)],
                "cluster": int(c),
                "sessions": int(wallets.loc[w, "sessions"]),
            }
            for w, c in zip(wallets.index, wallet_labels, strict=True)
        },
    }


def wallets_as_sessions(wallets: pd.DataFrame) -> pd.DataFrame:
    """A wallet's average session, so wallets are placed in the sessions' feature space."""
    per_session = wallets.drop(columns=["sessions"]).div(wallets["sessions"].clip(lower=1), axis=0)
    return per_session


def _choose_kmeans(
    X: np.ndarray, k_range: tuple[int, int], min_share: float, random_state: int
) -> KMeans:
    n = len(X)
    rng = np.random.default_rng(random_state)
    sample = rng.choice(n, min(n, SILHOUETTE_SAMPLE), replace=False)
    best: tuple[float, KMeans] | None = None
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        model = KMeans(n_clusters=k, n_init=4, random_state=random_state).fit(X)
        if np.bincount(model.labels_, minlength=k).min() < min_share * n:
            continue
        quality = silhouette_score(X[sample], model.labels_[sample])
        if best is None or quality > best[0]:
            best = (quality, model)
    if best is None:
        # Too few sessions, or every split leaves a sliver: one persona for everybody.
        return KMeans(n_clusters=1, n_init=1, random_state=random_state).fit(X)
    return best[1]


def _match(centroids: np.ndarray, columns: pd.Index, previous: dict[str, Any] | None) -> np.ndarray:
    """New cluster i gets number order[i]: its nearest previous cluster, else a fresh one."""
    k = len(centroids)
    if not previous or not previous.get("clusters"):
        return np.arange(k)
    old_ids = [c["cluster"] for c in previous["clusters"]]
    old = np.array([[c["centroid"].get(col, 0.0) for col in columns] for c in previous["clusters"]])
    # Compare on a common scale: the spread of the new centroids, floored.
    spread = np.maximum(np.vstack([centroids, old]).std(axis=0), 1e-3)
    cost = np.linalg.norm((centroids[:, None, :] - old[None, :, :]) / spread, axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = np.full(k, -1)
    order[rows] = np.asarray(old_ids)[cols]
    fresh = iter(range(max(old_ids) + 1, max(old_ids) + 1 + k))
    for i in np.flatnonzero(order < 0):
        order[i] = next(fresh)
    return order


def _persona(
    centroid: dict[str, float], providers: list[str], features: pd.DataFrame
) -> tuple[str, str]:
    """A short label and a one-line description, both read off the centroid."""
    calls = float(np.expm1(centroid["log_calls"]))
    credits = float(np.expm1(centroid["log_credits"]))
    quantiles = features["log_calls"].quantile([1 / 3, 2 / 3]).to_numpy()
    activity = (
        "Power user"
        if centroid["log_calls"] > quantiles[1]
        else "Casual"
        if centroid["log_calls"] < quantiles[0]
        else "Regular"
    )
    mix = {p: centroid.get(f"mix_{p}", 0.0) for p in providers}
    top = max(mix, key=lambda p: mix[p]) if mix else "no provider"
    share = mix.get(top, 0.0)
    provider = (
        f"mostly {top} ({share:.0%})" if share >= 0.5 else f"mixed, led by {top} ({share:.0%})"
    )
    description = (
        f"{activity}: {calls:.0f} calls, {credits:.3g} credits, "
        f"score {centroid['avg_score']:.2f} per session, {provider}"
    )
    return f"{activity} · {top}", description
