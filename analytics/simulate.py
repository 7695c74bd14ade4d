"""A synthetic Thronos AI interaction ledger with planted ground truth.

Used by the demo, the tests and the quality benchmarks: every structure the analytics are
meant to find (personas, anomalies, a quality drop, providers that are popular but not
best) is planted on purpose and written down in a *truth* dict, so a model's output can be
checked against it. Pure and vectorised with numpy: no Redis, no Celery, no network.

The same ``SimConfig`` (``seed`` included) always gives the same bytes. Each stage draws
from its own random stream, so ``bad_rate`` changes only which extra bad lines are mixed in
(not the valid rows), and ``anomaly_rate`` and ``drop`` change only the rows they touch.

Planted structure
-----------------

**Providers** (models; lognormal latency, credits per call and output length; medians are
those of the provider's base model):

========  =====================================  ==========  =======  ============
provider  models                                 latency ms  credits  output chars
========  =====================================  ==========  =======  ============
claude    claude-sonnet, -opus, -haiku                 1800     4.0         2400
gpt       gpt-4o, gpt-4.1, gpt-4o-mini                 1200     3.0         1800
gemini    gemini-pro, gemini-flash                     1500     2.0         2800
mistral   mistral-large, mistral-small                  900     1.0         1200
local     llama-3.1-8b, qwen2.5-coder-7b                400     0.2          800
========  =====================================  ==========  =======  ============

A model multiplies its provider's credits (×0.6 to ×1.6) and latency (×0.7 to ×1.35).
Log-spreads: latency σ 0.35–0.4, credits σ 0.25–0.3, output σ 0.45–0.5. Output length is
also multiplied by the use case (coding 1.2, research 1.5, writing 1.3, chat 0.4,
quantum 1.0) and the persona (architect 1.0, researcher 1.8, casual 0.6, quantum 1.1).
``output_tokens`` is ``output_chars`` over 3.6–4.4 characters a token.

**Use cases** (``meta.use_case``): coding, research, writing, chat, quantum.

**True scores** per (use case, provider), in ``truth["true_scores"]``:

========  ======  ====  ======  =======  =====
use case  claude  gpt   gemini  mistral  local
========  ======  ====  ======  =======  =====
coding    0.82    0.78  0.74    0.66     0.58
research  0.80    0.74  0.76    0.62     0.50
writing   0.78    0.80  0.72    0.74     0.60
chat      0.76    0.80  0.70    0.74     0.60
quantum   0.70    0.66  0.78    0.60     0.52
========  ======  ====  ======  =======  =====

Each wallet has a deviation per provider, N(0, 0.03) rounded to 4 decimals
(``truth["wallet_offsets"]``). A row's score is
``clip(true + wallet offset - drop + N(0, 0.08), 0, 1)`` rounded to 3 decimals. Because
the personas prefer different providers, the most *popular* provider of a use case is not
always the *best*: by design research is mostly gemini but claude scores best, chat is
mostly local but gpt is best, quantum is mostly claude but gemini is best.
``truth["popular_vs_best"]`` gives, per use case, the provider with the most rows and the
one with the highest true score among providers with at least 5% of the use case's rows
(both counted on the rows as generated, anomalies excluded).

**Personas** (behaviour groups, ``truth["groups"]`` per wallet and
``truth["session_groups"]`` per session). Each wallet belongs to one persona and has
``1 + Poisson(sessions - 1)`` sessions; a session's length is a rounded lognormal
(σ 0.55) clipped to the persona's range; calls in a session are ``2 s + Exp(gap)`` apart.
A session has a primary provider and use case drawn from the persona's mixes; each call
keeps the primary provider with probability 0.75 and the primary use case with
probability 0.8, and otherwise draws afresh from the mix. Session starts follow a daily
cycle peaking at 15:00 UTC. About 21 rows per wallet on average (architects about 45,
researchers 26, quantum users 23, casual users 9), so architects write about 33% of the
rows, researchers 32%, casual users 19% and quantum users 16%.

==========  ======  ========  ============  ======  ====================================
persona     wallet  sessions  calls         gap     mixes
            share   (mean)    (mean, range)
==========  ======  ========  ============  ======  ====================================
architect   0.15    2.5       16, 5–40      90 s    coding .7; claude .6, gpt .3
researcher  0.25    2.5       9, 3–30       150 s   research .65; gemini .5, gpt .35
casual      0.45    2.0       4, 2–8        40 s    chat .7; local .5, mistral .3
quantum     0.15    2.0       10, 4–30      200 s   quantum .75; claude .5, gemini .3
==========  ======  ========  ============  ======  ====================================

(full mixes in ``truth["personas"]``). Architects and researchers never use mistral or
local, casual users never use claude or gemini, quantum users never use mistral or local.

**Anomalies**: ``round(anomaly_rate * rows)`` rows, split evenly over six kinds, each row
named in ``truth["anomalies"]`` (row id -> kind). Multiples are of the provider's base
median (table above), far beyond the normal spread: in a million rows, 99.99% of normal
rows stay under about 4.5× the base median for latency and credits and 12× for output
(researchers on research), and the most extreme normal row under 7× and 25×:

* ``long_output``: output_chars 30–100× the provider's base median output.
* ``short_output``: output_chars 1–5 (normal rows have at least 20).
* ``low_score``: score 0.005–0.05, only in rows whose true score is at least 0.65 (a normal
  row would need to be about 7 noise standard deviations low).
* ``extreme_latency``: latency 20–60× the provider's median.
* ``credits_off``: credits 20–50× the provider's median.
* ``unusual_provider``: the provider is one the session's persona never uses otherwise;
  every measure of the row is normal for that provider.

**Quality drop** (when ``cfg.drop``): one (provider, use case) cell among the busy ones
loses ``size`` = 0.25 of true score for every row at or after ``onset_ts``, which lies in
the last third of the period (between 2/3 and 0.85 of it). ``truth["drop"]`` holds the
provider, use case, onset (epoch seconds and ISO), size and the row counts before and
after; it is ``None`` without a drop.

Ledger lines
------------

Rows are sorted by ts (millisecond resolution) and have ids ``sim-<seed>-<n>``. A share
``legacy_rate`` is written in the legacy dialect::

    {"interaction_id", "timestamp" (epoch s), "provider", "model_id", "session_id",
     "wallet", "credits_used", "metadata": {"use_case", "output_chars", "rating"},
     "latency_ms" or "duration" (s), "success": true}

where ``rating = round(1 + 4 * score, 2)`` stars, at least 1.01 (the contract reads a
rating of exactly 1 as a 0..1 score of 1.0, not as one star). The others use the spec
dialect, with ``ts`` as an ISO 8601 string, epoch seconds (float) or epoch milliseconds
(int), one third each::

    {"id", "ts", "provider", "model", "prompt_hash", "output_hash", "session_id", "wallet",
     "credits_used", "score", "meta": {"use_case", "latency_ms", "output_chars",
     "output_tokens"}}

The hashes are sha256 hex digests of synthetic strings; no prompt text exists. Wallets are
``THR`` + 40 hex characters, sessions ``sess-<seed>-<k>``.

**Bad lines**: ``round(bad_rate * rows)`` extra lines at random places, evenly of the kinds
``not_json``, ``json_array``, ``missing_provider``, ``ts_unreadable`` (``"ts": "yesterday"``),
``nan_score`` (a literal ``NaN``), ``ts_out_of_range`` (a counter), ``provider_empty`` and
``truncated_json``: each breaks an essential field or the JSON itself, since any other
unreadable field costs only that field. ``truth["bad_lines"]`` maps their 1-based line numbers
(as strings, so the dict survives a JSON round trip) to the kind. Each is rejected by
:func:`analytics.contract.parse_line`; every other line parses to a row.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from thronos_analytics.core.atomic_file import write_atomically

PROVIDERS = ("claude", "gpt", "gemini", "mistral", "local")
USE_CASES = ("coding", "research", "writing", "chat", "quantum")
ANOMALY_KINDS = (
    "long_output",
    "short_output",
    "low_score",
    "extreme_latency",
    "credits_off",
    "unusual_provider",
)
BAD_KINDS = (
    "not_json",
    "json_array",
    "missing_provider",
    "ts_unreadable",
    "nan_score",
    "ts_out_of_range",
    "provider_empty",
    "truncated_json",
)


@dataclass(frozen=True)
class Model:
    name: str
    weight: float
    credits_factor: float
    latency_factor: float


@dataclass(frozen=True)
class ProviderSpec:
    models: tuple[Model, ...]
    latency_ms: float  # median of the base model
    latency_sigma: float
    credits: float  # median credits per call of the base model
    credits_sigma: float
    output_chars: float  # median output of the base model for a use case multiplier of 1
    output_sigma: float


PROVIDER_SPECS: dict[str, ProviderSpec] = {
    "claude": ProviderSpec(
        (
            Model("claude-sonnet", 0.60, 1.0, 1.0),
            Model("claude-opus", 0.25, 1.6, 1.35),
            Model("claude-haiku", 0.15, 0.6, 0.7),
        ),
        1800.0,
        0.35,
        4.0,
        0.30,
        2400.0,
        0.45,
    ),
    "gpt": ProviderSpec(
        (
            Model("gpt-4o", 0.55, 1.0, 1.0),
            Model("gpt-4.1", 0.25, 1.3, 1.2),
            Model("gpt-4o-mini", 0.20, 0.6, 0.75),
        ),
        1200.0,
        0.35,
        3.0,
        0.30,
        1800.0,
        0.45,
    ),
    "gemini": ProviderSpec(
        (Model("gemini-pro", 0.60, 1.0, 1.0), Model("gemini-flash", 0.40, 0.6, 0.7)),
        1500.0,
        0.40,
        2.0,
        0.30,
        2800.0,
        0.45,
    ),
    "mistral": ProviderSpec(
        (Model("mistral-large", 0.50, 1.0, 1.0), Model("mistral-small", 0.50, 0.6, 0.75)),
        900.0,
        0.35,
        1.0,
        0.30,
        1200.0,
        0.45,
    ),
    "local": ProviderSpec(
        (Model("llama-3.1-8b", 0.60, 1.0, 1.0), Model("qwen2.5-coder-7b", 0.40, 1.0, 1.1)),
        400.0,
        0.40,
        0.2,
        0.25,
        800.0,
        0.50,
    ),
}

USE_CASE_OUTPUT = {"coding": 1.2, "research": 1.5, "writing": 1.3, "chat": 0.4, "quantum": 1.0}

TRUE_SCORES: dict[str, dict[str, float]] = {
    "coding": {"claude": 0.82, "gpt": 0.78, "gemini": 0.74, "mistral": 0.66, "local": 0.58},
    "research": {"claude": 0.80, "gpt": 0.74, "gemini": 0.76, "mistral": 0.62, "local": 0.50},
    "writing": {"claude": 0.78, "gpt": 0.80, "gemini": 0.72, "mistral": 0.74, "local": 0.60},
    "chat": {"claude": 0.76, "gpt": 0.80, "gemini": 0.70, "mistral": 0.74, "local": 0.60},
    "quantum": {"claude": 0.70, "gpt": 0.66, "gemini": 0.78, "mistral": 0.60, "local": 0.52},
}
WALLET_OFFSET_SD = 0.03
SCORE_NOISE_SD = 0.08
LOW_SCORE_ELIGIBLE = 0.65
POPULAR_MIN_SHARE = 0.05


@dataclass(frozen=True)
class Persona:
    wallet_share: float
    sessions: float  # mean sessions per wallet (at least 1)
    calls: float  # median session length
    calls_range: tuple[int, int]
    gap_s: float  # mean extra seconds between calls
    output_factor: float
    use_cases: dict[str, float]
    providers: dict[str, float]


PERSONAS: dict[str, Persona] = {
    "architect": Persona(
        0.15,
        2.5,
        16.0,
        (5, 40),
        90.0,
        1.0,
        {"coding": 0.70, "research": 0.15, "writing": 0.10, "chat": 0.05},
        {"claude": 0.60, "gpt": 0.30, "gemini": 0.10},
    ),
    "researcher": Persona(
        0.25,
        2.5,
        9.0,
        (3, 30),
        150.0,
        1.8,
        {"research": 0.65, "writing": 0.20, "coding": 0.10, "chat": 0.05},
        {"gemini": 0.50, "gpt": 0.35, "claude": 0.15},
    ),
    "casual": Persona(
        0.45,
        2.0,
        4.0,
        (2, 8),
        40.0,
        0.6,
        {"chat": 0.70, "writing": 0.20, "coding": 0.10},
        {"local": 0.50, "mistral": 0.30, "gpt": 0.20},
    ),
    "quantum": Persona(
        0.15,
        2.0,
        10.0,
        (4, 30),
        200.0,
        1.1,
        {"quantum": 0.75, "research": 0.15, "coding": 0.10},
        {"claude": 0.50, "gemini": 0.30, "gpt": 0.20},
    ),
}
GROUPS = tuple(PERSONAS)
SESSION_LENGTH_SIGMA = 0.55
KEEP_PROVIDER = 0.75
KEEP_USE_CASE = 0.8
MIN_GAP_S = 2.0
MIN_OUTPUT_CHARS = 20

DROP_SIZE = 0.25
DROP_CANDIDATES = (
    ("claude", "coding"),
    ("gemini", "research"),
    ("gpt", "chat"),
    ("claude", "quantum"),
    ("local", "chat"),
)
DROP_WINDOW = (2.0 / 3.0, 0.85)


@dataclass
class SimConfig:
    rows: int = 20_000
    seed: int = 0
    start_ts: float = 1_767_225_600.0  # 2026-01-01 UTC; rows are spread over `days`
    days: float = 14.0
    anomaly_rate: float = 0.01  # share of rows turned into planted anomalies
    bad_rate: float = 0.0  # share of extra malformed lines mixed in
    legacy_rate: float = 0.2  # share of valid rows written in the legacy dialect
    drop: bool = True  # plant one quality drop

    def check(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 0:
            raise ValueError(f"rows must be a non-negative integer, not {self.rows!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {self.seed!r}")
        if not (math.isfinite(self.days) and self.days > 0):
            raise ValueError(f"days must be positive, not {self.days!r}")
        end = self.start_ts + self.days * 86_400
        if not (math.isfinite(self.start_ts) and self.start_ts >= 946_684_800 and end < 4.1e9):
            raise ValueError("start_ts .. start_ts + days must lie within 2000..2099")
        for name in ("anomaly_rate", "bad_rate", "legacy_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, not {value!r}")


@dataclass
class Simulation:
    """The valid rows as columns (sorted by ts), before they are written as lines.

    Categorical columns hold indices into ``PROVIDERS``, ``USE_CASES``, ``GROUPS``,
    ``models``, ``wallets`` and ``sessions``; ``anomaly`` is an index into
    ``ANOMALY_KINDS`` or -1. ``score`` is the intended score (3 decimals); legacy rows
    carry it as a star rating, so they read back within 0.00125 of it.
    """

    cfg: SimConfig
    ts_ms: np.ndarray
    provider: np.ndarray
    model: np.ndarray
    use_case: np.ndarray
    group: np.ndarray
    wallet: np.ndarray
    session: np.ndarray
    credits: np.ndarray
    score: np.ndarray
    latency_ms: np.ndarray
    output_chars: np.ndarray
    output_tokens: np.ndarray
    legacy: np.ndarray
    anomaly: np.ndarray
    models: list[str]
    wallets: list[str]
    sessions: list[str]
    wallet_group: np.ndarray
    session_group: np.ndarray
    wallet_offsets: np.ndarray  # (wallets, providers)
    drop: dict[str, Any] | None

    @property
    def ids(self) -> list[str]:
        return [f"sim-{self.cfg.seed}-{i}" for i in range(len(self.ts_ms))]


def simulate(cfg: SimConfig) -> tuple[list[bytes], dict]:
    """The ledger lines (without newline) and the truth dict for ``cfg``."""
    sim = generate(cfg)
    valid = render(sim)
    lines, bad_lines = _mix_bad_lines(sim, valid)
    return lines, truth_of(sim, bad_lines)


def write(
    cfg: SimConfig,
    out: Path,
    truth: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write the ledger to ``out`` (and the truth JSON to ``truth``); return a summary.

    Each file is written beside its target and renamed into place, so a reader never sees
    half a ledger. ``progress`` is called with the number of lines written so far.
    """
    started = time.perf_counter()
    out = Path(out)
    lines, facts = simulate(cfg)
    write_atomically(out, _chunks(lines, progress))
    if truth is not None:
        write_atomically(Path(truth), orjson.dumps(facts, option=orjson.OPT_INDENT_2))
    kinds = {kind: 0 for kind in ANOMALY_KINDS}
    for kind in facts["anomalies"].values():
        kinds[kind] += 1
    bad_kinds = {kind: 0 for kind in BAD_KINDS}
    for kind in facts["bad_lines"].values():
        bad_kinds[kind] += 1
    return {
        "out": str(out),
        "truth": None if truth is None else str(truth),
        "rows": len(lines),
        "valid": facts["valid_rows"],
        "bad": len(facts["bad_lines"]),
        "anomalies": len(facts["anomalies"]),
        "anomaly_kinds": kinds,
        "bad_kinds": bad_kinds,
        "legacy": facts["legacy_rows"],
        "wallets": len(facts["groups"]),
        "sessions": len(facts["session_groups"]),
        "drop": facts["drop"],
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --- generation -------------------------------------------------------------------------


def generate(cfg: SimConfig) -> Simulation:
    """The valid rows of ``cfg`` as columns, with everything the truth needs."""
    cfg.check()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)]
    r_struct, r_mix, r_anomaly, r_stats, r_drop, r_legacy = streams
    n = cfg.rows
    period_ms = int(round(cfg.days * 86_400_000))
    start_ms = int(round(cfg.start_ts * 1000))

    wallet_group, session_wallet, lengths = _wallets_and_sessions(r_struct, n)
    n_wallets, n_sessions = len(wallet_group), len(lengths)
    session_group = wallet_group[session_wallet]
    row_session = np.repeat(np.arange(n_sessions), lengths)
    session_first = np.cumsum(lengths) - lengths
    group = session_group[row_session]
    wallet = session_wallet[row_session]

    # Times: a diurnal session start, then 2 s + Exp(gap) between calls.
    gap = MIN_GAP_S + r_struct.exponential(1.0, n) * _persona_array("gap_s")[group]
    first = np.zeros(n, dtype=bool)
    first[session_first] = True
    gap[first] = 0.0
    offset = np.cumsum(gap)
    offset -= offset[session_first][row_session]
    duration = offset[session_first + lengths - 1] if n else np.zeros(0)
    hours = np.arange(24)
    diurnal = 0.6 + 0.4 * np.cos(2 * np.pi * (hours - 15) / 24)
    day = r_struct.integers(0, max(1, math.ceil(cfg.days)), n_sessions)
    hour = r_struct.choice(24, n_sessions, p=diurnal / diurnal.sum())
    begin = (day * 86_400 + hour * 3600 + r_struct.random(n_sessions) * 3600) * 1000.0
    begin = np.maximum(np.minimum(begin, period_ms - duration * 1000.0 - 1000.0), 0.0)
    rel_ms = np.floor(begin[row_session] + offset * 1000.0).astype(np.int64)
    ts_ms = start_ms + np.clip(rel_ms, 0, period_ms - 1)

    # Use case and provider: a session's primary, kept with some probability per call.
    uc_mix = _mix_matrix("use_cases", USE_CASES)
    prov_mix = _mix_matrix("providers", PROVIDERS)
    uc_primary = _categorical(r_mix, uc_mix[session_group])
    prov_primary = _categorical(r_mix, prov_mix[session_group])
    use_case = np.where(
        r_mix.random(n) < KEEP_USE_CASE, uc_primary[row_session], _categorical(r_mix, uc_mix[group])
    )
    provider = np.where(
        r_mix.random(n) < KEEP_PROVIDER,
        prov_primary[row_session],
        _categorical(r_mix, prov_mix[group]),
    )

    order = np.argsort(ts_ms, kind="stable")
    ts_ms, group, wallet, use_case, provider = (
        a[order] for a in (ts_ms, group, wallet, use_case, provider)
    )
    row_session = row_session[order]

    # Anomalies: unusual providers first, as everything else about those rows is normal.
    anomaly = np.full(n, -1, dtype=np.int8)
    counts = _split(int(round(cfg.anomaly_rate * n)), len(ANOMALY_KINDS), r_anomaly)
    perm = r_anomaly.permutation(n)
    taken = np.zeros(n, dtype=bool)
    kind_of = {kind: i for i, kind in enumerate(ANOMALY_KINDS)}
    unusual = _take(perm, taken, None, counts[kind_of["unusual_provider"]])
    anomaly[unusual] = kind_of["unusual_provider"]
    never = ~(prov_mix > 0)  # (groups, providers)
    pick = r_anomaly.random(len(unusual))
    for g in range(len(GROUPS)):
        rows = unusual[group[unusual] == g]
        options = np.flatnonzero(never[g])
        provider[rows] = options[(pick[: len(rows)] * len(options)).astype(int)]
        pick = pick[len(rows) :]
    true = np.array([[TRUE_SCORES[u][p] for p in PROVIDERS] for u in USE_CASES])
    eligible = true[use_case, provider] >= LOW_SCORE_ELIGIBLE
    low = _take(perm, taken, eligible, counts[kind_of["low_score"]])
    anomaly[low] = kind_of["low_score"]
    for kind in ("long_output", "short_output", "extreme_latency", "credits_off"):
        rows = _take(perm, taken, None, counts[kind_of[kind]])
        anomaly[rows] = kind_of[kind]
    if counts[kind_of["low_score"]] > len(low):  # too few eligible rows (tiny ledgers)
        rest = _take(perm, taken, None, counts[kind_of["low_score"]] - len(low))
        anomaly[rest] = kind_of["long_output"]

    # Normal measures, drawn for every row in the same order whatever the anomalies.
    specs = [PROVIDER_SPECS[p] for p in PROVIDERS]
    models = [m.name for s in specs for m in s.models]
    model_first = np.cumsum([0] + [len(s.models) for s in specs])[:-1]
    model_cum = np.zeros((len(PROVIDERS), max(len(s.models) for s in specs)))
    for i, s in enumerate(specs):
        w = np.array([m.weight for m in s.models])
        model_cum[i] = np.pad(np.cumsum(w / w.sum()), (0, model_cum.shape[1] - len(w)), "edge")
    model_cum[:, -1] = 1.0
    local_model = (r_stats.random(n)[:, None] >= model_cum[provider]).sum(axis=1)
    model = model_first[provider] + local_model
    credits_factor = np.array([m.credits_factor for s in specs for m in s.models])
    latency_factor = np.array([m.latency_factor for s in specs for m in s.models])

    lat_med = np.array([s.latency_ms for s in specs])
    cred_med = np.array([s.credits for s in specs])
    out_med = np.array([s.output_chars for s in specs])
    lat_sd = np.array([s.latency_sigma for s in specs])
    cred_sd = np.array([s.credits_sigma for s in specs])
    out_sd = np.array([s.output_sigma for s in specs])
    z = r_stats.standard_normal((4, n))
    latency = lat_med[provider] * latency_factor[model] * np.exp(lat_sd[provider] * z[0])
    credits = cred_med[provider] * credits_factor[model] * np.exp(cred_sd[provider] * z[1])
    uc_out = np.array([USE_CASE_OUTPUT[u] for u in USE_CASES])
    output = (
        out_med[provider]
        * uc_out[use_case]
        * _persona_array("output_factor")[group]
        * np.exp(out_sd[provider] * z[2])
    )
    output = np.maximum(np.rint(output), MIN_OUTPUT_CHARS)
    chars_per_token = r_stats.uniform(3.6, 4.4, n)
    offsets = np.round(r_stats.normal(0.0, WALLET_OFFSET_SD, (n_wallets, len(PROVIDERS))), 4)
    score = true[use_case, provider] + offsets[wallet, provider] + SCORE_NOISE_SD * z[3]

    # The quality drop.
    choice = DROP_CANDIDATES[int(r_drop.integers(len(DROP_CANDIDATES)))]
    onset_ms = start_ms + int(period_ms * r_drop.uniform(*DROP_WINDOW))
    drop = None
    if cfg.drop:
        p, u = PROVIDERS.index(choice[0]), USE_CASES.index(choice[1])
        cell = (provider == p) & (use_case == u)
        after = cell & (ts_ms >= onset_ms)
        score = score - DROP_SIZE * after
        drop = {
            "provider": choice[0],
            "use_case": choice[1],
            "onset_ts": onset_ms / 1000.0,
            "onset_iso": _iso(onset_ms),
            "size": DROP_SIZE,
            "true_before": TRUE_SCORES[choice[1]][choice[0]],
            "true_after": round(TRUE_SCORES[choice[1]][choice[0]] - DROP_SIZE, 4),
            "rows_before": int((cell & ~after).sum()),
            "rows_after": int(after.sum()),
        }
    score = np.round(np.clip(score, 0.0, 1.0), 3)

    # Plant the measure anomalies.
    factor = r_anomaly.random(n)
    rows = anomaly == kind_of["long_output"]
    output[rows] = np.rint(out_med[provider[rows]] * (30 + 70 * factor[rows]))
    rows = anomaly == kind_of["short_output"]
    output[rows] = 1 + np.floor(5 * factor[rows])
    rows = anomaly == kind_of["low_score"]
    score[rows] = np.round(0.005 + 0.045 * factor[rows], 3)
    rows = anomaly == kind_of["extreme_latency"]
    latency[rows] = lat_med[provider[rows]] * (20 + 40 * factor[rows])
    rows = anomaly == kind_of["credits_off"]
    credits[rows] = cred_med[provider[rows]] * (20 + 30 * factor[rows])

    output = output.astype(np.int64)
    tokens = np.maximum(np.rint(output / chars_per_token), 1).astype(np.int64)
    latency = np.maximum(np.rint(latency), 1).astype(np.int64)
    credits = np.maximum(np.round(credits, 4), 0.0001)

    return Simulation(
        cfg=cfg,
        ts_ms=ts_ms,
        provider=provider,
        model=model,
        use_case=use_case,
        group=group,
        wallet=wallet,
        session=row_session,
        credits=credits,
        score=score,
        latency_ms=latency,
        output_chars=output,
        output_tokens=tokens,
        legacy=r_legacy.random(n) < cfg.legacy_rate,
        anomaly=anomaly,
        models=models,
        wallets=[
            "THR" + hashlib.sha256(b"wallet:%d:%d" % (cfg.seed, i)).hexdigest()[:40]
            for i in range(n_wallets)
        ],
        sessions=[f"sess-{cfg.seed}-{k}" for k in range(n_sessions)],
        wallet_group=wallet_group,
        session_group=session_group,
        wallet_offsets=offsets,
        drop=drop,
    )


def _wallets_and_sessions(rng: np.random.Generator, n: int):
    """Wallet personas, each session's wallet, and session lengths summing to exactly n."""
    share = _persona_array("wallet_share")
    mean_rows = float((share * _persona_array("sessions") * _persona_array("calls")).sum())
    groups, session_wallets, lengths = [], [], []
    total, wallets = 0, 0
    while total < n:
        k = max(64, int((n - total) / mean_rows * 1.1) + 1)
        g = rng.choice(len(GROUPS), k, p=share / share.sum())
        sessions = 1 + rng.poisson(_persona_array("sessions")[g] - 1.0)
        s_group = np.repeat(g, sessions)
        lo = np.array([PERSONAS[x].calls_range[0] for x in GROUPS])[s_group]
        hi = np.array([PERSONAS[x].calls_range[1] for x in GROUPS])[s_group]
        raw = np.exp(
            np.log(_persona_array("calls")[s_group])
            + SESSION_LENGTH_SIGMA * rng.standard_normal(len(s_group))
        )
        groups.append(g)
        session_wallets.append(wallets + np.repeat(np.arange(k), sessions))
        lengths.append(np.clip(np.rint(raw), lo, hi).astype(np.int64))
        total += int(lengths[-1].sum())
        wallets += k
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    wallet_group = np.concatenate(groups)
    session_wallet = np.concatenate(session_wallets)
    length = np.concatenate(lengths)
    keep = int(np.searchsorted(np.cumsum(length), n)) + 1  # sessions needed to reach n rows
    length = length[:keep].copy()
    length[-1] -= int(length.sum()) - n
    session_wallet = session_wallet[:keep]
    return wallet_group[: int(session_wallet[-1]) + 1], session_wallet, length


def _persona_array(name: str) -> np.ndarray:
    return np.array([getattr(PERSONAS[g], name) for g in GROUPS], dtype=float)


def _mix_matrix(name: str, labels: tuple[str, ...]) -> np.ndarray:
    mix = np.array([[getattr(PERSONAS[g], name).get(x, 0.0) for x in labels] for g in GROUPS])
    return mix / mix.sum(axis=1, keepdims=True)


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (rows sum to 1)."""
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    draws = (rng.random(len(probs))[:, None] >= cum).sum(axis=1)
    return np.minimum(draws, probs.shape[1] - 1)


def _split(total: int, parts: int, rng: np.random.Generator) -> list[int]:
    counts = [total // parts] * parts
    for i in rng.permutation(parts)[: total % parts]:
        counts[int(i)] += 1
    return counts


def _take(perm: np.ndarray, taken: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    """The next k untaken (and allowed) rows in the order ``perm``; marks them taken."""
    free = ~taken[perm]
    if allowed is not None:
        free &= allowed[perm]
    rows = perm[free][:k]
    taken[rows] = True
    return np.sort(rows)


def _iso(ms: int | np.ndarray) -> Any:
    text = np.datetime_as_string(np.asarray(ms, dtype="datetime64[ms]"), unit="ms", timezone="UTC")
    return str(text) if np.ndim(text) == 0 else text


# --- rendering --------------------------------------------------------------------------

SPEC_LINE = (
    '{"id":"%s","ts":%s,"provider":"%s","model":"%s","prompt_hash":"%s","output_hash":"%s",'
    '"session_id":"%s","wallet":"%s","credits_used":%r,"score":%r,"meta":{"use_case":"%s",'
    '"latency_ms":%d,"output_chars":%d,"output_tokens":%d}}'
)
LEGACY_LINE = (
    '{"interaction_id":"%s","timestamp":%r,"provider":"%s","model_id":"%s","session_id":"%s",'
    '"wallet":"%s","credits_used":%r,"metadata":{"use_case":"%s","output_chars":%d,'
    '"rating":%r},%s,"success":true}'
)


def render(sim: Simulation) -> list[bytes]:
    """The valid rows as ledger lines, in ts order."""
    n = len(sim.ts_ms)
    rng = np.random.default_rng(np.random.SeedSequence([sim.cfg.seed, 0x7E4D]))
    ts_style = rng.integers(0, 3, n)  # 0 ISO, 1 epoch seconds, 2 epoch milliseconds
    duration_style = rng.random(n) < 0.5
    seed = sim.cfg.seed
    providers = np.array(PROVIDERS, dtype=object)
    use_cases = np.array(USE_CASES, dtype=object)
    models = np.array(sim.models, dtype=object)
    wallets = np.array(sim.wallets, dtype=object)
    sessions = np.array(sim.sessions, dtype=object)
    lines = np.empty(n, dtype=object)
    sha = hashlib.sha256

    idx = np.flatnonzero(~sim.legacy)
    ts_text = np.empty(len(idx), dtype=object)
    style = ts_style[idx]
    ms = sim.ts_ms[idx]
    ts_text[style == 0] = [f'"{s}"' for s in _iso(ms[style == 0]).tolist()]
    ts_text[style == 1] = [repr(t) for t in (ms[style == 1] / 1000.0).tolist()]
    ts_text[style == 2] = [str(t) for t in ms[style == 2].tolist()]
    lines[idx] = [
        (
            SPEC_LINE
            % (
                f"sim-{seed}-{i}",
                ts,
                p,
                m,
                sha(b"prompt:%d:%d" % (seed, i)).hexdigest(),
                sha(b"output:%d:%d:%d" % (seed, i, chars)).hexdigest(),
                s,
                w,
                c,
                sc,
                u,
                lat,
                chars,
                tok,
            )
        ).encode()
        for i, ts, p, m, s, w, c, sc, u, lat, chars, tok in zip(
            idx.tolist(),
            ts_text.tolist(),
            providers[sim.provider[idx]].tolist(),
            models[sim.model[idx]].tolist(),
            sessions[sim.session[idx]].tolist(),
            wallets[sim.wallet[idx]].tolist(),
            sim.credits[idx].tolist(),
            sim.score[idx].tolist(),
            use_cases[sim.use_case[idx]].tolist(),
            sim.latency_ms[idx].tolist(),
            sim.output_chars[idx].tolist(),
            sim.output_tokens[idx].tolist(),
            strict=True,
        )
    ]

    idx = np.flatnonzero(sim.legacy)
    rating = np.maximum(np.round(1.0 + 4.0 * sim.score[idx], 2), 1.01)
    lat = sim.latency_ms[idx]
    latency_text = np.where(
        duration_style[idx],
        np.array([f'"duration":{x / 1000.0!r}' for x in lat.tolist()], dtype=object),
        np.array([f'"latency_ms":{x}' for x in lat.tolist()], dtype=object),
    )
    lines[idx] = [
        (LEGACY_LINE % (f"sim-{seed}-{i}", ts, p, m, s, w, c, u, chars, rt, lt)).encode()
        for i, ts, p, m, s, w, c, u, chars, rt, lt in zip(
            idx.tolist(),
            (sim.ts_ms[idx] / 1000.0).tolist(),
            providers[sim.provider[idx]].tolist(),
            models[sim.model[idx]].tolist(),
            sessions[sim.session[idx]].tolist(),
            wallets[sim.wallet[idx]].tolist(),
            sim.credits[idx].tolist(),
            use_cases[sim.use_case[idx]].tolist(),
            sim.output_chars[idx].tolist(),
            rating.tolist(),
            latency_text.tolist(),
            strict=True,
        )
    ]
    return lines.tolist()


def _mix_bad_lines(sim: Simulation, valid: list[bytes]) -> tuple[list[bytes], dict[str, str]]:
    """Valid lines with the bad ones inserted at random places; {line number: kind}."""
    cfg = sim.cfg
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xBAD]))
    n_bad = int(round(cfg.bad_rate * cfg.rows))
    if n_bad == 0:
        return valid, {}
    total = len(valid) + n_bad
    positions = np.sort(rng.choice(total, n_bad, replace=False))
    kinds = np.resize(np.arange(len(BAD_KINDS)), n_bad)
    rng.shuffle(kinds)
    lines: list[bytes] = []
    bad: dict[str, str] = {}
    done = 0
    for k, (pos, kind) in enumerate(zip(positions.tolist(), kinds.tolist(), strict=True)):
        lines.extend(valid[done : done + pos - len(lines)])
        done = pos - k
        lines.append(_bad_line(sim, rng, k, BAD_KINDS[kind]))
        bad[str(pos + 1)] = BAD_KINDS[kind]
    lines.extend(valid[done:])
    return lines, bad


def _bad_line(sim: Simulation, rng: np.random.Generator, k: int, kind: str) -> bytes:
    cfg = sim.cfg
    if len(sim.ts_ms):
        j = int(rng.integers(len(sim.ts_ms)))
        ts_ms, provider = int(sim.ts_ms[j]), PROVIDERS[int(sim.provider[j])]
        model, use_case = sim.models[int(sim.model[j])], USE_CASES[int(sim.use_case[j])]
        session, wallet = sim.sessions[int(sim.session[j])], sim.wallets[int(sim.wallet[j])]
        credits, score = float(sim.credits[j]), float(sim.score[j])
        latency, chars = int(sim.latency_ms[j]), int(sim.output_chars[j])
    else:
        ts_ms = int(round(cfg.start_ts * 1000))
        provider, model, use_case = "claude", "claude-sonnet", "chat"
        session, wallet, credits, score, latency, chars = "sess-x", "THR0", 1.0, 0.5, 900, 300
    row: dict[str, Any] = {
        "id": f"sim-{cfg.seed}-bad-{k}",
        "ts": _iso(ts_ms),
        "provider": provider,
        "model": model,
        "prompt_hash": hashlib.sha256(b"bad-prompt:%d:%d" % (cfg.seed, k)).hexdigest(),
        "output_hash": hashlib.sha256(b"bad-output:%d:%d" % (cfg.seed, k)).hexdigest(),
        "session_id": session,
        "wallet": wallet,
        "credits_used": credits,
        "score": score,
        "meta": {"use_case": use_case, "latency_ms": latency, "output_chars": chars},
    }
    if kind == "not_json":
        if rng.random() < 0.5:
            text = f"{row['ts']} WARN ledger write failed provider={provider} credits={credits}"
        else:
            text = f"id={row['id']} provider={provider} score={score} session={session}"
        return text.encode()
    if kind == "json_array":
        return orjson.dumps([row])
    if kind == "missing_provider":
        del row["provider"]
    elif kind == "ts_unreadable":
        row["ts"] = "yesterday"
    elif kind == "nan_score":
        row["score"] = "@NAN@"
        return orjson.dumps(row).replace(b'"@NAN@"', b"NaN")
    elif kind == "ts_out_of_range":
        row["ts"] = int(rng.integers(1, 10**6))  # a counter, not a time
    elif kind == "provider_empty":
        row["provider"] = " "
    elif kind == "truncated_json":
        full = orjson.dumps(row)
        return full[: int(rng.integers(8, len(full) - 1))]
    return orjson.dumps(row)


# --- truth ------------------------------------------------------------------------------


def truth_of(sim: Simulation, bad_lines: dict[str, str]) -> dict[str, Any]:
    """The planted ground truth, JSON-serialisable (string keys throughout)."""
    n = len(sim.ts_ms)
    ids = np.flatnonzero(sim.anomaly >= 0)
    seed = sim.cfg.seed
    return {
        "config": asdict(sim.cfg),
        "period": {
            "start_ts": sim.cfg.start_ts,
            "end_ts": sim.cfg.start_ts + sim.cfg.days * 86_400,
            "first_ts": float(sim.ts_ms[0] / 1000.0) if n else None,
            "last_ts": float(sim.ts_ms[-1] / 1000.0) if n else None,
        },
        "providers": {
            name: {
                "models": {m.name: asdict(m) for m in spec.models},
                "latency_ms_median": spec.latency_ms,
                "latency_sigma": spec.latency_sigma,
                "credits_median": spec.credits,
                "credits_sigma": spec.credits_sigma,
                "output_chars_median": spec.output_chars,
                "output_sigma": spec.output_sigma,
            }
            for name, spec in PROVIDER_SPECS.items()
        },
        "use_cases": {u: {"output_factor": USE_CASE_OUTPUT[u]} for u in USE_CASES},
        "personas": {
            g: {**asdict(p), "calls_range": list(p.calls_range)} for g, p in PERSONAS.items()
        },
        "groups": {
            w: GROUPS[g] for w, g in zip(sim.wallets, sim.wallet_group.tolist(), strict=True)
        },
        "session_groups": {
            s: GROUPS[g] for s, g in zip(sim.sessions, sim.session_group.tolist(), strict=True)
        },
        "true_scores": TRUE_SCORES,
        "score_noise_sd": SCORE_NOISE_SD,
        "wallet_offset_sd": WALLET_OFFSET_SD,
        "wallet_offsets": {
            w: dict(zip(PROVIDERS, row, strict=True))
            for w, row in zip(sim.wallets, sim.wallet_offsets.tolist(), strict=True)
        },
        "popular_vs_best": _popular_vs_best(sim),
        "anomalies": {
            f"sim-{seed}-{i}": ANOMALY_KINDS[k]
            for i, k in zip(ids.tolist(), sim.anomaly[ids].tolist(), strict=True)
        },
        "bad_lines": bad_lines,
        "drop": sim.drop,
        "valid_rows": n,
        "legacy_rows": int(sim.legacy.sum()),
    }


def _popular_vs_best(sim: Simulation) -> dict[str, Any]:
    normal = sim.anomaly < 0
    counts = np.zeros((len(USE_CASES), len(PROVIDERS)), dtype=np.int64)
    np.add.at(counts, (sim.use_case[normal], sim.provider[normal]), 1)
    result = {}
    for u, name in enumerate(USE_CASES):
        total = int(counts[u].sum())
        if not total:
            continue
        shares = counts[u] / total
        used = [p for p in range(len(PROVIDERS)) if shares[p] >= POPULAR_MIN_SHARE]
        best = max(used, key=lambda p: TRUE_SCORES[name][PROVIDERS[p]])
        result[name] = {
            "popular": PROVIDERS[int(np.argmax(counts[u]))],
            "best": PROVIDERS[best],
            "rows": dict(zip(PROVIDERS, counts[u].tolist(), strict=True)),
        }
    return result


# --- writing ----------------------------------------------------------------------------

WRITE_CHUNK = 100_000


def _chunks(lines: list[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """The lines in chunks, telling ``progress`` how many are written so far."""
    for i in range(0, len(lines), WRITE_CHUNK):
        yield b"\n".join(lines[i : i + WRITE_CHUNK]) + b"\n"
        if progress is not None:
            progress(min(i + WRITE_CHUNK, len(lines)))
    if progress is not None and not lines:
        progress(0)


__all__ = [
    "ANOMALY_KINDS",
    "BAD_KINDS",
    "GROUPS",
    "PROVIDERS",
    "USE_CASES",
    "SimConfig",
    "Simulation",
    "generate",
    "render",
    "simulate",
    "write",
]
