"""Quality warnings: a drop is warned soon and stays warned while it lasts, a recovery ends it, a
nightly dip and a clean ledger raise nothing, and the message gives real scores.

The ledgers are ``tests/layouts.generate`` interactions (not the project simulator: 60
wallets, 14 days, scores N(cell mean, 0.08)) with a change planted on their scores.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from layouts import START, frame

from thronos_analytics.analytics.quality import (
    cusum_threshold,
    detect_drops,
    ended_warnings,
    find_episodes,
    siegmund_arl,
)
from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core.contract import Row, parse_line

DAY = 86_400.0
FIELDS = {"key", "provider", "use_case", "since_ts", "active", "before", "now", "n_since"}
FIELDS |= {"loss", "message"}


@pytest.fixture(scope="module")
def ledger() -> pd.DataFrame:
    return frame(24_000, 3)[["ts", "provider", "use_case", "wallet", "score"]]


def planted(rows: pd.DataFrame, mask: pd.Series, loss: float | pd.Series) -> pd.DataFrame:
    return rows.assign(score=(rows["score"] - np.where(mask, loss, 0.0)).clip(0.0, 1.0))


def day(d: float) -> float:
    return START + d * DAY


def test_siegmund_threshold_matches_the_textbook_run_lengths() -> None:
    # Brook & Evans (1972), exact Markov-chain ARL0 of a Gaussian CUSUM: k = 0.5, h = 4 -> 336,
    # h = 5 -> 930; Siegmund's approximation is within 1% of both.
    assert siegmund_arl(4.0, 0.5) == pytest.approx(336, rel=0.01)
    assert siegmund_arl(5.0, 0.5) == pytest.approx(930, rel=0.01)
    h = cusum_threshold(0.375, 1e7)
    assert 18 < h < 19.5 and siegmund_arl(h, 0.375) == pytest.approx(1e7, rel=1e-6)
    # Heavier tails (a smaller adjustment coefficient) need a larger threshold.
    assert cusum_threshold(0.375, 1e7, theta=0.5) > h


def test_a_step_of_006_is_warned_within_100_rows_of_its_provider(ledger: pd.DataFrame) -> None:
    rows = planted(ledger, (ledger["provider"] == "gpt") & (ledger["ts"] >= day(8)), 0.06)
    assert detect_drops(rows[rows["ts"] < day(8)]) == []
    after = rows.index[(rows["ts"] >= day(8)) & (rows["provider"] == "gpt")]
    warnings = detect_drops(rows.loc[: after[99]])
    assert [w["key"] for w in warnings] == ["gpt|*"]
    warning = warnings[0]
    assert set(warning) >= FIELDS and warning["active"]
    assert day(8) - 3600 <= warning["since_ts"] <= rows.loc[after[99], "ts"]
    assert warning["loss"] == pytest.approx(0.06, abs=0.03)
    # Still warned, with the same onset, at the end of the ledger, on all three use cases.
    final = detect_drops(rows)
    assert [w["key"] for w in final] == ["gpt|*"]
    assert final[0]["since_ts"] == warning["since_ts"]
    assert final[0]["loss"] == pytest.approx(0.06, abs=0.01)
    assert final[0]["use_cases"] == ["coding", "research", "writing"]


def test_a_slow_drift_is_warned_and_still_active_at_the_end(ledger: pd.DataFrame) -> None:
    drift = 0.15 * ((ledger["ts"] - day(6)) / (5 * DAY)).clip(0, 1)
    rows = planted(ledger, ledger["provider"] == "gemini", drift)
    warnings = detect_drops(rows)
    assert [(w["provider"], w["active"]) for w in warnings] == [("gemini", True)]
    warning = warnings[0]
    assert day(6) <= warning["since_ts"] <= day(9)
    assert warning["loss"] > 0.08  # the mean since onset; the end of it lost 0.15
    assert warning["loss"] < warning["recent_loss"] == pytest.approx(0.15, abs=0.04)
    assert [e for e in find_episodes(rows) if e["provider"] != "gemini"] == []


def test_a_nightly_dip_raises_nothing(ledger: pd.DataFrame) -> None:
    night = (ledger["ts"] % DAY) < 6 * 3600
    assert find_episodes(planted(ledger, night, 0.10)) == []
    assert find_episodes(planted(ledger, night & (ledger["provider"] == "claude"), 0.10)) == []


def test_a_clean_ledger_raises_nothing(ledger: pd.DataFrame) -> None:
    assert find_episodes(ledger) == []
    # Nor do its prefixes, as the retrains see them.
    for end in range(4000, len(ledger), 4000):
        assert detect_drops(ledger.iloc[:end]) == []


def test_recovery_ends_the_warning(ledger: pd.DataFrame) -> None:
    gpt = ledger["provider"] == "gpt"
    rows = planted(ledger, gpt & (ledger["ts"] >= day(7)) & (ledger["ts"] < day(9)), 0.10)
    during = detect_drops(rows[rows["ts"] < day(9)])
    assert [w["key"] for w in during] == ["gpt|*"]
    assert detect_drops(rows) == []
    ended = ended_warnings(find_episodes(rows))
    assert ended and {w["provider"] for w in ended} == {"gpt"}
    for w in ended:
        series = gpt & (rows["use_case"] == w["use_case"] if w["use_case"] else gpt)
        late = (series & rows["ts"].between(day(9), w["ended_ts"])).sum()
        early = (series & rows["ts"].between(w["ended_ts"], day(9))).sum()
        assert not w["active"] and late <= 250 and early <= 20, (w["key"], late, early)
        assert w["loss"] == pytest.approx(0.10, abs=0.03)
        assert "recovered" in w["message"]


def test_the_message_gives_real_scores_the_onset_and_the_false_alarm_rate(
    ledger: pd.DataFrame,
) -> None:
    coding = (ledger["provider"] == "claude") & (ledger["use_case"] == "coding")
    rows = planted(ledger, coding & (ledger["ts"] >= day(8)), 0.25)
    [warning] = detect_drops(rows)
    assert warning["key"] == "claude|coding" and warning["use_case"] == "coding"
    truth_after, truth_before = rows.loc[coding & (rows["ts"] >= day(8)), "score"], 0.85
    assert warning["now"] == pytest.approx(truth_after.mean(), abs=0.01)
    assert warning["before"] == pytest.approx(truth_before, abs=0.01)
    message = warning["message"]
    assert re.search(
        rf"claude quality dropped on coding: 0\.6\d over its last {warning['n_since']:,} "
        r"coding calls vs 0\.8\d before, a loss of 0\.2\d, since 2025-11-1\d \d\d:\d\d UTC",
        message,
    ), message
    between = rows["ts"].between(*sorted((warning["since_ts"], day(8))), inclusive="left")
    assert (between & coding).sum() <= 10  # the onset is found within a few calls
    assert "false alarms per million calls" in message and "CUSUM" in message
    assert "confidence" not in message and "all use cases" not in message


def test_a_provider_warning_names_the_use_cases_it_covers(ledger: pd.DataFrame) -> None:
    gpt = (ledger["provider"] == "gpt") & (ledger["use_case"] != "writing")
    rows = planted(ledger, gpt & (ledger["ts"] >= day(8)), 0.15)
    [warning] = detect_drops(rows)
    assert warning["key"] == "gpt|*" and warning["use_case"] is None
    assert warning["use_cases"] == ["coding", "research"]
    assert "gpt quality dropped on coding and research:" in warning["message"]
    assert "writing" not in warning["message"]


def test_detection_is_causal(ledger: pd.DataFrame) -> None:
    """What a retrain reported stays as it was when more rows come."""
    rows = planted(ledger, (ledger["provider"] == "gpt") & (ledger["ts"] >= day(8)), 0.06)
    full = find_episodes(rows)
    part = find_episodes(rows[rows["ts"] < day(10)])
    same = ("key", "since_ts", "detected_ts")
    assert [tuple(e[k] for k in same) for e in part] == [
        tuple(e[k] for k in same) for e in full if e["detected_ts"] < day(10)
    ]


def simulated(seed: int, drop: bool) -> tuple[pd.DataFrame, dict]:
    lines, truth = simulate(SimConfig(rows=20_000, seed=seed, drop=drop))
    rows = [r for r in map(parse_line, lines) if isinstance(r, Row)]
    columns = ["ts", "provider", "use_case", "wallet", "score"]
    return pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns), truth


@pytest.mark.parametrize("seed", [1, 2])
def test_the_simulators_drop_is_warned_and_its_clean_ledger_is_quiet(seed: int) -> None:
    """The project simulator: wallets of their own level, sessions, planted anomalies."""
    rows, truth = simulated(seed, drop=True)
    drop = truth["drop"]
    after = rows.index[(rows["ts"] >= drop["onset_ts"]) & (rows["provider"] == drop["provider"])]
    hits = [w for w in detect_drops(rows.loc[: after[299]]) if w["provider"] == drop["provider"]]
    assert hits and hits[0]["use_case"] in (None, drop["use_case"])
    assert find_episodes(simulated(seed, drop=False)[0]) == []
