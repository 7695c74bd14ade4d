# ruff: noqa: E501
"""Recommendation scenarios: the recommender on ledgers it was not designed around.

``python -m benchmarks.recommend_scenarios`` prints a Markdown table (the same as
:func:`recommend_scenarios` returns). The ledgers are not from the project simulator
(``analytics/simulate.py``): they are the interactions of ``tests/layouts.generate()``
(4 providers, 3 use cases, one best provider per use case by 0.2, score noise 0.08, no
wallet effects) with one change each, and the real RouteLLM MMLU results of
``tests/real_ledgers.write_routellm_v4`` read back through the ledger contract:

* **stable**: as generated;
* **close race**: the runner-up of each use case scores 0.03 below the best, not 0.2;
* **recent drop**: claude's last 150 coding calls score 0.25 less (0.85 to 0.60, now
  below gpt's 0.65);
* **lucky new providers**: two new providers in every use case, nova with 6 calls and
  orion with 15, all scoring 0.93-0.97 by luck though their true mean is 0.62;
* **preference by use case**: for the 12 wallets with the most claude calls in coding and
  research, claude scores 0.30 less on coding (gpt is their best there) and 0.30 more on
  research (claude is their best there), which averages out over their use cases;
* **RouteLLM MMLU**: per subject, the best of the two models by the data itself; *clear*
  subjects are those whose best leads by more than 3 standard errors.

A unit is a (wallet, use case) with at least ``MIN_UNIT_ROWS`` scored calls, ranked for
that wallet (MMLU: a subject, ranked for everyone). Methods: *ours* (``rank``, no
warnings), *ours + warnings* (with ``analytics.quality.detect_drops`` on the same rows, as
the export does), the *spec's classifier* (the most popular provider of the use case, its
LogisticRegression ``popularity``), and *recent mean* (the highest mean over the last
``RECENT_CALLS`` calls of each (use case, provider)). Top-1: the pick is the true best;
regret: the true score of the best minus the pick's; Brier: the mean over units of
sum over providers of (p - [provider is the best])², with the baselines' picks as p = 1
(0 is perfect; a sure wrong pick costs 2).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thronos_analytics.analytics.quality import detect_drops
from thronos_analytics.analytics.recommend import HALF_LIFE, fit_recommender, rank
from thronos_analytics.core.contract import Row, ScoreEvent, parse_line

SEEDS = (1, 2, 3)
ROWS = 12_000
MIN_UNIT_ROWS = 10
RECENT_CALLS = 100
CLEAR_SE = 3.0
CLOSE_GAP = 0.03
COLUMNS = ["ts", "provider", "use_case", "wallet", "score", "latency_ms", "credits_used"]


@dataclass
class Scenario:
    name: str
    frame: pd.DataFrame
    # (wallet or None, use case) -> provider -> true score
    truth: dict[tuple[str | None, str], dict[str, float]]


def _layouts_frame(seed: int) -> pd.DataFrame:
    from tests.layouts import frame

    return frame(ROWS, seed)


def best_of(scores: dict[str, float]) -> str:
    return max(scores, key=lambda p: (scores[p], p))


def _units(
    frame: pd.DataFrame, value: Callable[[str, str, str], float]
) -> dict[tuple[str | None, str], dict[str, float]]:
    """Every (wallet, use case) with enough scored calls, and each provider's true score."""
    providers = {uc: sorted(g["provider"].unique()) for uc, g in frame.groupby("use_case")}
    sizes = frame.dropna(subset=["score"]).groupby(["wallet", "use_case"]).size()
    return {
        (wallet, use_case): {p: value(wallet, use_case, p) for p in providers[use_case]}
        for (wallet, use_case), n in sizes.items()
        if n >= MIN_UNIT_ROWS
    }


def layouts_scenarios(seed: int) -> list[Scenario]:
    from tests.layouts import MEANS, USE_CASES

    base = _layouts_frame(seed)
    out = [Scenario("stable", base, _units(base, lambda w, u, p: MEANS[u][p]))]

    close = base.copy()
    runner_up = {u: sorted(MEANS[u], key=lambda p: -MEANS[u][p])[1] for u in MEANS}
    near = {u: dict(MEANS[u]) for u in MEANS}
    for use_case, provider in runner_up.items():
        gap = MEANS[use_case][best_of(MEANS[use_case])] - MEANS[use_case][provider]
        rows = (close["use_case"] == use_case) & (close["provider"] == provider)
        close.loc[rows, "score"] = (close.loc[rows, "score"] + gap - CLOSE_GAP).clip(0, 1)
        near[use_case][provider] += gap - CLOSE_GAP
    out.append(Scenario("close race", close, _units(close, lambda w, u, p: near[u][p])))

    drop = base.copy()
    cell = drop.index[(drop["provider"] == "claude") & (drop["use_case"] == "coding")][-150:]
    drop.loc[cell, "score"] = (drop.loc[cell, "score"] - 0.25).clip(0, 1)
    after = {u: dict(MEANS[u]) for u in MEANS}
    after["coding"]["claude"] -= 0.25
    out.append(Scenario("recent drop", drop, _units(drop, lambda w, u, p: after[u][p])))

    rng = np.random.default_rng([seed, 41])
    lucky_rows = []
    end, span = base["ts"].max(), base["ts"].max() - base["ts"].min()
    wallets = base["wallet"].unique()
    for provider, calls in (("nova", 6), ("orion", 15)):
        for use_case in USE_CASES:
            for _ in range(calls):
                lucky_rows.append(
                    {
                        "ts": end - rng.uniform(0, 0.1) * span,
                        "provider": provider,
                        "use_case": use_case,
                        "wallet": str(rng.choice(wallets)),
                        "score": round(float(rng.uniform(0.93, 0.97)), 3),
                        "latency_ms": float(rng.lognormal(np.log(900), 0.3)),
                        "credits_used": 0.5,
                    }
                )
    lucky = pd.concat([base, pd.DataFrame(lucky_rows)], ignore_index=True)
    lucky = lucky.sort_values("ts", kind="stable").reset_index(drop=True)
    new = {"nova": 0.62, "orion": 0.62}
    out.append(
        Scenario(
            "lucky new providers",
            lucky,
            _units(lucky, lambda w, u, p: new.get(p, MEANS[u].get(p, 0.0))),
        )
    )

    pref = base.copy()
    claude = pref[pref["provider"] == "claude"]
    counts = claude.groupby(["wallet", "use_case"]).size().unstack(fill_value=0)
    special = set(counts[["coding", "research"]].min(axis=1).nlargest(12).index)
    shift = {"coding": -0.30, "research": 0.30}
    for use_case, delta in shift.items():
        rows = (
            pref["wallet"].isin(special)
            & (pref["provider"] == "claude")
            & (pref["use_case"] == use_case)
        )
        pref.loc[rows, "score"] = (pref.loc[rows, "score"] + delta).clip(0, 1)

    def value(wallet: str, use_case: str, provider: str) -> float:
        bonus = shift.get(use_case, 0.0) if wallet in special and provider == "claude" else 0.0
        return MEANS[use_case][provider] + bonus

    units = _units(pref, value)
    out.append(Scenario("preference by use case, all wallets", pref, units))
    out.append(
        Scenario(
            "preference by use case, the 12 wallets",
            pref,
            {k: v for k, v in units.items() if k[0] in special},
        )
    )
    return out


def _read_rows(paths: Iterable[Path]) -> list[Row]:
    """The interactions of ``paths`` with their newest score event (by ts, then id) joined."""

    def order(e: ScoreEvent) -> tuple[float, str]:
        return (e.ts if e.ts is not None else float("-inf"), e.id)

    parsed = [x for path in paths for x in map(parse_line, path.read_bytes().splitlines())]
    newest: dict[str, ScoreEvent] = {}
    for e in (x for x in parsed if type(x) is ScoreEvent):
        if e.interaction_id not in newest or order(e) > order(newest[e.interaction_id]):
            newest[e.interaction_id] = e
    rows = [x for x in parsed if type(x) is Row]
    return [newest[r.id].fill(r) if r.id in newest else r for r in rows]


def mmlu_scenarios() -> list[Scenario]:
    from tests import real_ledgers

    if real_ledgers.missing() is not None:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        truth = real_ledgers.write_routellm_v4(Path(tmp))
        rows = _read_rows(truth.ledgers)
    frame = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=COLUMNS)
    cells = truth.cells()
    units: dict[tuple[str | None, str], dict[str, float]] = {}
    clear: dict[tuple[str | None, str], dict[str, float]] = {}
    for use_case, by_provider in cells.items():
        means = {p: mean for p, (_, mean) in by_provider.items()}
        units[(None, use_case)] = means
        (best_n, best), (next_n, second) = sorted(by_provider.values(), key=lambda c: -c[1])[:2]
        se = np.sqrt(best * (1 - best) / best_n + second * (1 - second) / next_n)
        if best - second > CLEAR_SE * max(se, 1e-9):
            clear[(None, use_case)] = means
    return [
        Scenario(f"RouteLLM MMLU, clear subjects ({len(clear)})", frame, clear),
        Scenario(f"RouteLLM MMLU, all subjects ({len(units)})", frame, units),
    ]


def _recent_means(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    scored = frame.dropna(subset=["score", "use_case"]).sort_values("ts", kind="stable")
    tail = scored.groupby(["use_case", "provider"]).tail(RECENT_CALLS)
    means = tail.groupby(["use_case", "provider"])["score"].mean()
    out: dict[str, dict[str, float]] = {}
    for (use_case, provider), mean in means.items():
        out.setdefault(use_case, {})[provider] = float(mean)
    return out


def evaluate(scenario: Scenario, half_life: float = HALF_LIFE) -> dict[str, dict[str, Any]]:
    """Per method: top-1, regret and Brier over the scenario's units, and ours' p_best
    with whether each provider was the best (for reliability)."""
    model = fit_recommender(scenario.frame, half_life=half_life)
    warnings = detect_drops(scenario.frame)
    recent = _recent_means(scenario.frame)
    results: dict[str, dict[str, Any]] = {
        m: {"hits": [], "regret": [], "brier": [], "pairs": []}
        for m in ("ours", "ours + warnings", "spec", "recent")
    }
    for (wallet, use_case), value in scenario.truth.items():
        best = max(value, key=lambda p: value[p])
        cells = model["use_cases"].get(use_case, {})
        popular = max(cells, key=lambda p: (cells[p]["popularity"], p))
        latest = recent.get(use_case, {})
        picks: dict[str, dict[str, float]] = {
            "ours": {r["provider"]: r["p_best"] for r in rank(model, use_case, wallet, top=None)},
            "ours + warnings": {
                r["provider"]: r["p_best"]
                for r in rank(model, use_case, wallet, top=None, warnings=warnings)
            },
            "spec": {popular: 1.0},
            "recent": {max(latest, key=lambda p: (latest[p], p)): 1.0},
        }
        orders = {
            "ours": rank(model, use_case, wallet, top=1)[0]["provider"],
            "ours + warnings": rank(model, use_case, wallet, top=1, warnings=warnings)[0][
                "provider"
            ],
            "spec": popular,
            "recent": next(iter(picks["recent"])),
        }
        for method, probabilities in picks.items():
            pick = orders[method]
            r = results[method]
            r["hits"].append(pick == best)
            r["regret"].append(value[best] - value.get(pick, 0.0))
            r["brier"].append(sum((probabilities.get(p, 0.0) - (p == best)) ** 2 for p in value))
            r["pairs"] += [(probabilities.get(p, 0.0), p == best) for p in value]
    results["warnings"] = {"keys": sorted(w["key"] for w in warnings)}
    return results


def _summary(runs: list[dict[str, dict[str, Any]]], method: str) -> tuple[float, float, float]:
    hits = [h for run in runs for h in run[method]["hits"]]
    regret = [x for run in runs for x in run[method]["regret"]]
    brier = [x for run in runs for x in run[method]["brier"]]
    return float(np.mean(hits)), float(np.mean(regret)), float(np.mean(brier))


def recommend_scenarios(seeds: Iterable[int] = SEEDS, half_life: float = HALF_LIFE) -> str:
    """The Markdown tables: per scenario and method, top-1, mean regret and Brier score;
    then the reliability of ours' p_best, pooled over all units."""
    started = time.perf_counter()
    seeds = tuple(seeds)
    by_name: dict[str, list[dict[str, dict[str, Any]]]] = {}
    units: dict[str, int] = {}
    warned: dict[str, set[str]] = {}
    for seed in seeds:
        for scenario in layouts_scenarios(seed):
            run = evaluate(scenario, half_life)
            by_name.setdefault(scenario.name, []).append(run)
            units[scenario.name] = units.get(scenario.name, 0) + len(scenario.truth)
            warned.setdefault(scenario.name, set()).update(run["warnings"]["keys"])
    for scenario in mmlu_scenarios():
        run = evaluate(scenario, half_life)
        by_name[scenario.name] = [run]
        units[scenario.name] = len(scenario.truth)
        warned[scenario.name] = set(run["warnings"]["keys"])
    methods = ("ours", "ours + warnings", "spec", "recent")
    lines = [
        "| scenario | units | ours: top-1 | regret | Brier | ours + warnings: top-1 | regret | Brier "
        f"| spec's classifier: top-1 | regret | Brier | recent mean ({RECENT_CALLS} calls): top-1 | regret | Brier | warnings raised |",
        "|---|---|" + "---|" * 12 + "---|",
    ]
    for name, runs in by_name.items():
        cells = []
        for method in methods:
            top1, regret, brier = _summary(runs, method)
            cells += [f"{top1:.1%}", f"{regret:.4f}", f"{brier:.3f}"]
        keys = ", ".join(sorted(warned[name])) or "none"
        lines.append(f"| {name} | {units[name]:,} | " + " | ".join(cells) + f" | {keys} |")
    pairs = np.array(
        [pair for runs in by_name.values() for run in runs for pair in run["ours"]["pairs"]],
        dtype=float,
    )
    bins = [(0.0, 0.05), (0.05, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 0.95), (0.95, 1.0)]
    reliability = [
        "| ours' p_best | providers | mean p_best | share that were the best |",
        "|---|---|---|---|",
    ]
    for lo, hi in bins:
        inside = (pairs[:, 0] >= lo) & ((pairs[:, 0] < hi) | ((hi == 1.0) & (pairs[:, 0] <= hi)))
        if inside.any():
            reliability.append(
                f"| {lo:.2f}-{hi:.2f} | {int(inside.sum()):,} | {pairs[inside, 0].mean():.3f} "
                f"| {pairs[inside, 1].mean():.3f} |"
            )
    seconds = time.perf_counter() - started
    return (
        "### Recommendation scenarios (ledgers not from the simulator)\n\n"
        f"In-process; `tests/layouts.generate({ROWS:,}, seed)` for seeds {list(seeds)}, each with "
        "one change, and RouteLLM MMLU (real) read through the ledger contract. A unit is a "
        f"(wallet, use case) with ≥ {MIN_UNIT_ROWS} scored calls, ranked for that wallet "
        "(MMLU: a subject, for everyone). Half-life "
        f"{half_life:g} calls. Brier: sum over providers of (p_best - [best])², the "
        "baselines' picks counted as p = 1.\n\n"
        + "\n".join(lines)
        + "\n\nReliability of ours' p_best (every provider of every unit above):\n\n"
        + "\n".join(reliability)
        + f"\n\nWall time: {seconds:.0f} s.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half-life", type=float, default=HALF_LIFE, help="in calls")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args()
    print(recommend_scenarios(args.seeds, args.half_life))


if __name__ == "__main__":
    main()
