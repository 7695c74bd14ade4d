"""Quality-warning scenarios: how soon each drop is warned, whether the warning is still up at
the end, and how often a clean ledger raises one, for ``analytics.quality`` and two baselines.

``python -m benchmarks.warning_scenarios`` prints a Markdown table (about a minute: most of it
is ``tests/layouts.generate`` writing the 200,000 interactions the scenarios are made of).

**Ledgers.** The interactions of ``tests/layouts.generate(200_000, seed=5)`` (not the project
simulator: 60 wallets, 4 providers, 3 use cases, 14 days from 2025-11-03, scores
``N(mean of the cell, 0.08)`` clipped to 0..1), one in four of them for the scenario ledgers
(50,000 rows, about 1,000 a day per provider), with a change planted on the scores:

* a step of 0.04, 0.06, 0.10 or 0.25 on every gpt call from day 8 to the end; a 0.06 step at
  a quarter of the volume (12,500 rows); a 0.06 step on claude's coding calls only;
* a slow drift: gemini loses 0.15 linearly from day 6 to day 11, and stays there;
* a drop and its recovery: mistral loses 0.10 from day 7 to day 9;
* nightly dips: every call (or every claude call) between 00:00 and 06:00 UTC loses 0.10,
  every night from the first;
* clean ledgers for false alarms: the 200,000 rows ten times, scores drawn again each time
  from the generator's own law (``clip(N(mean, 0.08), 0, 1)``, 3 decimals): 2 million rows.

**Measures.** *Delay*: the affected provider's rows from the onset to its first warning (on
the provider or one of its use cases). *Active at end*: a warning on it at the last row.
*Warnings*: warning episodes raised over the ledger (each detector alarm once; ours: the raw
episodes of all series, before a provider's warning absorbs those of its use cases, so a
drop on all of a provider's three use cases counts 4 here and is reported as 1); *false*:
those on another provider or before the onset.

**Methods.** *Ours*: :func:`analytics.quality.find_episodes` over the whole ledger. It is
causal (a row's fate depends only on the rows before it), so one pass gives what a retrain
after every row would have reported. *Plain CUSUM*: the textbook chart on each of the same
series: reference mean and sd of the series' first 1,000 rows, ``k = 0.03``, Siegmund's
Gaussian ``h`` for the same 10 million rows between false alarms, never reset; a warning each
time it crosses ``h`` upwards, active while above. *Mann–Whitney*: the detector this one
replaced (one-sided Mann–Whitney U of the last 25-200 rows against the 2,000 before,
Benjamini–Hochberg at q ≤ 1e-4, a drop of at least 0.05), replayed on prefixes: every 50 rows
of the provider for the delay (then every 10 before the first hit; "missed": none within
2,000 rows), every 2,500 rows (nightly dips) or 5,000 rows (drops) for the
warnings (a warning counted when its key appears; a coarser replay than a retrain every 5
minutes, so its counts are lower bounds), on one clean ledger of 200,000 rows every 5,000 for
false alarms.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from thronos_analytics.analytics import quality

DAY = 86_400.0
BASE_ROWS = 200_000
SEED = 5
EVERY = 4
CLEAN_LEDGERS = 10
PLAIN_REFERENCE = 1000
CALIBRATION_RATES = (1000.0, 100.0)
CALIBRATION_LEDGERS = 2
MW_SEARCH = 2000  # rows of the provider after the onset the replaced detector is given


@dataclass
class Scenario:
    name: str
    rows: pd.DataFrame
    provider: str | None = None  # the provider that changed; None: nothing planted
    onset: float | None = None
    recovers: bool = False
    dip: bool = False  # a recurring dip: every warning is false


def base_ledger(n: int = BASE_ROWS, seed: int = SEED) -> pd.DataFrame:
    from tests.layouts import frame

    return frame(n, seed)[["ts", "provider", "use_case", "wallet", "score"]]


def redrawn(base: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same calls, scores drawn again from ``tests/layouts``' law: a clean ledger."""
    from tests.layouts import MEANS, NOISE_SD

    rng = np.random.default_rng([seed, 99])
    mean = np.array([MEANS[u][p] for u, p in zip(base["use_case"], base["provider"], strict=True)])
    score = np.round(np.clip(mean + rng.normal(0, NOISE_SD, len(base)), 0, 1), 3)
    return base.assign(score=score)


def scenarios(base: pd.DataFrame) -> list[Scenario]:
    from tests.layouts import START

    ledger = base.iloc[::EVERY].reset_index(drop=True)
    day = lambda d: START + d * DAY  # noqa: E731
    hour = (ledger["ts"] % DAY) // 3600

    def planted(mask: pd.Series, loss: pd.Series | float, frame: pd.DataFrame = ledger):
        score = frame["score"] - np.where(mask, loss, 0.0)
        return frame.assign(score=np.clip(score, 0.0, 1.0))

    gpt, out = ledger["provider"] == "gpt", []
    for size in (0.04, 0.06, 0.10, 0.25):
        rows = planted(gpt & (ledger["ts"] >= day(8)), size)
        out.append(Scenario(f"step −{size:.2f}, gpt, all use cases", rows, "gpt", day(8)))
    sparse = base.iloc[:: EVERY * 4].reset_index(drop=True)
    rows = planted((sparse["provider"] == "gpt") & (sparse["ts"] >= day(8)), 0.06, sparse)
    out.append(Scenario("step −0.06, gpt, a quarter of the volume", rows, "gpt", day(8)))
    coding = (ledger["provider"] == "claude") & (ledger["use_case"] == "coding")
    rows = planted(coding & (ledger["ts"] >= day(8)), 0.06)
    out.append(Scenario("step −0.06, claude coding only", rows, "claude", day(8)))
    gemini = ledger["provider"] == "gemini"
    drift = 0.15 * ((ledger["ts"] - day(6)) / (5 * DAY)).clip(0, 1)
    out.append(
        Scenario("drift −0.15 over 5 days, gemini", planted(gemini, drift), "gemini", day(6))
    )
    mistral = (ledger["provider"] == "mistral") & (ledger["ts"] >= day(7)) & (ledger["ts"] < day(9))
    rows = planted(mistral, 0.10)
    out.append(
        Scenario("−0.10 on days 7-9, then recovered, mistral", rows, "mistral", day(7), True)
    )
    night = hour < 6
    out.append(Scenario("nightly dip −0.10, 00-06 UTC, everyone", planted(night, 0.10), dip=True))
    rows = planted(night & (ledger["provider"] == "claude"), 0.10)
    out.append(Scenario("nightly dip −0.10, 00-06 UTC, claude", rows, dip=True))
    return out


# --- the methods: each gives the warning episodes of a ledger as (provider, raised ts, active)


Episodes = list[tuple[str, float, bool]]


def ours(rows: pd.DataFrame) -> Episodes:
    return [(w["provider"], w["detected_ts"], w["active"]) for w in quality.find_episodes(rows)]


def plain_cusum(rows: pd.DataFrame) -> Episodes:
    rows = rows.sort_values("ts", kind="stable")
    arl0 = 1e6 / quality.FALSE_ALARMS_PER_MILLION
    out: Episodes = []
    groups = [(p, g) for p, g in rows.groupby("provider")]
    groups += [(p, g) for (p, _), g in rows.groupby(["provider", "use_case"])]
    for provider, group in groups:
        x, ts = group["score"].to_numpy(), group["ts"].to_numpy()
        if len(x) <= PLAIN_REFERENCE:
            continue
        mean, sd = x[:PLAIN_REFERENCE].mean(), max(x[:PLAIN_REFERENCE].std(ddof=1), 0.01)
        k = quality.DROP / 2 / sd
        h = quality.cusum_threshold(k, arl0)
        y = -(x[PLAIN_REFERENCE:] - mean) / sd - k
        c = np.cumsum(y)
        s = c - np.minimum.accumulate(np.minimum(c, 0.0))
        above = s >= h
        ups = np.flatnonzero(above & ~np.r_[False, above[:-1]])
        for i in ups:
            later = np.flatnonzero(~above[i:])
            out.append((provider, float(ts[PLAIN_REFERENCE + i]), not later.size))
    return sorted(out, key=lambda e: e[1])


def mann_whitney_warnings(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The replaced detector, as it was (``analytics/quality.py`` before CUSUM)."""
    recent, baseline, min_rows, fdr, min_drop = 200, 2000, 25, 0.0001, 0.05
    rows = rows[rows["score"].notna()].sort_values("ts", kind="stable")
    tests = []
    cell_median = rows.groupby(["provider", "use_case"], dropna=False)["score"].transform("median")
    relative = rows.assign(score=rows["score"] - cell_median)
    groups = [((p, None), g) for p, g in relative.groupby("provider")]
    groups += [((p, u), g) for (p, u), g in rows.groupby(["provider", "use_case"])]
    for (provider, use_case), group in groups:
        scores = group["score"].to_numpy()
        for window in (25, 50, 100, 200):
            now, before = scores[-window:], scores[-window - baseline : -window]
            if len(now) < max(min_rows, window) or len(before) < max(min_rows, window):
                continue
            drop = float(before.mean() - now.mean())
            p_value = float(mannwhitneyu(now, before, alternative="less").pvalue)
            needed = min_drop + min(0.1, min_drop * (np.sqrt(recent / window) - 1))
            tests.append((provider, use_case, drop, p_value, needed))
    if not tests:
        return []
    p = np.array([t[3] for t in tests])
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.empty_like(p)
    q[order] = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    keys = {(t[0], t[1]) for t, qv in zip(tests, q, strict=True) if qv <= fdr and t[2] >= t[4]}
    return [{"key": f"{k[0]}|{k[1] or '*'}", "provider": k[0]} for k in sorted(keys, key=str)]


TAIL = 30_000  # the replaced detector reads the last 2,200 rows of each series: enough rows


def _mw(rows: pd.DataFrame, end: int) -> list[dict[str, Any]]:
    return mann_whitney_warnings(rows.iloc[max(0, end - TAIL) : end])


def mann_whitney(rows: pd.DataFrame, step: int = 2500) -> Episodes:
    rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
    out: Episodes = []
    shown: set[str] = set()
    ts = rows["ts"].to_numpy()
    for end in [*range(step, len(rows), step), len(rows)]:
        now = {w["key"]: w["provider"] for w in _mw(rows, end)}
        out += [(now[k], float(ts[end - 1]), False) for k in sorted(set(now) - shown)]
        shown = set(now)
    final = {w["provider"] for w in _mw(rows, len(rows))}
    return [(p, t, p in final) for p, t, _ in out]


def mann_whitney_delay(
    rows: pd.DataFrame, provider: str, onset: float, step: int = 10, coarse: int = 50
) -> int | None:
    """Rows of ``provider`` after ``onset`` at its first warning: prefixes every ``coarse``
    rows of it (up to ``MW_SEARCH``), then every ``step`` rows before the first hit."""
    rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
    after = rows.index[(rows["ts"] >= onset) & (rows["provider"] == provider)]

    def warned(k: int) -> bool:
        return any(w["provider"] == provider for w in _mw(rows, int(after[k - 1]) + 1))

    for k in range(coarse, min(len(after), MW_SEARCH) + 1, coarse):
        if warned(k):
            return next((j for j in range(k - coarse + step, k, step) if warned(j)), k)
    return None


# --- measuring -------------------------------------------------------------------------


def measure(s: Scenario, episodes: Episodes) -> dict[str, Any]:
    if s.provider is None or s.onset is None:
        return {"delay": None, "active": None, "warnings": len(episodes), "false": len(episodes)}
    mine = [e for e in episodes if e[0] == s.provider and e[1] >= s.onset]
    delay = None
    if mine:
        ts = s.rows.loc[s.rows["provider"] == s.provider, "ts"].to_numpy()
        delay = int(((ts >= s.onset) & (ts <= mine[0][1])).sum())
    return {
        "delay": delay,
        "active": any(e[2] for e in mine),
        "warnings": len(episodes),
        "false": len(episodes) - len(mine),
    }


def _cell(m: dict[str, Any], s: Scenario) -> str:
    if s.provider is None:
        return f"— | — | {m['warnings']}"
    delay = "missed" if m["delay"] is None else f"{m['delay']:,}"
    active = "yes" if m["active"] else "no"
    if s.recovers:
        active += " (recovered)"
    return f"{delay} | {active} | {m['warnings']} ({m['false']} false)"


def warning_scenarios(progress: Callable[[str], None] | None = None) -> str:
    """The Markdown table of every scenario and method, and the clean-ledger false alarms."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    base = base_ledger()
    say(f"ledger generated in {time.perf_counter() - started:.0f} s")
    lines = [
        "| scenario | rows | ours: delay (rows of the provider) | active at end | warnings "
        "| plain CUSUM: delay | active at end | warnings | Mann–Whitney: delay | active at end "
        "| warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seconds = []
    for s in scenarios(base):
        t0 = time.perf_counter()
        found = ours(s.rows)
        seconds.append((time.perf_counter() - t0) / len(s.rows) * BASE_ROWS)
        mw = measure(s, mann_whitney(s.rows, step=2500 if s.dip else 5000))
        if s.provider is not None and s.onset is not None:
            mw["delay"] = mann_whitney_delay(s.rows, s.provider, s.onset)
        cells = [_cell(measure(s, e), s) for e in (found, plain_cusum(s.rows))] + [_cell(mw, s)]
        lines.append(f"| {s.name} | {len(s.rows):,} | " + " | ".join(cells) + " |")
        say(s.name)
    clean_rows, raised = 0, {"ours": 0, "plain": 0}
    window_s = []
    for k in range(CLEAN_LEDGERS):
        rows = redrawn(base, k)
        t0 = time.perf_counter()
        raised["ours"] += len(ours(rows))
        window_s.append(time.perf_counter() - t0)
        raised["plain"] += len(plain_cusum(rows))
        clean_rows += len(rows)
    say("clean ledgers")
    one = redrawn(base, 0)
    mw_clean = len(mann_whitney(one, step=5000))
    per_million = {k: v / clean_rows * 1e6 for k, v in raised.items()}
    lines.append(
        f"| clean ledgers, false alarms | {clean_rows:,} | {raised['ours']} "
        f"({per_million['ours']:.2f} per million rows) | | | {raised['plain']} "
        f"({per_million['plain']:.2f} per million rows) | | | {mw_clean} in {len(one):,} rows "
        f"({mw_clean / len(one) * 1e6:.1f} per million) | | |"
    )
    arl = arl_check()
    calibration = []
    for rate in CALIBRATION_RATES:
        found = sum(
            len(quality.find_episodes(redrawn(base, k), false_alarms_per_million=rate))
            for k in range(CALIBRATION_LEDGERS)
        )
        designed = rate * 2 * CALIBRATION_LEDGERS * len(base) / 1e6  # each row in two series
        calibration.append(
            f"designed {rate:g} per million rows of a series: {found} alarms "
            f"where the design allows {designed:,.0f}"
        )
    lines += [
        "",
        f"Detection on a 200,000-row window: {np.median(window_s):.2f} s (median of "
        f"{CLEAN_LEDGERS} clean ledgers; scenario ledgers scaled to 200,000 rows: "
        f"{np.median(seconds):.2f} s). Design rate: {quality.FALSE_ALARMS_PER_MILLION:g} false "
        "alarms per million rows of each series (every row is in two series).",
        "",
        "Siegmund's approximation against simulation (Gaussian rows, k = 0.375, the CUSUM "
        "without restarts, 300 runs each): "
        + "; ".join(
            f"target ARL0 {target:,.0f}: h = {h:.2f}, simulated {mean:,.0f} ± {se:,.0f}"
            for target, h, mean, se in arl
        )
        + ".",
        "",
        f"The whole detector at higher designed rates, on {CALIBRATION_LEDGERS} clean ledgers "
        f"({CALIBRATION_LEDGERS * len(base):,} rows): " + "; ".join(calibration) + ".",
        "",
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s.",
    ]
    return "\n".join(lines)


def arl_check(
    targets: tuple[float, ...] = (1e3, 1e4), runs: int = 300, k: float = 0.375, seed: int = 0
) -> list[tuple[float, float, float, float]]:
    """The mean run length to a false alarm of Gaussian CUSUMs with Siegmund's ``h``."""
    rng = np.random.default_rng(seed)
    out = []
    for target in targets:
        h = quality.cusum_threshold(k, target)
        lengths = np.full(runs, np.nan)
        s = np.zeros(runs)
        done = 0
        chunk = int(2 * target)
        while np.isnan(lengths).any():
            y = -rng.standard_normal((runs, chunk)) - k
            c = s[:, None] + np.cumsum(y, axis=1)
            path = c - np.minimum.accumulate(np.minimum(c, 0.0), axis=1)
            hit = path >= h
            first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
            new = np.isnan(lengths) & (first >= 0)
            lengths[new] = done + first[new] + 1
            s = path[:, -1]
            done += chunk
        se = float(lengths.std(ddof=1) / math.sqrt(runs))
        out.append((target, h, float(lengths.mean()), se))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    print(warning_scenarios(progress=lambda m: print(f"… {m}", flush=True)))


if __name__ == "__main__":
    main()
