"""The recommender: decayed Normal posteriors per cell and per wallet, ranked by the
probability of being the best; explore, warnings, p90 budgets and explained empty results."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest

from thronos_analytics.analytics import _kernels
from thronos_analytics.analytics.quality import detect_drops
from thronos_analytics.analytics.recommend import explain_empty, fit_recommender, rank, suggestions

COLUMNS = ["ts", "use_case", "provider", "wallet", "score", "latency_ms", "credits_used"]
START, DAYS = 1_767_225_600.0, 14  # 2026-01-01 UTC: the quality model reads hours and days
WALLETS = tuple(f"w{i}" for i in range(20))


def calls(
    rng: np.random.Generator,
    use_case: str,
    provider: str,
    mean: float,
    n: int,
    wallets: Iterable[str] = WALLETS,
    *,
    span: tuple[float, float] = (0.0, 1.0),
    latency: float = 1000.0,
    credits: float = 1.0,
    sd: float = 0.08,
) -> list[tuple]:
    """``n`` calls at random times within ``span`` (of the ``DAYS``), by random wallets."""
    wallets = list(wallets)
    ts = START + np.sort(rng.uniform(*span, n)) * DAYS * 86_400
    scores = np.clip(mean + rng.normal(0, sd, n), 0, 1)
    who = rng.choice(wallets, n)
    return [
        (t, use_case, provider, w, s, latency, credits)
        for t, w, s in zip(ts, who, scores, strict=True)
    ]


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("ts", kind="stable")


def providers(ranked: list[dict]) -> list[str]:
    return [r["provider"] for r in ranked]


def test_six_lucky_calls_are_explore_and_never_ranked_first() -> None:
    rng = np.random.default_rng(1)
    rows = calls(rng, "coding", "claude", 0.85, 300) + calls(rng, "coding", "gpt", 0.70, 300)
    # A new provider: six calls at 0.95, the latest of all.
    end = START + DAYS * 86_400
    rows += [(end + i, "coding", "nova", f"w{i}", 0.95, 500.0, 0.5) for i in range(6)]
    model = fit_recommender(frame(rows))
    ranked = rank(model, "coding", top=None)
    assert providers(ranked) == ["claude", "gpt", "nova"]
    nova = ranked[-1]
    assert nova["explore"] is True and nova["p_best"] == 0.0 and nova["n"] == 6
    assert "too few to tell" in nova["reason"]
    assert not ranked[0]["explore"] and ranked[0]["p_best"] > 0.99
    # Not for the wallets that made those calls either, and never suggested.
    assert all(rank(model, "coding", f"w{i}", top=1)[0]["provider"] == "claude" for i in range(6))
    assert all(s["provider"] != "nova" for ss in suggestions(model).values() for s in ss)
    # With nothing but newcomers, they are ranked among themselves, all marked explore.
    fresh = fit_recommender(
        frame(
            [
                (i, "poetry", p, "w1", 0.9, 500.0, 0.5)
                for i, p in enumerate(["a", "b", "a", "b", "a"])
            ]
        )
    )
    listed = rank(fresh, "poetry", top=None)
    assert all(r["explore"] for r in listed)
    assert sum(r["p_best"] for r in listed) == pytest.approx(1.0, abs=1e-3)


def drop_ledger(seed: int = 2) -> pd.DataFrame:
    """claude leads coding by 0.15 (0.85 vs gpt's 0.70) until its last 150 calls, at 0.60."""
    rng = np.random.default_rng(seed)
    wallets = [f"w{i}" for i in range(40)]
    claude = calls(rng, "coding", "claude", 0.85, 600, wallets)
    claude = claude[:-150] + [
        (t, u, p, w, max(s - 0.25, 0.0), la, c) for t, u, p, w, s, la, c in claude[-150:]
    ]
    rows = claude + calls(rng, "coding", "gpt", 0.70, 600, wallets)
    rows += calls(rng, "research", "claude", 0.80, 400, wallets)
    rows += calls(rng, "research", "gemini", 0.70, 400, wallets)
    return frame(rows)


@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_a_recent_drop_takes_the_provider_off_the_top_without_any_warning(seed: int) -> None:
    rows = drop_ledger(seed)
    model = fit_recommender(rows)
    cell = model["use_cases"]["coding"]["claude"]
    # The window's plain mean still says claude; the decayed posterior does not.
    assert cell["score"] > model["use_cases"]["coding"]["gpt"]["score"] + 0.05
    assert cell["expected_score"] < model["use_cases"]["coding"]["gpt"]["expected_score"]
    assert rank(model, "coding")[0]["provider"] == "gpt"
    wallets = sorted(model["wallets"])
    assert all(rank(model, "coding", w, top=1)[0]["provider"] == "gpt" for w in wallets)
    # The drop is on coding only: claude still leads research.
    assert rank(model, "research")[0]["provider"] == "claude"
    advice = [s for ss in suggestions(model).values() for s in ss]
    assert not any(s["provider"] == "claude" and s["use_case"] == "coding" for s in advice)
    # Wallets that used claude most for coding are told to switch, with its real score.
    switch = [s for s in advice if s["use_case"] == "coding"]
    assert switch and all(s["instead_of"] == "claude" and s["provider"] == "gpt" for s in switch)
    assert all(s["alternative_score"] < 0.67 < s["expected_score"] for s in switch)


def test_an_active_quality_warning_is_said_and_the_provider_demoted() -> None:
    rows = drop_ledger()
    model = fit_recommender(rows)
    warnings = detect_drops(rows)
    assert any(w["provider"] == "claude" and w["use_case"] == "coding" for w in warnings)
    ranked = rank(model, "coding", top=None, warnings=warnings)
    claude = next(r for r in ranked if r["provider"] == "claude")
    assert ranked[0]["provider"] == "gpt" and ranked[0]["warning"] is None
    assert claude["warning"] and "quality dropped" in claude["warning"]
    assert claude["reason"].startswith("quality warning") and claude["p_best"] == 0.0
    # A warning outranks a better score: claude leads research, until it is warned there.
    research = fit_recommender(rows[rows["use_case"] == "research"])
    warning = {"provider": "claude", "use_case": None, "message": "claude quality dropped"}
    ranked = rank(research, "research", top=None, warnings=[warning])
    assert providers(ranked) == ["gemini", "claude"] and ranked[1]["warning"] == warning["message"]
    other = {"provider": "claude", "use_case": "writing", "message": "elsewhere"}
    assert rank(research, "research", warnings=[other])[0]["provider"] == "claude"
    # Never suggested while warned; a wallet on the warned provider hears why it should move.
    advice = [s for ss in suggestions(research, [warning]).values() for s in ss]
    assert all(s["provider"] != "claude" for s in advice)
    # Every warned provider that is listed says so.
    for r in rank(model, "coding", "w1", top=None, warnings=warnings):
        assert (r["warning"] is not None) == (r["provider"] == "claude")


def test_a_wallet_whose_preference_differs_by_use_case_gets_advice_per_use_case() -> None:
    rng = np.random.default_rng(5)
    rows = calls(rng, "coding", "claude", 0.85, 400) + calls(rng, "coding", "gpt", 0.70, 400)
    rows += calls(rng, "research", "claude", 0.80, 400) + calls(
        rng, "research", "gemini", 0.72, 400
    )
    # "me" does as well as anyone with claude on coding, and 0.3 worse on research only.
    rows += calls(rng, "coding", "claude", 0.85, 60, ["me"])
    rows += calls(rng, "research", "claude", 0.50, 60, ["me"])
    rows += calls(rng, "coding", "gpt", 0.70, 10, ["me"])
    rows += calls(rng, "research", "gemini", 0.72, 10, ["me"])
    model = fit_recommender(frame(rows))
    assert rank(model, "coding", "me")[0]["provider"] == "claude"
    assert rank(model, "research", "me")[0]["provider"] == "gemini"
    # Everyone else keeps claude on research.
    assert rank(model, "research", "w3")[0]["provider"] == "claude"
    assert rank(model, "research")[0]["provider"] == "claude"
    (advice,) = suggestions(model)["me"]
    assert (advice["use_case"], advice["provider"], advice["instead_of"]) == (
        "research",
        "gemini",
        "claude",
    )
    assert advice["n_wallet"] == 10 and advice["n_all"] == 410 and advice["confidence"] > 0.9
    assert advice["expected_score"] > advice["alternative_score"] + 0.1
    text = advice["text"]
    assert text.startswith("For research tasks, gemini is expected to score")
    assert (
        f"{advice['expected_score']:.2f}" in text and f"{advice['alternative_score']:.2f}" in text
    )
    assert "10 of your calls with gemini, 410 by all" in text


def test_little_own_data_gives_the_global_answer_and_much_gives_the_wallets() -> None:
    def ledger(mine: int) -> pd.DataFrame:
        rng = np.random.default_rng(6)
        rows = calls(rng, "coding", "claude", 0.85, 400) + calls(rng, "coding", "local", 0.6, 400)
        rows += calls(rng, "coding", "local", 0.95, mine, ["me"])
        rows += calls(rng, "coding", "claude", 0.70, mine + 10, ["me"])
        return frame(rows)

    assert rank(fit_recommender(ledger(2)), "coding", "me")[0]["provider"] == "claude"
    assert rank(fit_recommender(ledger(200)), "coding", "me")[0]["provider"] == "local"
    # A wallet the model does not know gets everyone's ranking.
    model = fit_recommender(ledger(200))
    assert rank(model, "coding", "stranger") == rank(model, "coding")


def budget_ledger() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = calls(rng, "coding", "claude", 0.85, 300, latency=2000.0, credits=4.0)
    rows += calls(rng, "coding", "steady", 0.70, 300, latency=800.0, credits=0.5)
    # Median 500 ms, within a 1 s budget; but 35% of its calls take 3 s.
    spiky = calls(rng, "coding", "spiky", 0.80, 300, latency=500.0, credits=0.5)
    slow = np.random.default_rng(8).random(len(spiky)) < 0.35
    rows += [r[:5] + (3000.0 if s else 500.0, r[6]) for r, s in zip(spiky, slow, strict=True)]
    return frame(rows)


def test_the_latency_budget_applies_to_p90_and_the_credits_budget_to_the_mean() -> None:
    model = fit_recommender(budget_ledger())
    spiky = model["use_cases"]["coding"]["spiky"]
    assert spiky["latency_ms"] == 500.0 and spiky["latency_p90_ms"] == 3000.0
    assert providers(rank(model, "coding", max_latency_ms=1000, top=None)) == ["steady"]
    assert "spiky" in providers(rank(model, "coding", max_latency_ms=3000, top=None))
    assert "claude" not in providers(rank(model, "coding", max_credits=1.0, top=None))
    assert explain_empty(model, "coding", max_latency_ms=1000) is None


def test_an_impossible_budget_explains_itself_and_names_the_closest_provider() -> None:
    model = fit_recommender(budget_ledger())
    assert rank(model, "coding", max_latency_ms=100) == []
    why = explain_empty(model, "coding", max_latency_ms=100)
    assert why is not None and why["closest"]["provider"] == "steady"
    assert why["closest"]["latency_p90_ms"] == 800.0
    assert "steady" in why["text"] and "100 ms" in why["text"] and "800 ms" in why["text"]
    # Both budgets: the closest misses them by the least.
    both = explain_empty(model, "coding", max_latency_ms=700, max_credits=0.4)
    assert both is not None and both["closest"]["provider"] == "steady"
    assert set(both["closest"]["over_budget"]) == {"latency_p90_ms", "credits"}
    unknown = explain_empty(model, "poetry")
    assert unknown is not None and unknown["closest"] is None and "coding" in unknown["text"]


def test_the_compiled_thompson_draws_count_as_numpy_argmax_does() -> None:
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 5, 8):
        draws = rng.standard_normal((500, k))
        means, sds = rng.normal(0.7, 0.05, k), rng.uniform(0.0, 0.05, k)
        if k > 2:  # two equal and certain leaders in every draw: the first wins, as in numpy
            means[[0, -1]], sds[[0, -1]] = 1.0, 0.0
        expected = np.bincount((means + draws * sds).argmax(axis=1), minlength=k)
        assert np.array_equal(_kernels.thompson_wins(means, sds, draws), expected)


def test_p_best_sums_to_one_is_deterministic_and_roughly_calibrated() -> None:
    """200 use cases of 3 providers, true means 0.03 apart on average, 40 calls each: of
    the providers given p_best p, about p were truly the best."""
    rng = np.random.default_rng(9)
    rows, truth = [], {}
    for u in range(200):
        means = 0.7 + rng.normal(0, 0.03, 3)
        truth[f"u{u}"] = f"p{int(np.argmax(means))}"
        for p, mean in enumerate(means):
            rows += calls(rng, f"u{u}", f"p{p}", float(mean), 40)
    model = fit_recommender(frame(rows))
    pairs = []
    for use_case, best in truth.items():
        ranked = rank(model, use_case, top=None)
        assert sum(r["p_best"] for r in ranked) == pytest.approx(1.0, abs=1e-3)
        assert all(r["weight"] == r["p_best"] for r in ranked)
        pairs += [(r["p_best"], r["provider"] == best) for r in ranked]
    assert rank(model, "u0", "w1") == rank(model, "u0", "w1")
    p, hit = np.array(pairs).T
    for lo, hi in ((0.0, 0.2), (0.2, 0.5), (0.5, 0.8), (0.8, 1.01)):
        inside = (p >= lo) & (p < hi)
        assert inside.sum() >= 30, (lo, hi)
        assert abs(p[inside].mean() - hit[inside].mean()) < 0.12, (lo, hi)
    # Saying how sure it is beats a sure pick of the same top-1 (Brier, lower is better).
    sure = np.concatenate([r == r.max() for r in p.reshape(-1, 3)]).astype(float)
    assert np.mean((p - hit) ** 2) < np.mean((sure - hit) ** 2) - 0.02


def test_the_ranking_reads_as_a_reason_and_keeps_the_old_fields() -> None:
    model = fit_recommender(budget_ledger())
    top = rank(model, "coding")
    assert len(top) == 3
    for r in top:
        assert r["reason"] and r["expected_score"] == pytest.approx(
            sum(r["interval"]) / 2, abs=1e-3
        )
        assert {"provider", "weight", "p_best", "n", "latency_ms", "credits", "popularity"} <= set(
            r
        )
    assert "p90 latency" in top[0]["reason"] and "best with probability" in top[0]["reason"]
    cell = model["use_cases"]["coding"]["claude"]
    assert cell["n"] == 300 and 0 < cell["n_eff"] < 100
