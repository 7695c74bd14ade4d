"""Quality drops: a planted drop is warned about soon after onset; a flat ledger is quiet."""

from __future__ import annotations

import pandas as pd
import pytest

from analytics.contract import Row, parse_line
from analytics.quality import detect_drops
from analytics.simulate import SimConfig, simulate


def frame(seed: int, drop: bool) -> tuple[pd.DataFrame, dict]:
    lines, truth = simulate(SimConfig(rows=20_000, seed=seed, drop=drop))
    rows = [r for r in map(parse_line, lines) if isinstance(r, Row)]
    columns = ["ts", "provider", "use_case", "score"]
    return pd.DataFrame([[getattr(r, c) for c in columns] for r in rows], columns=columns), truth


@pytest.mark.parametrize("seed", [1, 2])
def test_a_planted_drop_is_warned_within_300_rows_of_its_provider(seed: int) -> None:
    rows, truth = frame(seed, drop=True)
    drop = truth["drop"]
    after = rows.index[(rows["ts"] >= drop["onset_ts"]) & (rows["provider"] == drop["provider"])]
    warnings = detect_drops(rows.iloc[: after[min(299, len(after) - 1)] + 1])
    hits = [w for w in warnings if w["provider"] == drop["provider"]]
    assert hits and hits[0]["use_case"] in (None, drop["use_case"])
    assert "confidence" in hits[0]["message"]
    assert not detect_drops(rows[rows["ts"] < drop["onset_ts"]])


def test_no_drop_no_warning() -> None:
    rows, _ = frame(3, drop=False)
    for end in range(5000, len(rows) + 1, 2500):
        assert detect_drops(rows.iloc[:end]) == []
