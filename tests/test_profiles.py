"""Personas on a planted ledger: found, named from their centroid, kept across retrains."""

from __future__ import annotations

from collections import Counter

import pytest
from sklearn.metrics import adjusted_rand_score

from thronos_analytics.analytics import profiles as profiles_module
from thronos_analytics.analytics.profiles import aggregates_from_rows, fit_profiles
from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core.contract import Row, parse_line


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
