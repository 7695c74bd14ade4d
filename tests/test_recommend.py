"""The recommender: shrinks a wallet's own scores toward everyone's, honours budgets."""

from __future__ import annotations

import pandas as pd

from analytics.recommend import fit_recommender, rank, suggestions


def ledger(wallet_rows: int) -> pd.DataFrame:
    rows = []
    for i in range(200):
        rows.append(("coding", "claude", f"w{i % 20}", 0.85, 2000.0, 4.0))
        rows.append(("coding", "local", f"w{i % 20}", 0.60, 300.0, 0.2))
    # One wallet for which local does better than claude.
    rows += [("coding", "local", "me", 0.95, 300.0, 0.2)] * wallet_rows
    rows += [("coding", "claude", "me", 0.70, 2000.0, 4.0)] * (wallet_rows + 10)
    columns = ["use_case", "provider", "wallet", "score", "latency_ms", "credits_used"]
    return pd.DataFrame(rows, columns=columns).assign(ts=range(len(rows)))


def test_little_own_data_gives_the_global_answer_and_much_gives_the_wallets() -> None:
    assert rank(fit_recommender(ledger(2)), "coding", "me")[0]["provider"] == "claude"
    assert rank(fit_recommender(ledger(200)), "coding", "me")[0]["provider"] == "local"


def test_budgets_filter_candidates() -> None:
    model = fit_recommender(ledger(0))
    assert [r["provider"] for r in rank(model, "coding", max_latency_ms=1000)] == ["local"]
    assert [r["provider"] for r in rank(model, "coding", max_credits=1.0)] == ["local"]
    assert rank(model, "coding", max_credits=0.01) == []
    top = rank(model, "coding")
    assert abs(sum(r["weight"] for r in top) - 1) < 1e-3 and all(r["reason"] for r in top)


def test_suggestion_sentence_names_the_better_provider() -> None:
    text = suggestions(fit_recommender(ledger(200)))["me"][0]
    assert text.startswith("For coding tasks, local currently has higher score for you")
