"""Quality-drop warnings: has a provider's score fallen, for all use cases or one?

For each provider and each (provider, use case), the last ``n`` scored rows, for each ``n``
in ``WINDOWS`` up to ``recent``, are compared with the ``baseline`` rows before them by a
one-sided Mann–Whitney U test, which needs no normality of scores. Short windows catch a
large drop within a few dozen calls, long ones a smaller drop; a short window needs a
larger drop (``min_drop`` × sqrt(``recent`` / n), at most 0.1 more) because a handful of
sessions can be off by chance. Only pairs with enough rows on both sides are tested. The
p-values of all pairs are adjusted together (Benjamini–Hochberg), so the share of false
warnings among those raised stays near ``fdr``; a warning also needs a drop of at least
``min_drop`` in mean score, so a tiny but certain change does not alarm anyone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

RECENT = 200
WINDOWS = (25, 50, 100, 200)
BASELINE = 2000
MIN_ROWS = 25
FDR = 0.0001
MIN_DROP = 0.05


def detect_drops(
    rows: pd.DataFrame,
    recent: int = RECENT,
    baseline: int = BASELINE,
    min_rows: int = MIN_ROWS,
    fdr: float = FDR,
    min_drop: float = MIN_DROP,
) -> list[dict[str, Any]]:
    """Warnings from a frame of ts, provider, use_case and score, newest rows last."""
    rows = rows[rows["score"].notna()].sort_values("ts", kind="stable")
    tests = []
    # A provider's own mix of use cases shifts over a day, and use cases score differently:
    # the provider-wide test compares scores relative to each use case's median.
    cell_median = rows.groupby(["provider", "use_case"], dropna=False)["score"].transform("median")
    relative = rows.assign(score=rows["score"] - cell_median)
    groups = [((p, None), g) for p, g in relative.groupby("provider")]
    groups += [((p, u), g) for (p, u), g in rows.groupby(["provider", "use_case"])]
    for (provider, use_case), group in groups:
        scores = group["score"].to_numpy()
        for window in sorted({w for w in WINDOWS if w < recent} | {recent}):
            now, before = scores[-window:], scores[-window - baseline : -window]
            if len(now) < max(min_rows, window) or len(before) < max(min_rows, window):
                continue
            drop = float(before.mean() - now.mean())
            p_value = float(mannwhitneyu(now, before, alternative="less").pvalue)
            since = float(group["ts"].iloc[-len(now)])
            needed = min_drop + min(0.1, min_drop * (np.sqrt(recent / window) - 1))
            tests.append((provider, use_case, drop, p_value, before, now, since, needed))
    if not tests:
        return []
    # Every window of every pair counts as a test, so false alarms stay controlled.
    q_values = _benjamini_hochberg(np.array([t[3] for t in tests]))
    best: dict[tuple, tuple] = {}
    for test, q in zip(tests, q_values, strict=True):
        if q > fdr or test[2] < test[7]:
            continue
        key = (test[0], test[1])
        if key not in best or q < best[key][1]:
            best[key] = (test, q)
    warnings = []
    for (provider, use_case, drop, p_value, before, now, since, _), q in best.values():
        scope = (
            f"{use_case} tasks" if use_case else "all use cases (score vs each use case's median)"
        )
        warnings.append(
            {
                "key": f"{provider}|{use_case or '*'}",
                "provider": provider,
                "use_case": use_case,
                "baseline_score": round(float(before.mean()), 4),
                "recent_score": round(float(now.mean()), 4),
                "relative": use_case is None,
                "drop": round(drop, 4),
                "p_value": p_value,
                "q_value": float(q),
                "n_recent": len(now),
                "n_baseline": len(before),
                "since_ts": since,
                "message": (
                    f"{provider} quality dropped on {scope}: score {now.mean():.2f} over its "
                    f"last {len(now)} calls vs {before.mean():.2f} before "
                    f"(confidence {min(1 - q, 0.9999):.2%}, q={q:.1g})"
                ),
            }
        )
    return warnings


def _benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out
