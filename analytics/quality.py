"""Quality-drop warnings: has a provider's score fallen, for all use cases or one?

For each provider and each (provider, use case), the last ``recent`` scored rows are
compared with the ``baseline`` rows before them by a one-sided Mann–Whitney U test, which
needs no normality of scores. Only pairs with enough rows on both sides are tested. The
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
BASELINE = 2000
MIN_ROWS = 30
FDR = 0.001
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
    groups = [((p, None), g) for p, g in rows.groupby("provider")]
    groups += [((p, u), g) for (p, u), g in rows.groupby(["provider", "use_case"])]
    for (provider, use_case), group in groups:
        scores = group["score"].to_numpy()
        now, before = scores[-recent:], scores[-recent - baseline : -recent]
        if len(now) < min_rows or len(before) < min_rows:
            continue
        drop = float(before.mean() - now.mean())
        p_value = float(mannwhitneyu(now, before, alternative="less").pvalue)
        since = float(group["ts"].iloc[-len(now)])
        tests.append((provider, use_case, drop, p_value, before, now, since))
    if not tests:
        return []
    q_values = _benjamini_hochberg(np.array([t[3] for t in tests]))
    warnings = []
    for (provider, use_case, drop, p_value, before, now, since), q in zip(
        tests, q_values, strict=True
    ):
        if q > fdr or drop < min_drop:
            continue
        scope = f"{use_case} tasks" if use_case else "all use cases"
        warnings.append(
            {
                "key": f"{provider}|{use_case or '*'}",
                "provider": provider,
                "use_case": use_case,
                "baseline_score": round(float(before.mean()), 4),
                "recent_score": round(float(now.mean()), 4),
                "drop": round(drop, 4),
                "p_value": p_value,
                "q_value": float(q),
                "n_recent": len(now),
                "n_baseline": len(before),
                "since_ts": since,
                "message": (
                    f"{provider} quality dropped on {scope}: score {now.mean():.2f} over its "
                    f"last {len(now)} calls vs {before.mean():.2f} before "
                    f"(false-alarm rate q={q:.1g})"
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
