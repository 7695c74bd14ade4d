"""Personas on a planted ledger: found, named from their centroid, kept across retrains."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from thronos_analytics.analytics import profiles as profiles_module
from thronos_analytics.analytics.profiles import Profiles, aggregates_from_rows, fit_profiles
from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.workers import export

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted() -> tuple[list[Row], dict]:
    lines, truth = simulate(SimConfig(rows=12_000, seed=2))
    return [r for r in map(parse_line, lines) if isinstance(r, Row)], truth


def test_sessions_fall_into_the_planted_personas(planted) -> None:
    rows, truth = planted
    profiles = fit_profiles(*aggregates_from_rows(rows))
    ids = list(profiles["sessions"])
    ari = adjusted_rand_score(
        [truth["session_groups"][s] for s in ids], [profiles["sessions"][s]["cluster"] for s in ids]
    )
    assert ari > 0.8
    assert set(profiles["wallets"]) == set(truth["groups"])
    assert all(" · " in c["label"] and "calls" in c["description"] for c in profiles["clusters"])


def test_a_persona_keeps_its_label_across_retrains(planted) -> None:
    rows, truth = planted
    first = fit_profiles(*aggregates_from_rows(rows[:8000]))
    second = fit_profiles(*aggregates_from_rows(rows[4000:]), first)

    def majority(p: dict) -> dict:
        votes: dict[str, Counter] = {}
        for s, v in p["sessions"].items():
            votes.setdefault(truth["session_groups"][s], Counter())[v["label"]] += 1
        return {g: c.most_common(1)[0][0] for g, c in votes.items()}

    assert majority(first) == majority(second)


def test_choosing_k_on_a_sample_labels_sessions_as_the_full_fit(planted, monkeypatch) -> None:
    rows, _ = planted
    aggregates = aggregates_from_rows(rows)
    full = fit_profiles(*aggregates)
    monkeypatch.setattr(profiles_module, "FIT_SAMPLE", 300)  # of ~1,200 sessions
    sampled = fit_profiles(*aggregates)
    assert sampled["k"] == full["k"]
    same = [full["sessions"][s]["label"] == v["label"] for s, v in sampled["sessions"].items()]
    assert len(same) == len(full["sessions"]) and sum(same) / len(same) > 0.98


# --- retrains on ledgers of our own: labels read afresh, new groups, what changed ----------

# Groups of wallets: median calls a session, use-case mix, provider mix, mean score.
GROUPS = {
    "coder": (22.0, {"coding": 0.8, "chat": 0.2}, {"claude": 0.7, "gpt": 0.2, "gemini": 0.1}, 0.8),
    "researcher": (9.0, {"research": 0.8, "writing": 0.2}, {"gemini": 0.7, "gpt": 0.3}, 0.75),
    "writer": (
        5.0,
        {"writing": 0.8, "chat": 0.2},
        {"gpt": 0.7, "mistral": 0.2, "gemini": 0.1},
        0.7,
    ),
    "chatter": (3.0, {"chat": 0.85, "writing": 0.15}, {"mistral": 0.6, "gpt": 0.4}, 0.6),
}
NEW_GROUP = (20.0, {"writing": 0.85, "chat": 0.15}, {"claude": 0.75, "gpt": 0.25}, 0.78)
TO_GPT = {"claude": 0.15, "gpt": 0.75, "gemini": 0.1}


def aggregates(groups: dict, wallets: dict, period: int) -> tuple[tuple, dict]:
    """The session and wallet frames of one training window, and each session's group.

    ``wallets`` is how many wallets each group has; a wallet's habits are drawn around its
    group's from the wallet alone, so they stay the same from one window to the next.
    """
    rng = np.random.default_rng(period)
    records, truth = [], {}
    for name in sorted(groups):
        calls, uses, providers, score = groups[name]
        for w in range(wallets[name]):
            own = np.random.default_rng([*name.encode(), w])
            mixes = [(m, own.dirichlet(30 * np.array(list(m.values())))) for m in (uses, providers)]
            median = calls * own.lognormal(0, 0.3)
            for s in range(1 + rng.poisson(2)):
                n = max(1, round(rng.lognormal(np.log(median), 0.5)))
                record = {"session": f"{name}{w}-{period}-{s}", "wallet": f"{name}{w}", "calls": n}
                record |= {"score_sum": n * score, "score_n": n, "credits": n * 1.5}
                for (mix, shares), prefix in zip(mixes, ("uc_", "mix_"), strict=True):
                    record |= {
                        prefix + k: c for k, c in zip(mix, rng.multinomial(n, shares), strict=True)
                    }
                records.append(record)
                truth[record["session"]] = name
    sessions = pd.DataFrame(records).set_index("session").fillna(0.0)
    sessions[sessions.columns.drop("wallet")] = sessions.drop(columns="wallet").astype(float)
    by_wallet = sessions.groupby("wallet")
    wallet_frame = by_wallet.sum().assign(sessions=by_wallet.size().astype(float))
    return (sessions, wallet_frame), truth


WALLETS = {"coder": 55, "researcher": 68, "writer": 68, "chatter": 80}
# Wallets of a group not in WALLETS: about 7.5% of the sessions.
NEW_WALLETS = 22


def retrain(windows: list[dict], wallets: dict = WALLETS) -> list[tuple[dict, dict]]:
    """Each window's profiles, warm-started from the window before, with its truth."""
    fits, previous = [], None
    for period, groups in enumerate(windows):
        X, truth = aggregates(
            groups, {**wallets, **{g: wallets.get(g, NEW_WALLETS) for g in groups}}, period
        )
        previous = Profiles(previous=previous).fit(X).profiles_
        fits.append((previous, truth))
    return fits


def persona_of(profiles: dict, truth: dict, group: str) -> tuple[int, str, float, float]:
    """The persona most of the group's sessions are in: number, label, recall, purity."""
    votes = Counter(v["cluster"] for s, v in profiles["sessions"].items() if truth[s] == group)
    cluster, n = votes.most_common(1)[0]
    members = [s for s, v in profiles["sessions"].items() if v["cluster"] == cluster]
    label = next(c["label"] for c in profiles["clusters"] if c["cluster"] == cluster)
    return (
        cluster,
        label,
        n / sum(votes.values()),
        sum(truth[s] == group for s in members) / len(members),
    )


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # KMeans on a few hundred sessions is slower with more threads on a shared host.
    with threadpool_limits(1):
        yield


def test_a_label_is_read_off_its_centroid_not_inherited() -> None:
    X, _ = aggregates(GROUPS, WALLETS, 0)
    first = fit_profiles(*X)
    stale = {**first, "clusters": [{**c, "label": "Stale label"} for c in first["clusters"]]}
    again = fit_profiles(*X, stale)
    assert [c["label"] for c in again["clusters"]] == [c["label"] for c in first["clusters"]]
    assert again["changes"]["changed"] == [
        {"cluster": c["cluster"], "from": "Stale label", "to": c["label"]}
        for c in first["clusters"]
    ]


def test_a_group_that_moves_to_gpt_is_renamed_and_reported_as_changed() -> None:
    switched = {**GROUPS, "coder": (*GROUPS["coder"][:2], TO_GPT, GROUPS["coder"][3])}
    (before, truth0), (after, truth1) = retrain([GROUPS, switched])
    cluster, label, recall, _ = persona_of(after, truth1, "coder")
    assert persona_of(before, truth0, "coder")[:2] == (cluster, "Power coder · claude")
    assert label == "Power coder · gpt" and recall > 0.95
    assert after["changes"] == {
        "appeared": [],
        "vanished": [],
        "changed": [{"cluster": cluster, "from": "Power coder · claude", "to": label}],
    }


def test_a_new_group_of_7_5_percent_gets_a_persona_of_its_own() -> None:
    # Beside the power coders on claude: the previous rule (keep k while within 0.05 of the
    # best silhouette) folds these into them.
    fits = retrain([GROUPS, {**GROUPS, "long writer": NEW_GROUP}])
    (before, _), (after, truth) = fits
    share = np.mean([g == "long writer" for g in truth.values()])
    assert 0.05 < share < 0.1
    cluster, label, recall, purity = persona_of(after, truth, "long writer")
    assert recall > 0.9 and purity > 0.9
    assert label == "Power writer · claude"
    assert after["k"] == before["k"] + 1
    assert after["changes"]["appeared"] == [{"cluster": cluster, "label": label}]
    assert after["changes"]["vanished"] == after["changes"]["changed"] == []


def test_a_stable_ledger_changes_no_persona_across_two_retrains() -> None:
    fits = retrain([GROUPS, GROUPS, GROUPS])
    assert [len(p["clusters"]) for p, _ in fits] == [4, 4, 4]
    for profiles, _ in fits[1:]:
        assert profiles["changes"] == {"appeared": [], "vanished": [], "changed": []}


def test_the_previous_k_is_kept_only_on_a_tie() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 2000)
    model = KMeans(n_clusters=2)  # stands for each k's fit; only silhouettes are compared
    noise = base + rng.normal(0.002, 0.1, 2000)  # better by 0.002 on average, sd 0.1
    better = base + rng.normal(0.02, 0.1, 2000)  # a 7.5% group's gain is of this order
    assert profiles_module._choose_k({3: (base, model), 4: (noise, model)}, 3) == 3
    assert profiles_module._choose_k({3: (base, model), 4: (noise, model)}, None) == 4
    assert profiles_module._choose_k({3: (base, model), 4: (better, model)}, 3) == 4


def test_the_export_carries_the_changes_as_its_schema_says() -> None:
    X, _ = aggregates(GROUPS, WALLETS, 0)
    first = fit_profiles(*X)
    assert [a["cluster"] for a in first["changes"]["appeared"]] == [0, 1, 2, 3]
    second = fit_profiles(*aggregates(GROUPS, WALLETS, 1)[0], first)
    section = export.profiles_section(None, {"profiles": second})  # type: ignore[arg-type]
    assert section["profiles"]["changes"] == second["changes"]
    schema = json.loads((ROOT / "workers" / "ai_analytics.schema.json").read_text())
    jsonschema.validate(section["profiles"], schema["properties"]["profiles"])
    # An artifact fitted before changes were kept still exports.
    old = {k: v for k, v in second.items() if k != "changes"}
    assert "changes" not in export.profiles_section(None, {"profiles": old})["profiles"]
