"""Scenario ledgers for incidents: traffic of our own, each kind of incident planted on it.

Not the project simulator's traffic (``analytics.simulate``): a generator of its own, with
what makes incidents hard to tell from normal days. Over ``DAYS`` days, ``WALLETS`` wallets
with lognormal activity (σ 0.8) and a day-to-day swing of their own (σ 0.35) open sessions
on a daily cycle (from 13% of the peak at 02:00 UTC to the peak at 14:00); a session is
1 + Poisson(3) calls, 4 s + latency + Exp(40 s) apart, on the wallet's own provider and use
case mix. The providers, models, latencies, output lengths and prices are those of
``tests/layouts.py``, 2% of calls fail, and lines are written by its layout writers (spec
lines also carry ``meta.status`` and ``cost_usd``).

Planted (``PLANTS``; each returns the interactions with it and its :class:`Planted` truth):

* ``call_burst``: a wallet of middling activity makes 300 calls in 60 s;
* ``spend_spike``: another makes 40× its usual calls a day for 24 h, in sessions as usual;
* ``empty_outputs``: gemini-1.5-flash returns empty outputs (80%) or outputs truncated to
  1-5% of their length (20%) for three days, its scores unchanged;
* ``latency_regression``: mistral-large is three times slower from day 3.4 to the end;
* ``error_spike``: 35% of claude's calls, both models, fail for 8 hours.

Deterministic: the same name, rows and seed give the same interactions and bytes.
"""

from __future__ import annotations

import functools
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pandas as pd
from layouts import (
    LATENCY_MS,
    MEANS,
    MODELS,
    NOISE_SD,
    OUTPUT_CHARS,
    POPULARITY,
    PROMPT_TOKENS,
    PROVIDERS,
    USD_PER_CREDIT,
    USE_CASE_OUTPUT,
    USE_CASES,
    Interaction,
    server_line,
    spec_line,
)

from thronos_analytics.core.contract import Row, parse_line

ROWS = 30_000
DAYS = 5
WALLETS = 80
SEED = 11
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
FAILURE_RATE = 0.02
PEAK_HOUR = 14
H, D = 3600.0, 86_400.0
T = TypeVar("T")


@dataclass(frozen=True)
class Planted:
    """One planted incident: its kind, entity, and the first call it changed."""

    kind: str
    onset: float
    wallet: str | None = None
    provider: str | None = None
    model: str | None = None
    until: float | None = None  # the last call it changed, None if it lasts to the end

    def entity(self) -> dict[str, str | None]:
        if self.wallet is not None:
            return {"wallet": self.wallet}
        return {"provider": self.provider, "model": self.model}

    def matches(self, incident: dict[str, Any]) -> bool:
        """Same kind and entity (the onset is checked apart)."""
        return incident["kind"] == self.kind and all(
            incident.get(k) == v for k, v in self.entity().items()
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    interactions: tuple[Interaction, ...]
    truth: tuple[Planted, ...]

    @property
    def end(self) -> float:
        return self.interactions[-1].ts

    def lines(self, layout: str = "spec") -> list[bytes]:
        write = {"spec": _spec, "server": lambda row: server_line(row, rated=False)}[layout]
        return [orjson.dumps(write(row)) for row in self.interactions]

    def write(self, path: Path, layout: str = "spec") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(line + b"\n" for line in self.lines(layout)))
        return path

    def frame(self, layout: str = "spec") -> pd.DataFrame:
        """The rows as the contract reads them, as ``workers.training.window_frame`` has them."""
        rows = [parse_line(line) for line in self.lines(layout)]
        assert all(isinstance(r, Row) for r in rows)
        return pd.DataFrame(rows, columns=Row._fields)


def _spec(row: Interaction) -> dict[str, Any]:
    line = spec_line(row)
    line["cost_usd"] = row.cost_usd
    line["meta"]["status"] = "ok" if row.success else "error"
    return line


# --- normal traffic -------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Normal traffic and what the plants need to know of it."""

    interactions: tuple[Interaction, ...]
    wallets: tuple[str, ...]  # by activity, most active first
    provider_mix: np.ndarray
    use_case_mix: np.ndarray
    seed: int


@functools.lru_cache(maxsize=8)
def normal_traffic(rows: int = ROWS, seed: int = SEED, days: int = DAYS) -> Traffic:
    rng = np.random.default_rng([seed, 0])
    ids = [f"THR{rng.bytes(20).hex()}" for _ in range(WALLETS)]
    activity = rng.lognormal(0.0, 0.8, WALLETS)
    swing = rng.lognormal(0.0, 0.35, (WALLETS, days))
    weights = (activity[:, None] * swing).ravel()
    provider_mix = rng.dirichlet([8 * POPULARITY[p] for p in PROVIDERS], WALLETS)
    use_case_mix = rng.dirichlet([2.0] * len(USE_CASES), WALLETS)
    hours = np.arange(24)
    cycle = 0.65 + 0.5 * np.cos(2 * np.pi * (hours - PEAK_HOUR) / 24)
    cycle /= cycle.sum()
    out: list[Interaction] = []
    # Sessions average 4 calls; a few more than needed, thinned to ``rows`` at the end.
    for _ in range(int(rows / 4 * 1.1)):
        cell = int(rng.choice(weights.size, p=weights / weights.sum()))
        w, day = divmod(cell, days)
        start = START + day * D + int(rng.choice(24, p=cycle)) * H + float(rng.uniform(0, H))
        out += _session(rng, ids[w], provider_mix[w], use_case_mix[w], start, 1 + rng.poisson(3))
    out = [i for i in out if i.ts < START + days * D]
    keep = np.sort(rng.choice(len(out), size=min(rows, len(out)), replace=False))
    chosen = sorted((out[k] for k in keep), key=lambda i: (i.ts, i.id))
    order = np.argsort(-activity)
    return Traffic(tuple(chosen), tuple(ids[k] for k in order), provider_mix, use_case_mix, seed)


def _session(
    rng: np.random.Generator,
    wallet: str,
    provider_mix: np.ndarray,
    use_case_mix: np.ndarray,
    ts: float,
    calls: int,
    gap_s: float = 40.0,
) -> list[Interaction]:
    session = _uuid(rng)
    provider = _pick(rng, PROVIDERS, provider_mix)
    use_case = _pick(rng, USE_CASES, use_case_mix)
    out = []
    for _ in range(min(int(calls), 12)):
        p = provider if rng.random() < 0.75 else _pick(rng, PROVIDERS, provider_mix)
        row = call(rng, ts, session, wallet, p, use_case)
        out.append(row)
        ts += row.latency_ms / 1000 + 4 + float(rng.exponential(gap_s))
    return out


def call(
    rng: np.random.Generator, ts: float, session: str, wallet: str, provider: str, use_case: str
) -> Interaction:
    specs = MODELS[provider]
    spec = _pick(rng, specs, [m.weight for m in specs])
    score = float(np.clip(MEANS[use_case][provider] + rng.normal(0, NOISE_SD), 0.0, 1.0))
    latency = LATENCY_MS[provider] * spec.latency_factor * rng.lognormal(0, 0.35)
    chars = OUTPUT_CHARS[provider] * USE_CASE_OUTPUT[use_case] * rng.lognormal(0, 0.45)
    tokens_out = max(1, int(round(chars / rng.uniform(3.6, 4.4))))
    tokens_in = max(8, int(round(PROMPT_TOKENS[use_case] * rng.lognormal(0, 0.5))))
    cost = (tokens_in * spec.usd_in + tokens_out * spec.usd_out) / 1e6
    return Interaction(
        id=_uuid(rng),
        ts=round(ts, 3),
        session_id=session,
        wallet=wallet,
        provider=provider,
        model=spec.name,
        model_id=spec.model_id,
        use_case=use_case,
        score=round(score, 3),
        latency_ms=max(50, int(round(latency))),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        output_chars=max(20, int(round(chars))),
        credits=round(max(cost / USD_PER_CREDIT, 0.01), 4),
        cost_usd=round(cost, 6),
        success=bool(rng.random() >= FAILURE_RATE),
        prompt_hash=rng.bytes(32).hex(),
        output_hash=rng.bytes(32).hex(),
        preview=None,
    )


def _pick(rng: np.random.Generator, items: Sequence[T], weights: Any) -> T:
    # rng.choice with p is ten times slower than this for one draw.
    k = int(np.searchsorted(np.cumsum(weights), rng.random() * float(np.sum(weights))))
    return items[min(k, len(items) - 1)]


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


# --- plants -----------------------------------------------------------------------------


Plant = Callable[[Traffic, list[Interaction], np.random.Generator], Planted]


def _at(days: float) -> float:
    return START + days * D


def plant_call_burst(
    traffic: Traffic, rows: list[Interaction], rng: np.random.Generator
) -> Planted:
    wallet = traffic.wallets[len(traffic.wallets) // 2]
    w = _index(traffic, wallet)
    onset = _at(2.43)
    times = onset + np.sort(rng.uniform(0, 60, 300))
    times[0] = onset
    provider = PROVIDERS[int(np.argmax(traffic.provider_mix[w]))]
    use_case = USE_CASES[int(np.argmax(traffic.use_case_mix[w]))]
    session = _uuid(rng)
    rows += [call(rng, float(t), session, wallet, provider, use_case) for t in times]
    return Planted("call_burst", round(onset, 3), wallet=wallet, until=float(times[-1]))


def plant_spend_spike(
    traffic: Traffic, rows: list[Interaction], rng: np.random.Generator
) -> Planted:
    wallet = traffic.wallets[len(traffic.wallets) // 3]
    w = _index(traffic, wallet)
    onset, hours = _at(2.61), 24.0
    usual = sum(r.wallet == wallet for r in traffic.interactions) / DAYS
    sessions = int(round(40 * usual / 4))
    starts = onset + np.sort(rng.uniform(0, hours * H, sessions))
    starts[0] = onset
    for t in starts:
        rows += _session(
            rng, wallet, traffic.provider_mix[w], traffic.use_case_mix[w], t, 1 + rng.poisson(3)
        )
    return Planted("spend_spike", round(onset, 3), wallet=wallet, until=onset + hours * H)


def plant_empty_outputs(
    traffic: Traffic, rows: list[Interaction], rng: np.random.Generator
) -> Planted:
    provider, model = "gemini", "gemini-1.5-flash"
    onset, until = _at(1.84), _at(4.84)
    changed = []
    for k, row in enumerate(rows):
        mine = (row.provider, row.model) == (provider, model) and onset <= row.ts < until
        if mine and row.success:
            share = 0.0 if rng.random() < 0.8 else float(rng.uniform(0.01, 0.05))
            chars = int(row.output_chars * share)
            rows[k] = row._replace(output_chars=chars, tokens_out=int(row.tokens_out * share))
            changed.append(row.ts)
    return Planted(
        "empty_outputs", min(changed), provider=provider, model=model, until=max(changed)
    )


def plant_latency_regression(
    traffic: Traffic, rows: list[Interaction], rng: np.random.Generator
) -> Planted:
    provider, model = "mistral", "mistral-large"
    onset = _at(3.4)
    changed = []
    for k, row in enumerate(rows):
        if (row.provider, row.model) == (provider, model) and row.ts >= onset:
            rows[k] = row._replace(latency_ms=row.latency_ms * 3)
            changed.append(row.ts)
    return Planted("latency_regression", min(changed), provider=provider, model=model)


def plant_error_spike(
    traffic: Traffic, rows: list[Interaction], rng: np.random.Generator
) -> Planted:
    provider = "claude"
    onset, until = _at(3.7), _at(3.7) + 8 * H
    changed = []
    for k, row in enumerate(rows):
        if row.provider == provider and onset <= row.ts < until and rng.random() < 0.35:
            rows[k] = row._replace(success=False)
            changed.append(row.ts)
    return Planted("error_spike", min(changed), provider=provider, until=max(changed))


PLANTS: dict[str, Plant] = {
    "call_burst": plant_call_burst,
    "spend_spike": plant_spend_spike,
    "empty_outputs": plant_empty_outputs,
    "latency_regression": plant_latency_regression,
    "error_spike": plant_error_spike,
}


def _index(traffic: Traffic, wallet: str) -> int:
    # provider_mix and use_case_mix are in the order the ids were drawn.
    rng = np.random.default_rng([traffic.seed, 0])
    ids = [f"THR{rng.bytes(20).hex()}" for _ in range(WALLETS)]
    return ids.index(wallet)


@functools.lru_cache(maxsize=16)
def scenario(name: str, rows: int = ROWS, seed: int = SEED) -> Scenario:
    """``clean``, a kind of ``PLANTS``, or ``every_kind`` (all five, on different entities)."""
    traffic = normal_traffic(rows, seed)
    planted = list(traffic.interactions)
    rng = np.random.default_rng([seed, 1, *name.encode()])
    if name == "clean":
        kinds: list[str] = []
    elif name == "every_kind":
        kinds = list(PLANTS)
    elif name in PLANTS:
        kinds = [name]
    else:
        raise ValueError(f"unknown scenario {name!r}")
    truth = tuple(PLANTS[kind](traffic, planted, rng) for kind in kinds)
    planted.sort(key=lambda i: (i.ts, i.id))
    return Scenario(name, tuple(planted), truth)


@functools.lru_cache(maxsize=16)
def frame(name: str, rows: int = ROWS, seed: int = SEED, layout: str = "spec") -> pd.DataFrame:
    """``scenario(name, rows, seed).frame(layout)``, built once per test run: do not modify."""
    return scenario(name, rows, seed).frame(layout)


def describe(s: Scenario) -> dict[str, Any]:
    """What a scenario holds, for reading test failures."""
    return {
        "name": s.name,
        "rows": len(s.interactions),
        "wallets": len({i.wallet for i in s.interactions}),
        "providers": dict(Counter(i.provider for i in s.interactions)),
        "truth": [p.__dict__ for p in s.truth],
    }
