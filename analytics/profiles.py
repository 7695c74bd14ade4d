"""Behaviour profiles: personas found with StandardScaler + KMeans, numbered across retrains.

Each session is described by the spec's measures (total calls, average score, total
credits, provider mix) plus, when the frame has ``uc_<use case>`` columns, its use-case
mix. Calls and credits are heavy-tailed, so they enter as ``log1p``. A persona belongs to a
person more than to one sitting, so when the frame has a ``wallet`` column each session is
described by its wallet's average session (all the wallet's calls pooled): a two-call
session alone says little, its wallet's forty calls say a lot.

**k** is chosen afresh at every fit: the k in ``k_range`` with the best silhouette, skipping
any k that leaves a cluster smaller than ``min_cluster_share`` of the sessions. The previous
k is kept only on a genuine tie: when the best k's gain in silhouette over it, per session
of the same sample, is within ``TIE_SE`` standard errors of zero. A real new group (one at
least ``min_cluster_share`` of the sessions, apart from the others) lifts the silhouette of
its own sessions and of the persona that absorbed it far beyond that, so it gets a persona
of its own; a k that only wins by sampling noise does not make personas split and merge
from one retrain to the next.

**Numbers and labels.** New centroids are matched to the previous model's by the
Hungarian algorithm, and a matched cluster keeps its number (``MAX_MATCH_DISTANCE``).
Its label is not kept: every fit reads each label off its own centroid ("Power coder ·
claude": calls a session against fixed cut points ``ACTIVITY_FROM``, the top use case, the
top provider), so a persona whose habits changed is named for what it does now. ``changes``
says what differs from the previous model: the numbers that appeared and vanished, and
the kept numbers whose label changed (:func:`persona_changes`). Every wallet gets the
persona its average session falls in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_samples
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.preprocessing import StandardScaler

from thronos_analytics.core.aggregates import MEASURES, SCOPES, has
from thronos_analytics.core.contract import Row

SILHOUETTE_SAMPLE = 5000
# k is chosen on at most this many sessions (see _choose_kmeans).
FIT_SAMPLE = 20_000
# A matched cluster whose centroid moved further than this (in standard deviations of the
# features) is a new persona, not the old one drifting.
MAX_MATCH_DISTANCE = 3.0
# The previous k is kept while the best k's mean silhouette gain over it, per session, is
# within this many standard errors of zero: a tie, not a better clustering.
TIE_SE = 2.0
# Calls a session (the centroid's) from which a persona is Regular, and Power. Fixed, not
# quantiles of the window's sessions: a quantile moves with who else is in the window and
# can cut through a group, renaming a persona whose habits did not change.
ACTIVITY_FROM = (6.0, 15.0)
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


class Profiles(ClusterMixin, BaseEstimator):
    """Personas: KMeans clusters of sessions, labelled from their centroids, numbered across
    retrains.

    ``fit(X)`` takes ``X = (sessions, wallets)``, the frames :func:`aggregates_from_rows`
    (or the workers, from Redis) make. Parameters: ``k_range``, ``min_cluster_share`` and
    ``random_state`` as in the module docstring; ``previous``, the profiles of the last fit
    (``profiles_``), whose k is kept on a tie and whose cluster numbers the new clusters
    take. Learned: ``providers_``, ``features_`` (the columns clustered on), ``scaler_``,
    ``kmeans_``, ``order_`` (KMeans' cluster i is persona ``order_[i]``), ``labels_`` (each
    session's persona) and ``profiles_``, the JSON-ready result.

    >>> from thronos_analytics.analytics.simulate import SimConfig, simulate
    >>> from thronos_analytics.core.contract import Row, parse_line
    >>> rows = [r for r in map(parse_line, simulate(SimConfig(rows=3000, seed=1))[0])
    ...         if isinstance(r, Row)]
    >>> model = Profiles().fit(aggregates_from_rows(rows))
    >>> model.profiles_["k"] == len(set(model.labels_))
    True
    >>> again = Profiles(previous=model.profiles_).fit(aggregates_from_rows(rows))
    >>> again.profiles_["changes"]
    {'appeared': [], 'vanished': [], 'changed': []}
    """

    def __init__(
        self,
        k_range: tuple[int, int] = (2, 8),
        min_cluster_share: float = 0.02,
        random_state: int = 0,
        previous: dict[str, Any] | None = None,
    ) -> None:
        self.k_range = k_range
        self.min_cluster_share = min_cluster_share
        self.random_state = random_state
        self.previous = previous

    def fit(self, X: tuple[pd.DataFrame, pd.DataFrame], y: None = None) -> Profiles:
        """Cluster the sessions of ``X = (sessions, wallets)``; label them and the wallets."""
        sessions, wallets = X
        previous = self.previous
        self.providers_ = sorted(
            c.removeprefix("mix_") for c in sessions.columns if c.startswith("mix_")
        )
        X_frame = session_features(self._described(sessions), self.providers_)
        self.features_ = list(X_frame.columns)
        self.scaler_ = StandardScaler().fit(X_frame.to_numpy())
        X_scaled = self.scaler_.transform(X_frame.to_numpy())
        previous_k = int(previous["k"]) if previous and previous.get("k") else None
        self.kmeans_ = self._kmeans(X_scaled, previous_k)
        centroids = self.scaler_.inverse_transform(self.kmeans_.cluster_centers_)
        self.order_, previous_labels = _match(
            centroids, X_frame.columns, previous, self.scaler_.scale_
        )
        self.labels_ = self.order_[self.kmeans_.labels_]

        clusters: list[dict[str, Any]] = []
        names: dict[int, str] = {}
        # In number order, so of two clusters that read the same, the older keeps the plain
        # label from one fit to the next.
        for i in np.argsort(self.order_):
            cluster = int(self.order_[i])
            centroid = dict(zip(X_frame.columns, centroids[i].round(4).tolist(), strict=True))
            label, description = _persona(centroid, self.providers_, X_frame)
            label = self._label(label, previous_labels.get(cluster))
            if label in names.values():
                label = f"{label} ({cluster})"
            names[cluster] = label
            clusters.append(
                {
                    "cluster": cluster,
                    "label": label,
                    "description": description,
                    "size": int((self.labels_ == cluster).sum()),
                    "centroid": centroid,
                }
            )

        wallet_labels = self.predict(wallets)
        self.profiles_ = {
            "k": int(self.kmeans_.n_clusters),
            "features": self.features_,
            "clusters": clusters,
            "changes": persona_changes(previous["clusters"] if previous else [], clusters),
            "sessions": {
                str(sid): {"label": names[int(c)], "cluster": int(c)}
                for sid, c in zip(sessions.index, self.labels_, strict=True)
            },
            "wallets": {
                str(w): {"label": names[int(c)], "cluster": int(c), "sessions": int(n)}
                for w, c, n in zip(wallets.index, wallet_labels, wallets["sessions"], strict=True)
            },
        }
        return self

    def _kmeans(self, X: np.ndarray, previous_k: int | None) -> KMeans:
        """The clustering of the scaled sessions (k chosen as in the module docstring)."""
        fit_on, candidates = _candidates(X, self.k_range, self.min_cluster_share, self.random_state)
        k = _choose_k(candidates, previous_k)
        return _refit(X, fit_on, candidates[k][1] if candidates else None, self.random_state)

    def _label(self, label: str, previous_label: str | None) -> str:
        """The label of a cluster: the one read off its centroid, whatever it was before."""
        return label

    @staticmethod
    def _described(frame: pd.DataFrame) -> pd.DataFrame:
        """The measures a frame's rows are clustered on: a wallet's average session (wallets
        have ``sessions``), or a session's wallet's (sessions with a ``wallet``)."""
        if "sessions" in frame.columns:
            return wallets_as_sessions(frame.drop(columns=["wallet"], errors="ignore"))
        return _pooled_by_wallet(frame) if "wallet" in frame.columns else frame

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The persona (cluster number) of each row of a session or wallet frame."""
        features = session_features(self._described(X), self.providers_).reindex(
            columns=self.features_, fill_value=0.0
        )
        return self.order_[self.kmeans_.predict(self.scaler_.transform(features.to_numpy()))]


def fit_profiles(
    sessions: pd.DataFrame,
    wallets: pd.DataFrame,
    previous: dict[str, Any] | None = None,
    k_range: tuple[int, int] = (2, 8),
    min_cluster_share: float = 0.02,
    random_state: int = 0,
) -> dict[str, Any]:
    """Cluster sessions; label them and the wallets. Returns the JSON-ready profiles."""
    model = Profiles(k_range, min_cluster_share, random_state, previous)
    return model.fit((sessions, wallets)).profiles_


def wallets_as_sessions(wallets: pd.DataFrame) -> pd.DataFrame:
    """A wallet's average session, so wallets are placed in the sessions' feature space."""
    per_session = wallets.drop(columns=["sessions"]).div(wallets["sessions"].clip(lower=1), axis=0)
    return per_session


Candidates = dict[int, tuple[np.ndarray, KMeans]]


def _candidates(
    X: np.ndarray, k_range: tuple[int, int], min_share: float, random_state: int
) -> tuple[np.ndarray, Candidates]:
    """Each k of ``k_range`` that leaves no sliver: its KMeans and the silhouette of each
    session of one sample (the same sessions for every k, so they compare pairwise).

    Past ``FIT_SAMPLE`` sessions, k is chosen on a sample (``fit_on``, returned) and the
    chosen model is refit on every session from its centroids (:func:`_refit`): the retrain
    at a million rows (~100k sessions) takes a fifth of the time, and the centroids are
    those of all sessions.
    """
    n = len(X)
    rng = np.random.default_rng(random_state)
    fit_on = X[rng.choice(n, FIT_SAMPLE, replace=False)] if n > FIT_SAMPLE else X
    sample = rng.choice(len(fit_on), min(len(fit_on), SILHOUETTE_SAMPLE), replace=False)
    candidates: Candidates = {}
    distances: np.ndarray | None = None  # the sample's, the same for every k: computed once
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        model = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit(fit_on)
        if np.bincount(model.labels_, minlength=k).min() < min_share * len(fit_on):
            continue
        if distances is None:
            distances = euclidean_distances(fit_on[sample])
            np.fill_diagonal(distances, 0.0)
        labels = model.labels_[sample]
        candidates[k] = (silhouette_samples(distances, labels, metric="precomputed"), model)
    return fit_on, candidates


def _choose_k(candidates: Candidates, previous_k: int | None) -> int:
    """The k with the best mean silhouette; the previous k on a tie (module docstring)."""
    if not candidates:
        return 1
    best = max(candidates, key=lambda k: float(candidates[k][0].mean()))
    if previous_k in candidates and previous_k != best:
        gain = candidates[best][0] - candidates[previous_k][0]
        if gain.mean() <= TIE_SE * gain.std(ddof=1) / np.sqrt(len(gain)):
            return previous_k
    return best


def _refit(X: np.ndarray, fit_on: np.ndarray, chosen: KMeans | None, random_state: int) -> KMeans:
    """The chosen model, on every session."""
    if chosen is None:
        # Too few sessions, or every split leaves a sliver: one persona for everybody.
        return KMeans(n_clusters=1, n_init=1, random_state=random_state).fit(X)
    if fit_on is X:
        return chosen
    return KMeans(n_clusters=chosen.n_clusters, init=chosen.cluster_centers_, n_init=1).fit(X)


def _match(
    centroids: np.ndarray,
    columns: pd.Index,
    previous: dict[str, Any] | None,
    scale: np.ndarray,
) -> tuple[np.ndarray, dict[int, str]]:
    """New cluster i gets number order[i]: its matched previous cluster, else a fresh one.

    Also returns the previous label of each number kept.
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
    previous_labels: dict[int, str] = {}
    for i, j in zip(rows, cols, strict=True):
        if cost[i, j] <= MAX_MATCH_DISTANCE:
            order[i] = old_ids[j]
            previous_labels[old_ids[j]] = str(old_clusters[j]["label"])
    fresh = iter(range(max(old_ids) + 1, max(old_ids) + 1 + k))
    for i in np.flatnonzero(order < 0):
        order[i] = next(fresh)
    return order, previous_labels


def persona_changes(
    previous: Sequence[dict[str, Any]], clusters: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """What differs between two models' clusters: the numbers that appeared and vanished,
    and the numbers in both whose label changed. With no previous model, all appeared.

    >>> old = [{"cluster": 0, "label": "Power coder · claude"},
    ...        {"cluster": 1, "label": "Casual chatter · mistral"}]
    >>> new = [{"cluster": 0, "label": "Power coder · gpt"},
    ...        {"cluster": 2, "label": "Regular quantum user · gemini"}]
    >>> persona_changes(old, new)  # doctest: +NORMALIZE_WHITESPACE
    {'appeared': [{'cluster': 2, 'label': 'Regular quantum user · gemini'}],
     'vanished': [{'cluster': 1, 'label': 'Casual chatter · mistral'}],
     'changed': [{'cluster': 0, 'from': 'Power coder · claude', 'to': 'Power coder · gpt'}]}
    """
    before = {int(c["cluster"]): str(c["label"]) for c in previous}
    after = {int(c["cluster"]): str(c["label"]) for c in clusters}
    return {
        "appeared": [{"cluster": c, "label": after[c]} for c in sorted(after.keys() - before)],
        "vanished": [{"cluster": c, "label": before[c]} for c in sorted(before.keys() - after)],
        "changed": [
            {"cluster": c, "from": before[c], "to": after[c]}
            for c in sorted(after.keys() & before.keys())
            if before[c] != after[c]
        ],
    }


def _persona(
    centroid: dict[str, float], providers: list[str], features: pd.DataFrame
) -> tuple[str, str]:
    """A short label and a one-line description, both read off the centroid."""
    calls = float(np.expm1(centroid["log_calls"]))
    credits = float(np.expm1(centroid["log_credits"]))
    credits_q = features["log_credits"].quantile([1 / 3, 2 / 3]).to_numpy()
    tier = int(np.searchsorted(ACTIVITY_FROM, calls, side="right"))
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
    """The session and wallet frames the workers read from Redis, computed from rows by the
    same definition (core/aggregates.py).

    Columns: calls, score_sum, score_n, credits, mix_<provider> (calls per provider), with
    ``use_cases`` uc_<use case> (calls per use case), and with ``wallet`` the session's
    wallet; wallets also get ``sessions``. Used by tests and benchmarks.
    """
    # One column per scope (who), per measure (what each row adds, NaN for nothing) and per
    # field a measure is kept per value of (core/aggregates.py).
    data: dict[str, Any] = {
        scope: [who if has(who := getattr(r, attr)) else None for r in rows]
        for scope, attr in SCOPES
    }
    for m in MEASURES:
        amounts = (m.amount(r) for r in rows)
        data[m.name] = np.array([np.nan if a is None else a for a in amounts], dtype=float)
        if m.per is not None:
            data[m.per] = [v if has(v := getattr(r, m.per)) else None for r in rows]
    frame = pd.DataFrame(data)
    out = []
    for scope, _ in SCOPES:
        part = frame[frame[scope].notna()]
        grouped = part.groupby(scope)
        agg = pd.DataFrame({m.name: grouped[m.name].sum() for m in MEASURES if m.per is None})
        for m in MEASURES:
            if m.per is None or (m.per == "use_case" and not use_cases):
                continue
            per = part.dropna(subset=[m.name]).groupby([scope, m.per])[m.name].sum()
            wide = per.unstack(fill_value=0).add_prefix(f"{m.name}_").astype(float)
            agg = agg.join(wide).fillna(0.0)
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
