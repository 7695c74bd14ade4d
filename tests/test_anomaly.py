"""The anomaly detector on a small planted ledger: it finds what was planted, says why in
words, survives its pickle-free round trip, and its compiled scoring computes what the
features' definitions say, one row at a time as in a batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from thronos_analytics.analytics import features
from thronos_analytics.analytics.anomaly import AnomalyDetector
from thronos_analytics.analytics.features import (
    BASE,
    BY_LENGTH,
    LOG_SCALED,
    LOW_SIDE_ONLY,
    REFINED_BY,
    SEP,
    base_matrix,
)
from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core.contract import Row, parse_line


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
    # score_samples is lower for stranger rows, as in scikit-learn.
    with_context = detector.score_samples([odd], context)[0]
    without = detector.score_samples([odd])[0]
    assert with_context < without


def test_the_default_flags_by_evidence_level_not_by_share(planted) -> None:
    rows, truth, _, _ = planted
    auto = AnomalyDetector().fit(rows)
    assert auto.threshold_ == auto.level
    flagged = [f["id"] for f in auto.flag(rows) if f["is_anomaly"]]
    hits = sum(i in truth["anomalies"] for i in flagged)
    assert hits / len(flagged) > 0.8 and hits / len(truth["anomalies"]) > 0.8


# --- scoring equals its definition, one row as in a batch ----------------------------------

@pytest.fixture(scope="module")
def odd(planted) -> tuple[list[Row], list]:
    """Planted rows, rows the model has not seen the like of, and fresh contexts for some."""
    rows = planted[0]
    changes: list[dict] = [
        {"provider": "newcomer"},
        {"score": None, "latency_ms": None},
        {"output_len": None},
        {"session_id": None, "wallet": None},
        {"session_id": "sess-unknown", "wallet": "THRunknown"},
        {"model": None, "use_case": None},
        {"model": "brand-new-model", "use_case": "brand-new"},
        {"provider": "mistral"},
        {"latency_ms": 1e9, "score": 0.0},
    ]
    picked = rows[:: len(rows) // 300]
    mixed = picked + [r._replace(**changes[i % len(changes)]) for i, r in enumerate(picked)]
    contexts = [
        None,
        {"session": {"claude": 30}},
        {"wallet": {"gpt": 2, "newcomer": 5}, "session": None},
        {"session": {}, "wallet": {"local": 1.5}},
    ]
    return mixed, [contexts[i % len(contexts)] for i in range(len(mixed))]


def reference(detector: AnomalyDetector, rows: list[Row], context: list | None):
    """Scores and evidence by the definitions in analytics.features and .anomaly, in plain
    numpy, row by row: what the compiled kernels must reproduce."""
    norms, counts = detector.norms_, detector.context_
    base = np.array([[getattr(r, m) for m in BASE] for r in rows], dtype=float)
    base[:, LOG_SCALED] = np.log1p(base[:, LOG_SCALED])
    median, scale = np.zeros(base.shape), np.ones(base.shape)
    measured, expected = base.copy(), np.zeros(base.shape)
    level = np.full(base.shape, 2)
    for j in range(len(BASE)):
        where = {key: i for i, key in enumerate(norms.keys[j])}
        for i, r in enumerate(rows):
            keys = (f"{r.provider}{SEP}{getattr(r, REFINED_BY[j]) or ''}", r.provider, "")
            found = [(lv, where[key]) for lv, key in enumerate(keys) if key in where]
            if found:
                level[i, j], entry = found[0]
                median[i, j], scale[i, j] = norms.median[j][entry], norms.scale[j][entry]
                # Latency and credits are divided by what a longer answer than usual
                # explains; the norm, as the reasons give it, is multiplied by it.
                slope, pivot = norms.length[j][entry]
                expected[i, j] = median[i, j]
                if BY_LENGTH[j] and not np.isnan(base[i, 0]):
                    factor = np.exp(slope * max(base[i, 0] - pivot, 0.0))
                    measured[i, j] = np.log1p(np.expm1(base[i, j]) / factor)
                    expected[i, j] = np.log1p(np.expm1(median[i, j]) * factor)
    z = (measured - median) / scale
    distance = np.nan_to_num(np.where(LOW_SIDE_ONLY, -z, np.abs(z)), nan=0.0)

    n_p = len(counts.providers)
    X, others = [], np.zeros((len(rows), 2, n_p + 1))
    for i, r in enumerate(rows):
        own = np.zeros(n_p + len(counts.use_cases))
        if r.provider in counts.providers:
            own[counts.providers.index(r.provider)] = 1
        if r.use_case in counts.use_cases:
            own[n_p + counts.use_cases.index(r.use_case)] = 1
        parts = []
        scopes = (("session", r.session_id, counts.sessions, counts.session_counts),)
        scopes += (("wallet", r.wallet, counts.wallets, counts.wallet_counts),)
        for k, (scope, key, index, table) in enumerate(scopes):
            mine = table[index[key]].astype(float) if key in index else np.zeros(own.size)
            mine = np.where(mine >= own, mine - own, mine)
            given = ((context[i] if context else None) or {}).get(scope)
            if given is not None:
                mine[:n_p] = [given.get(p, 0.0) for p in counts.providers]
            parts += [mine[:n_p] / (mine[:n_p].sum() + 1), mine[n_p:] / (mine[n_p:].sum() + 1)]
            others[i, k] = [*mine[:n_p], mine[:n_p].sum()]
        X.append(np.concatenate([*parts, own[n_p:]]))
    logits = np.array(X) @ detector.coef_.T + detector.intercept_
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    classes = detector.classes_
    probability = [
        probs[i, classes.index(r.provider)] if r.provider in classes else np.nan
        for i, r in enumerate(rows)
    ]
    surprise = -np.log(np.clip(np.nan_to_num(probability, nan=1.0), 1e-12, 1.0))
    raw = np.column_stack([distance, surprise])
    evidence = (raw - detector.center_) / detector.spread_
    strangeness = -detector.forest_.score_samples(evidence)
    forest = (strangeness - detector.forest_center_) / detector.forest_spread_
    evidence = np.column_stack([evidence, forest])
    return (evidence.max(axis=1), evidence, base, others, raw), (expected, level)


@pytest.mark.parametrize("with_context", [False, True])
def test_compiled_scoring_follows_the_definitions(planted, odd, with_context) -> None:
    detector = planted[2]
    rows, contexts = odd
    context = contexts if with_context else None
    expected, (median, level) = reference(detector, rows, context)
    got = detector._evaluate(rows, context)
    names = ("scores", "evidence", "base", "others", "raw")
    for name, want, have in zip(names, expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-9, err_msg=name)
    # What the reasons name: each measure's norm and whose it is.
    lookup = detector.norms_.lookup(rows)
    np.testing.assert_allclose(lookup.median, median, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(lookup.level, level)


def test_one_row_at_a_time_flags_as_in_a_batch(planted, odd) -> None:
    detector = planted[2]
    rows, contexts = odd
    for context in (None, contexts):
        batch = detector.flag(rows, context)
        scores = detector.score_samples(rows, context)
        assert any(f["is_anomaly"] for f in batch)
        for i, row in enumerate(rows):
            one = [context[i]] if context else None
            assert detector.flag([row], one) == [batch[i]]
            assert detector.score_samples([row], one)[0] == scores[i]


def test_norm_memory_is_bounded_and_changes_nothing(planted, odd, monkeypatch) -> None:
    detector = AnomalyDetector.from_bytes(planted[2].to_bytes())
    rows = odd[0]
    expected = detector.flag(rows)
    monkeypatch.setattr(features, "MEMO_SIZE", 3)
    fresh = AnomalyDetector.from_bytes(planted[2].to_bytes())
    assert fresh.flag(rows) == expected
    assert len(fresh.norms_._memo) <= 3


def test_callers_convert_what_the_kernels_take(planted, odd) -> None:
    # Each compiled kernel takes C-ordered arrays of one dtype: callers convert whatever
    # they are given (other orders and dtypes, strided views, read-only arrays, lists,
    # frames), and the results do not depend on the form.
    rows, contexts = odd
    detector = AnomalyDetector.from_bytes(planted[2].to_bytes())
    expected = detector.flag(rows, contexts)

    def odd_forms(a: np.ndarray, dtype: type = np.float64) -> list:
        readonly = a.astype(dtype)
        readonly.flags.writeable = False
        strided = np.repeat(a, 2, axis=0)[::2]
        return [np.asfortranarray(a), readonly, strided, a.astype(dtype).tolist()]

    base = base_matrix(rows)
    distance = detector.norms_.distances(base, rows)
    for given in odd_forms(base):
        np.testing.assert_array_equal(detector.norms_.distances(given, rows), distance)
    # float32 inputs too: the forest rounds every input to float32 anyway.
    evidence = detector._evaluate(rows, contexts)[1][:, :-1]
    forest_score = detector.forest_.score_samples(evidence)
    for given in [*odd_forms(evidence, np.float32), pd.DataFrame(evidence)]:
        np.testing.assert_array_equal(detector.forest_.score_samples(given), forest_score)

    # A model whose tables come in other orders and dtypes scores the same.
    other = AnomalyDetector.from_bytes(planted[2].to_bytes())
    counts = other.context_
    other.context_ = type(counts)(
        counts.providers,
        counts.use_cases,
        counts.sessions,
        np.asfortranarray(counts.session_counts, dtype=np.float64),
        counts.wallets,
        counts.wallet_counts.astype(np.int64),
    )
    other.coef_, other.intercept_ = odd_forms(other.coef_)[0], odd_forms(other.intercept_)[1]
    other._prepare_context_model()
    assert other.flag(rows, contexts) == expected
    assert other.flag(rows[:1]) == detector.flag(rows[:1])


# --- latency and credits at the row's output length ----------------------------------------


def lengthy_ledger(n: int = 3000, seed: int = 2) -> list[Row]:
    """A cheap model whose answers vary 20-fold in length, credits and latency following
    the output (a prompt's cost and a first token's wait, then per character)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        chars = float(np.round(400 * rng.lognormal(0.0, 1.0)))
        rows.append(
            Row(
                f"r{i}",
                1.8e9 + i,
                "gpt",
                "gpt-4o-mini",
                f"s{i % 300}",
                f"w{i % 40}",
                round((0.01 + 4e-5 * chars) * rng.lognormal(0.0, 0.1), 5),
                float(np.clip(rng.normal(0.8, 0.05), 0, 1)),
                (300.0 + 2.0 * chars) * rng.lognormal(0.0, 0.15),
                chars,
                ("chat", "report")[i % 2],
                True,
                output_unit="chars",
            )
        )
    return rows


def test_long_but_ordinary_answers_are_not_flagged(monkeypatch) -> None:
    rows = lengthy_ledger()
    long = np.array([r.output_len > 3000 for r in rows])
    assert long.sum() > 50
    detector = AnomalyDetector().fit(rows)
    assert (detector.predict(rows)[long] == -1).mean() < 0.02
    slope = detector.norms_.length[BASE.index("credits_used")]
    assert 0.5 < slope[detector.norms_.keys[3].index(f"gpt{SEP}gpt-4o-mini"), 0] < 1.1
    # Without the slopes, as the norms were: the long answers look like cost anomalies.
    monkeypatch.setattr(features, "MIN_LENGTH_SPREAD", np.inf)
    blind = AnomalyDetector().fit(rows)
    assert (blind.predict(rows)[long] == -1).mean() > 0.2


def test_reasons_name_the_measure_with_its_length() -> None:
    rows = lengthy_ledger()
    detector = AnomalyDetector().fit(rows)
    like = rows[0]._replace(id="x", output_len=900.0, latency_ms=2100.0, credits_used=0.046)
    assert not detector.flag([like])[0]["is_anomaly"]
    costly = detector.flag([like._replace(credits_used=0.46)])[0]
    assert costly["is_anomaly"]
    assert costly["reasons"][0].startswith("credits 0.46 for 900 chars (expected ~0.0")
    slow = detector.flag([like._replace(output_len=9000.0, latency_ms=400_000.0)])[0]
    assert slow["reasons"][0].startswith("latency 400.0 s for 9,000 chars (expected ~")
    empty = detector.flag([like._replace(output_len=0.0)])[0]
    assert empty["is_anomaly"] and empty["reasons"][0].startswith("output length 0, against")
    assert not any("unusual combination" in r for r in empty["reasons"] + costly["reasons"])


def test_a_model_written_before_length_slopes_scores_as_before(planted, monkeypatch) -> None:
    import io

    rows = planted[0]
    with monkeypatch.context() as patch:  # a fit without slopes: the norms as they were
        patch.setattr(features, "MIN_LENGTH_SPREAD", np.inf)
        before = AnomalyDetector().fit(rows[:3000])
    with np.load(io.BytesIO(before.to_bytes())) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("norm_length_")}
    old = io.BytesIO()
    np.savez_compressed(old, **arrays)
    loaded = AnomalyDetector.from_bytes(old.getvalue())
    assert not loaded.norms_._sloped
    assert loaded.flag(rows[:1000]) == before.flag(rows[:1000])
    # A model with slopes keeps them through its artifact.
    after = AnomalyDetector().fit(rows[:3000])
    again = AnomalyDetector.from_bytes(after.to_bytes())
    for j in range(len(BASE)):
        np.testing.assert_array_equal(again.norms_.length[j], after.norms_.length[j])
