"""The anomaly detector on a small planted ledger: it finds what was planted, says why in
words, and survives its pickle-free round trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from analytics.anomaly import AnomalyDetector
from analytics.contract import Row, parse_line
from analytics.simulate import SimConfig, simulate


@pytest.fixture(scope="module")
def planted() -> tuple[list[Row], dict, AnomalyDetector, list[dict]]:
    lines, truth = simulate(SimConfig(rows=8000, seed=5))
    rows = [r for r in map(parse_line, lines) if isinstance(r, Row)]
    detector = AnomalyDetector(contamination=0.01).fit(rows)
    return rows, truth, detector, detector.flag(rows)


def test_planted_anomalies_rank_first(planted) -> None:
    rows, truth, _, flags = planted
    y = np.array([r.id in truth["anomalies"] for r in rows])
    score = np.array([f["anomaly_score"] for f in flags])
    flagged = np.array([f["is_anomaly"] for f in flags])
    assert roc_auc_score(y, score) > 0.98
    assert (flagged & y).sum() / flagged.sum() > 0.85
    assert (flagged & y).sum() / y.sum() > 0.85


def test_extreme_latency_is_found_and_named(planted) -> None:
    rows, truth, _, flags = planted
    latency = [
        f
        for r, f in zip(rows, flags, strict=True)
        if truth["anomalies"].get(r.id) == "extreme_latency"
    ]
    assert latency and all(f["is_anomaly"] for f in latency)
    assert all(
        f["reasons"][0].startswith("latency ") and "median" in f["reasons"][0] for f in latency
    )


def test_unusual_provider_is_found_from_context(planted) -> None:
    rows, truth, _, flags = planted
    unusual = [
        f
        for r, f in zip(rows, flags, strict=True)
        if truth["anomalies"].get(r.id) == "unusual_provider"
    ]
    found = [f for f in unusual if f["is_anomaly"]]
    assert len(found) >= 0.7 * len(unusual)
    assert all("is unusual here" in f["reasons"][0] for f in found)


def test_round_trip_keeps_scores_and_needs_no_pickle(planted) -> None:
    rows, _, detector, flags = planted
    blob = detector.to_bytes()
    assert b"pickle" not in blob[:200]
    again = AnomalyDetector.from_bytes(blob)
    assert again.flag(rows[:500]) == flags[:500]
    assert (
        again.threshold_ == detector.threshold_
        and again.norms_.providers == detector.norms_.providers
    )


def test_fresh_context_overrides_stored_counts(planted) -> None:
    rows, _, detector, _ = planted
    row = next(r for r in rows if r.provider == "claude")
    odd = Row(
        "new",
        row.ts,
        "mistral",
        None,
        "sess-new",
        "THRnew",
        1.0,
        0.7,
        900.0,
        500.0,
        row.use_case,
        True,
    )
    context = [{"session": {"claude": 30}, "wallet": {"claude": 60}}]
    with_context = detector.score([odd], context)[0]
    without = detector.score([odd])[0]
    assert with_context > without


def test_contamination_none_uses_a_fixed_evidence_level(planted) -> None:
    rows, truth, _, _ = planted
    auto = AnomalyDetector(contamination=None).fit(rows)
    flagged = [f["id"] for f in auto.flag(rows) if f["is_anomaly"]]
    hits = sum(i in truth["anomalies"] for i in flagged)
    assert hits / len(flagged) > 0.8 and hits / len(truth["anomalies"]) > 0.8
