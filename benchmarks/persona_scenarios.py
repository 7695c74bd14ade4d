"""Persona scenarios: whether a retrain names a new group, renames a group whose habits
changed, and leaves a stable ledger alone, for ``analytics.profiles`` and the plain model.

``python -m benchmarks.persona_scenarios`` prints a Markdown table (about half a minute).

**Ledgers.** Not the project simulator's: a generator of its own (:func:`window`). Four
groups of wallets (``GROUPS``: power coders on claude, regular researchers on gemini,
writers on gpt, casual chatters on mistral), each wallet with its own habits drawn around
its group's (provider and use-case mixes ``Dirichlet(30 × group mix)``, median session
length ``× LogNormal(0, 0.3)``, credits a call ``× LogNormal(0, 0.3)``). In each training
window a wallet has ``1 + Poisson(2)`` sessions, each of ``LogNormal(log median, 0.5)``
calls (at least one), each call's provider and use case drawn from the wallet's mixes and
its score from ``N(group score, 0.1)`` clipped to 0..1. Three windows, of fresh sessions of
the same wallets (about 1,600 sessions and 15,000 calls each): a first fit, then two
retrains, each warm-started from the fit before.

* ``new use case``: from the second window, a new group of wallets (7.5% of the sessions)
  uses a use case nobody used before (quantum, on claude and gemini);
* ``new habits``: the same, but the new group's habits are a new mix of known ones (long
  writing sessions on claude);
* ``provider switch``: from the second window the power coders move from claude to gpt
  (claude .7 → .15, gpt .2 → .75);
* ``stable``: the same habits in every window.

**Measures.** *Own persona*: at the first retrain, a persona that *appeared* holds at least
80% of the new group's sessions and is at least 80% the new group. *Renamed*: the label most
of the coders' sessions carry names gpt after the switch, and ``changes.changed`` reports
that persona. *Events*: entries of ``changes`` (appeared + vanished + changed) over the
two retrains where nothing should happen (the stable ledger; the second retrain of the
others).

**Methods.** *Ours*: :class:`analytics.profiles.Profiles`, warm-started as the workers do.
*Plain*: the same model with the previous rules: the previous k kept while its silhouette is
within 0.05 of the best k's, and a matched cluster inheriting its predecessor's label.
Its ``changes`` are computed the same way (it reported none).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from thronos_analytics.analytics import profiles
from thronos_analytics.analytics.profiles import Profiles, aggregates_from_rows
from thronos_analytics.core.contract import Row

SEED = 11
WINDOWS = 3
NEW_SHARE = 0.075  # of a window's sessions
PLAIN_STICKINESS = 0.05
OWN = 0.8  # recall and purity a new group's persona needs


@dataclass(frozen=True)
class Group:
    wallets: int
    calls: float  # median calls a session
    credits: float  # median credits a call
    score: float
    use: dict[str, float]
    providers: dict[str, float]


GROUPS: dict[str, Group] = {
    "coder": Group(
        110,
        22.0,
        2.5,
        0.82,
        {"coding": 0.8, "research": 0.1, "chat": 0.1},
        {"claude": 0.7, "gpt": 0.2, "gemini": 0.1},
    ),
    "researcher": Group(
        135,
        9.0,
        1.8,
        0.75,
        {"research": 0.75, "writing": 0.15, "coding": 0.1},
        {"gemini": 0.65, "gpt": 0.25, "claude": 0.1},
    ),
    "writer": Group(
        135,
        5.0,
        0.8,
        0.70,
        {"writing": 0.8, "chat": 0.2},
        {"gpt": 0.7, "mistral": 0.2, "gemini": 0.1},
    ),
    "chatter": Group(
        160, 3.0, 0.4, 0.60, {"chat": 0.85, "writing": 0.15}, {"mistral": 0.6, "gpt": 0.4}
    ),
}
BASE_WALLETS = sum(g.wallets for g in GROUPS.values())
NEW_WALLETS = round(BASE_WALLETS * NEW_SHARE / (1 - NEW_SHARE))
NEW_GROUPS: dict[str, Group] = {
    "quantum": Group(
        NEW_WALLETS,
        10.0,
        1.5,
        0.72,
        {"quantum": 0.8, "research": 0.2},
        {"claude": 0.55, "gemini": 0.45},
    ),
    "long writer": Group(
        NEW_WALLETS,
        20.0,
        2.0,
        0.78,
        {"writing": 0.85, "chat": 0.15},
        {"claude": 0.75, "gpt": 0.25},
    ),
}
SWITCHED = {"claude": 0.15, "gpt": 0.75, "gemini": 0.1}


@dataclass(frozen=True)
class Scenario:
    name: str
    # The groups of each window, by name.
    windows: tuple[dict[str, Group], ...]
    new_group: str | None = None  # appears in the second window
    switched: str | None = None  # changes provider in the second window


def scenarios(scale: float = 1.0) -> list[Scenario]:
    """The scenarios, with ``scale`` times the wallets of every group (the same shares)."""

    def scaled(groups: dict[str, Group]) -> dict[str, Group]:
        return {n: replace(g, wallets=max(1, round(g.wallets * scale))) for n, g in groups.items()}

    stable = scaled(GROUPS)
    grown = [scaled({**GROUPS, name: NEW_GROUPS[name]}) for name in ("quantum", "long writer")]
    switched = scaled({**GROUPS, "coder": replace(GROUPS["coder"], providers=SWITCHED)})
    return [
        Scenario("new use case", (stable, grown[0], grown[0]), new_group="quantum"),
        Scenario("new habits", (stable, grown[1], grown[1]), new_group="long writer"),
        Scenario("provider switch", (stable, switched, switched), switched="coder"),
        Scenario("stable", (stable, stable, stable)),
    ]


@dataclass(frozen=True)
class Habits:
    calls: float
    credits: float
    use: dict[str, float]
    providers: dict[str, float]


def _habits(group: Group, rng: np.random.Generator) -> Habits:
    def mix(shares: dict[str, float]) -> dict[str, float]:
        drawn = rng.dirichlet(30 * np.array(list(shares.values())))
        return dict(zip(shares, drawn, strict=True))

    return Habits(
        group.calls * rng.lognormal(0, 0.3),
        group.credits * rng.lognormal(0, 0.3),
        mix(group.use),
        mix(group.providers),
    )


def window(
    groups: dict[str, Group], period: int, seed: int = SEED
) -> tuple[list[Row], dict[str, str]]:
    """One training window's calls, and each session's group.

    A wallet's habits depend on its group's and the seed only, so a wallet keeps them from
    one window to the next unless its group's change; its sessions are drawn afresh.
    """
    rows: list[Row] = []
    truth: dict[str, str] = {}
    calls_rng = np.random.default_rng([seed, period])
    for name, group in sorted(groups.items()):
        for w in range(group.wallets):
            habits = _habits(group, np.random.default_rng([seed, *name.encode(), w]))
            wallet = f"{name}-{w}"
            for s in range(1 + calls_rng.poisson(2)):
                session = f"{wallet}-p{period}-s{s}"
                truth[session] = name
                n = max(1, round(calls_rng.lognormal(np.log(habits.calls), 0.5)))
                providers = calls_rng.choice(
                    list(habits.providers), n, p=list(habits.providers.values())
                )
                uses = calls_rng.choice(list(habits.use), n, p=list(habits.use.values()))
                scores = np.clip(calls_rng.normal(group.score, 0.1, n), 0, 1).round(3)
                credits = (habits.credits * calls_rng.lognormal(0, 0.3, n)).round(3)
                ts = 1.7e9 + period * 86_400 * 7 + calls_rng.uniform(0, 86_400 * 7)
                rows.extend(
                    Row(
                        f"{session}-{i}",
                        ts + 30 * i,
                        str(providers[i]),
                        None,
                        session,
                        wallet,
                        float(credits[i]),
                        float(scores[i]),
                        None,
                        None,
                        str(uses[i]),
                        True,
                    )
                    for i in range(n)
                )
    return rows, truth


class PlainProfiles(Profiles):
    """The model with the previous rules: a sticky k and inherited labels."""

    def _kmeans(self, X: np.ndarray, previous_k: int | None) -> Any:
        fit_on, candidates = profiles._candidates(
            X, self.k_range, self.min_cluster_share, self.random_state
        )
        means = {k: float(s.mean()) for k, (s, _) in candidates.items()}
        best = max(means, key=lambda k: means[k]) if means else 1
        if previous_k in means and means[previous_k] >= means[best] - PLAIN_STICKINESS:
            best = previous_k
        chosen = candidates[best][1] if candidates else None
        return profiles._refit(X, fit_on, chosen, self.random_state)

    def _label(self, label: str, previous_label: str | None) -> str:
        return previous_label or label


METHODS: dict[str, type[Profiles]] = {"ours": Profiles, "plain": PlainProfiles}


def retrains(scenario: Scenario, method: type[Profiles], seed: int = SEED) -> list[dict]:
    """The profiles of each window, each fit warm-started from the one before, with each
    window's truth as ``truth`` (session -> group)."""
    fits: list[dict] = []
    previous = None
    for period, groups in enumerate(scenario.windows):
        rows, truth = window(groups, period, seed)
        fitted = method(previous=previous).fit(aggregates_from_rows(rows)).profiles_
        if method is not Profiles:
            fitted["changes"] = profiles.persona_changes(
                previous["clusters"] if previous else [], fitted["clusters"]
            )
        fits.append({**fitted, "truth": truth})
        previous = fitted
    return fits


def _events(changes: dict[str, list]) -> int:
    return sum(len(v) for v in changes.values())


def _group_label(fit: dict, group: str) -> tuple[int, str, float]:
    """The persona most of the group's sessions are in: its number, label and their share."""
    votes = Counter(
        (v["cluster"], v["label"]) for s, v in fit["sessions"].items() if fit["truth"][s] == group
    )
    (cluster, label), n = votes.most_common(1)[0]
    return cluster, label, n / sum(votes.values())


def measure(scenario: Scenario, fits: list[dict]) -> dict[str, Any]:
    first, second = fits[1], fits[2]
    out: dict[str, Any] = {
        "k": [f["k"] for f in fits],
        "events": [_events(f["changes"]) for f in fits[1:]],
        "quiet_events": _events(second["changes"]),
    }
    if scenario.new_group is not None:
        group = scenario.new_group
        cluster, label, recall = _group_label(first, group)
        members = [s for s, v in first["sessions"].items() if v["cluster"] == cluster]
        purity = float(np.mean([first["truth"][s] == group for s in members]))
        appeared = any(a["cluster"] == cluster for a in first["changes"]["appeared"])
        share = float(np.mean([g == group for g in first["truth"].values()]))
        out.update(
            share=share,
            label=label,
            recall=recall,
            purity=purity,
            appeared=appeared,
            ok=appeared and recall >= OWN and purity >= OWN,
        )
    elif scenario.switched is not None:
        group = scenario.switched
        before = _group_label(fits[0], group)
        cluster, label, recall = _group_label(first, group)
        reported = [c for c in first["changes"]["changed"] if c["cluster"] == cluster]
        out.update(
            label=f"{before[1]} → {label}",
            recall=recall,
            reported=bool(reported),
            ok=" · gpt" in label and bool(reported),
        )
    else:
        out["quiet_events"] = sum(out["events"])
        out["ok"] = out["quiet_events"] == 0
    return out


def persona_scenarios(
    seed: int = SEED, scale: float = 1.0, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Per scenario and method, the figures of :func:`measure`."""
    say = progress or (lambda _: None)
    out = []
    for scenario in scenarios(scale):
        for name, method in METHODS.items():
            started = time.perf_counter()
            figures = measure(scenario, retrains(scenario, method, seed))
            out.append({"scenario": scenario.name, "method": name, **figures})
            say(f"{scenario.name}, {name}: {time.perf_counter() - started:.1f} s")
    return out


def _outcome(f: dict[str, Any]) -> str:
    if "purity" in f:
        own = "own persona" if f["ok"] else "absorbed" if not f["appeared"] else "mixed"
        return (
            f"{own}: {f['recall']:.0%} of its sessions, {f['purity']:.0%} pure "
            f"(group {f['share']:.1%} of sessions)"
        )
    if "reported" in f:
        renamed = "renamed" if " · gpt" in f["label"] else "label kept"
        return f"{renamed}, {'reported' if f['reported'] else 'not reported'} as changed"
    return "no change" if f["ok"] else "spurious changes"


def markdown(figures: list[dict[str, Any]] | None = None) -> str:
    figures = persona_scenarios() if figures is None else figures
    lines = [
        "| scenario | method | k per fit | outcome | label (first retrain) "
        "| events per retrain | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['scenario']} | {f['method']} | {', '.join(map(str, f['k']))} "
            f"| {_outcome(f)} | {f.get('label', '—')} "
            f"| {', '.join(map(str, f['events']))} | {'yes' if f['ok'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--scale", type=float, default=1.0, help="times the wallets")
    args = parser.parse_args()
    # One BLAS/OpenMP thread: KMeans on ~1,600 sessions is slower with more on a busy host.
    with threadpool_limits(1):
        figures = persona_scenarios(args.seed, args.scale, lambda m: print(f"… {m}", flush=True))
    print(markdown(figures))


if __name__ == "__main__":
    main()
