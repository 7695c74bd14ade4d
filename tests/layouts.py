"""The same synthetic interactions written in each ledger layout Thronos has, with planted truth.

Thronos writes four layouts, plus score events apart:

* ``spec`` (``ai_ledger.jsonl``): ``ts`` ISO 8601 with ``Z``, ``credits_used``, ``score``
  and ``meta: {use_case, latency_ms, output_chars}``;
* ``legacy`` (``ai_interactions.log``): ``timestamp`` epoch seconds, ``duration`` and
  ``latency_ms``, a rating in ``metadata.rating`` or ``metadata.user_rating``, as 1-5 stars
  (integers) or on 0..1 (floats), and sometimes ``preview``, raw output text;
* ``server`` (``ai_interactions.jsonl``): ``timestamp`` epoch ms, ``user_wallet``, tokens,
  ``cost_usd``, ``ai_credits_spent``, ``feedback``/``eval``/``user_rating`` and ``preview``;
* ``v4`` (``ai_interactions_v4.jsonl``): ``created_at`` epoch ms, ``provider_id``, tokens
  and ``cost_est``, no score and no use case: those come as score events
  (``ai_scores.jsonl``: ``interaction_id``, ``quality_score``, ``domain_label``, ...).

Planted: 4 providers, 3 use cases, each with a best provider by a clear margin (mean score
0.85 against at most 0.65, row noise N(0, 0.08)); the best is not always the most used.
60 wallets, each with a few sessions of a few calls. Lognormal latency, tokens and output
length per provider and model; cost from per-model token prices, credits from cost.

Deterministic: the same ``n`` and ``seed`` give the same interactions, and each writer the
same bytes. Used by ``tests/test_layouts.py`` and ``benchmarks/ledgers.py``.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import pandas as pd

from thronos_analytics.core.contract import Row

N = 3000
SEED = 7
WALLETS = 60
PROVIDERS = ("claude", "gpt", "gemini", "mistral")
USE_CASES = ("coding", "research", "writing")
MEANS: dict[str, dict[str, float]] = {
    "coding": {"claude": 0.85, "gpt": 0.65, "gemini": 0.60, "mistral": 0.55},
    "research": {"claude": 0.65, "gpt": 0.62, "gemini": 0.85, "mistral": 0.55},
    "writing": {"claude": 0.65, "gpt": 0.85, "gemini": 0.58, "mistral": 0.62},
}
NOISE_SD = 0.08
# gpt is the most used everywhere: a ranking by popularity gets two use cases of three wrong.
POPULARITY = {"claude": 0.25, "gpt": 0.35, "gemini": 0.25, "mistral": 0.15}
KEEP_PROVIDER = 0.7
KEEP_USE_CASE = 0.8
START = datetime(2025, 11, 3, tzinfo=UTC).timestamp()
DAYS = 14


class ModelSpec(NamedTuple):
    name: str
    model_id: str
    weight: float
    usd_in: float  # per million tokens
    usd_out: float
    latency_factor: float


MODELS: dict[str, tuple[ModelSpec, ...]] = {
    "claude": (
        ModelSpec("claude-sonnet-4", "claude-sonnet-4-20250514", 0.7, 3.0, 15.0, 1.0),
        ModelSpec("claude-3-5-haiku", "claude-3-5-haiku-20241022", 0.3, 0.8, 4.0, 0.6),
    ),
    "gpt": (
        ModelSpec("gpt-4o", "gpt-4o-2024-08-06", 0.6, 2.5, 10.0, 1.0),
        ModelSpec("gpt-4o-mini", "gpt-4o-mini-2024-07-18", 0.4, 0.15, 0.6, 0.7),
    ),
    "gemini": (
        ModelSpec("gemini-1.5-pro", "gemini-1.5-pro-002", 0.6, 1.25, 5.0, 1.0),
        ModelSpec("gemini-1.5-flash", "gemini-1.5-flash-002", 0.4, 0.075, 0.3, 0.6),
    ),
    "mistral": (
        ModelSpec("mistral-large", "mistral-large-2411", 0.5, 2.0, 6.0, 1.0),
        ModelSpec("mistral-small", "mistral-small-2409", 0.5, 0.2, 0.6, 0.7),
    ),
}
LATENCY_MS = {"claude": 1800.0, "gpt": 1200.0, "gemini": 1500.0, "mistral": 900.0}
OUTPUT_CHARS = {"claude": 2400.0, "gpt": 1800.0, "gemini": 2800.0, "mistral": 1200.0}
USE_CASE_OUTPUT = {"coding": 1.2, "research": 1.5, "writing": 1.3}
PROMPT_TOKENS = {"coding": 700.0, "research": 1500.0, "writing": 400.0}
USD_PER_CREDIT = 0.01
FAILURE_RATE = 0.02
PREVIEW_CHARS = 80
OPENINGS = {
    "coding": (
        "Here's a version of parse_config() that validates the keys before merging the "
        "defaults, so a typo fails loudly instead of being ignored.",
        "The race comes from reading the cursor outside the lock; moving the read into the "
        "critical section fixes it without slowing the hot path.",
    ),
    "research": (
        "Three studies measured the effect directly: the 2019 cohort found a modest gain, "
        "while the two later trials found none after adjusting for age.",
        "In short, the evidence for staking yield as a predictor of validator uptime is weak; "
        "the strongest correlation reported is 0.21 across 400 nodes.",
    ),
    "writing": (
        "Subject: Thronos node maintenance on Thursday. Dear validators, we will upgrade the "
        "RPC gateways between 02:00 and 03:00 UTC.",
        "Once upon a time, in a harbour town where the tide kept its own calendar, a "
        "lighthouse keeper started counting ships that never arrived.",
    ),
}
# The raw text that must never reach Redis or the export: each preview is a prefix of one.
PREVIEW_TEXTS = tuple(text[:PREVIEW_CHARS] for texts in OPENINGS.values() for text in texts)


class Interaction(NamedTuple):
    """One planted AI call, before any layout writes it."""

    id: str
    ts: float  # epoch seconds, millisecond resolution
    session_id: str
    wallet: str
    provider: str
    model: str
    model_id: str
    use_case: str
    score: float  # the planted score, 0..1, 3 decimals
    latency_ms: int
    tokens_in: int
    tokens_out: int
    output_chars: int
    credits: float
    cost_usd: float
    success: bool
    prompt_hash: str
    output_hash: str
    preview: str | None  # first 80 characters of the output, on some rows

    @property
    def ts_ms(self) -> int:
        return int(round(self.ts * 1000))


@dataclass(frozen=True)
class Truth:
    """What a writer planted: enough to check a parse or an export against."""

    layout: str
    interactions: tuple[Interaction, ...]
    # Files in the order to drain them (v4: interactions and score events).
    ledgers: tuple[Path, ...]
    lines: int
    best: dict[str, str] = field(default_factory=lambda: best_providers())
    means: dict[str, dict[str, float]] = field(default_factory=lambda: {**MEANS})
    # Interaction index -> fields written as null (spec only).
    nulls: dict[int, frozenset[str]] = field(default_factory=dict)
    rating_scale: str | None = None
    events: int = 0  # score events written, orphans included
    orphans: int = 0  # events whose interaction is in no file
    late: int = 0  # events written long after their interaction
    events_first: bool = False

    @property
    def rows(self) -> int:
        return len(self.interactions)

    @property
    def wallets(self) -> frozenset[str]:
        return frozenset(i.wallet for i in self.interactions)

    @property
    def sessions(self) -> frozenset[str]:
        return frozenset(i.session_id for i in self.interactions)

    def cells(self) -> dict[str, dict[str, int]]:
        """Rows with a score per use case and provider, as the recommender should count them."""
        out: dict[str, dict[str, int]] = {}
        for k, row in enumerate(self.interactions):
            if "score" in self.nulls.get(k, ()):
                continue
            cell = out.setdefault(row.use_case, {})
            cell[row.provider] = cell.get(row.provider, 0) + 1
        return out


def best_providers() -> dict[str, str]:
    return {uc: max(scores, key=scores.__getitem__) for uc, scores in MEANS.items()}


@functools.lru_cache(maxsize=8)
def generate(n: int = N, seed: int = SEED, wallets: int = WALLETS) -> tuple[Interaction, ...]:
    """``n`` interactions sorted by time: sessions of a few calls, every wallet with one."""
    rng = np.random.default_rng(seed)
    wallet_ids = [f"THR{rng.bytes(20).hex()}" for _ in range(wallets)]
    providers = np.array(PROVIDERS)
    # Each wallet has its own habits around the global ones, and its own activity level.
    provider_mix = rng.dirichlet([8 * POPULARITY[p] for p in PROVIDERS], size=wallets)
    use_case_mix = rng.dirichlet([2.0] * len(USE_CASES), size=wallets)
    activity = rng.lognormal(0.0, 0.6, size=wallets)
    activity /= activity.sum()
    out: list[Interaction] = []
    sessions = 0
    while len(out) < n:
        # The first sessions go one to each wallet, so every wallet appears.
        w = sessions if sessions < wallets else int(rng.choice(wallets, p=activity))
        sessions += 1
        session = _uuid(rng)
        calls = min(2 + int(rng.poisson(1.5)), 8, n - len(out))
        primary_uc = int(rng.choice(len(USE_CASES), p=use_case_mix[w]))
        primary_p = int(rng.choice(len(PROVIDERS), p=provider_mix[w]))
        ts = START + float(rng.uniform(0, DAYS * 86_400))
        for _ in range(calls):
            uc = USE_CASES[
                primary_uc if rng.random() < KEEP_USE_CASE else int(rng.integers(len(USE_CASES)))
            ]
            provider = str(
                providers[
                    primary_p
                    if rng.random() < KEEP_PROVIDER
                    else int(rng.choice(len(PROVIDERS), p=provider_mix[w]))
                ]
            )
            row = _call(rng, len(out), seed, ts, session, wallet_ids[w], provider, uc)
            out.append(row)
            ts += row.latency_ms / 1000 + 5 + float(rng.exponential(60))
    return tuple(sorted(out, key=lambda i: (i.ts, i.id)))


def _call(
    rng: np.random.Generator,
    k: int,
    seed: int,
    ts: float,
    session: str,
    wallet: str,
    provider: str,
    use_case: str,
) -> Interaction:
    specs = MODELS[provider]
    spec = specs[int(rng.choice(len(specs), p=[m.weight for m in specs]))]
    score = float(np.clip(MEANS[use_case][provider] + rng.normal(0, NOISE_SD), 0.0, 1.0))
    latency = LATENCY_MS[provider] * spec.latency_factor * rng.lognormal(0, 0.35)
    chars = OUTPUT_CHARS[provider] * USE_CASE_OUTPUT[use_case] * rng.lognormal(0, 0.45)
    tokens_out = max(1, int(round(chars / rng.uniform(3.6, 4.4))))
    tokens_in = max(8, int(round(PROMPT_TOKENS[use_case] * rng.lognormal(0, 0.5))))
    cost = (tokens_in * spec.usd_in + tokens_out * spec.usd_out) / 1e6
    texts = OPENINGS[use_case]
    text = texts[int(rng.integers(len(texts)))]
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
        prompt_hash=hashlib.sha256(f"prompt {seed} {k}".encode()).hexdigest(),
        output_hash=hashlib.sha256(f"output {seed} {k}".encode()).hexdigest(),
        preview=text[:PREVIEW_CHARS] if rng.random() < 0.4 else None,
    )


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _write(path: Path, objects: list[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objects))
    return len(objects)


def _stars(score: float) -> int:
    return int(np.clip(round(1 + 4 * score), 1, 5))


# --- the layouts -------------------------------------------------------------------------


def spec_line(row: Interaction) -> dict[str, Any]:
    return {
        "ts": _iso(row.ts),
        "provider": row.provider,
        "model": row.model,
        "prompt_hash": row.prompt_hash,
        "output_hash": row.output_hash,
        "session_id": row.session_id,
        "wallet": row.wallet,
        "credits_used": row.credits,
        "score": row.score,
        "meta": {
            "use_case": row.use_case,
            "latency_ms": row.latency_ms,
            "output_chars": row.output_chars,
        },
    }


def write_spec(path: Path, *, n: int = N, seed: int = SEED, null_rate: float = 0.0) -> Truth:
    """``ai_ledger.jsonl``. With ``null_rate``, that share of rows has a null ``score``,
    ``session_id`` or ``wallet`` (one of them, at random), as the spec allows."""
    rows = generate(n, seed)
    rng = np.random.default_rng([seed, 1])
    nulls: dict[int, frozenset[str]] = {}
    objects = []
    for k, row in enumerate(rows):
        obj = spec_line(row)
        if rng.random() < null_rate:
            name = ("score", "session_id", "wallet")[int(rng.integers(3))]
            obj[name] = None
            nulls[k] = frozenset({name})
        objects.append(obj)
    lines = _write(path, objects)
    return Truth("spec", rows, (path,), lines, nulls=nulls)


def legacy_line(row: Interaction, rating_scale: str, rating_key: str) -> dict[str, Any]:
    rating: float = _stars(row.score) if rating_scale == "stars" else round(row.score, 2)
    obj: dict[str, Any] = {
        "timestamp": row.ts,
        "provider": row.provider,
        "model": row.model,
        "model_id": row.model_id,
        "tier": "premium" if row.model == MODELS[row.provider][0].name else "standard",
        "prompt_hash": row.prompt_hash,
        "output_hash": row.output_hash,
        "duration": round(row.latency_ms / 1000, 3),
        "latency_ms": row.latency_ms,
        "session_id": row.session_id,
        "wallet": row.wallet,
        "difficulty": 4 + int(row.output_hash[0], 16) % 3,
        "block_hash": hashlib.sha256(row.id.encode()).hexdigest(),
        "error": None if row.success else "upstream timeout",
        "success": row.success,
        # output_chars: the length the old servers logged beside the rating.
        "metadata": {
            rating_key: rating,
            "use_case": row.use_case,
            "output_chars": row.output_chars,
        },
    }
    if row.preview is not None:
        obj["preview"] = row.preview
    return obj


def write_legacy(path: Path, rating_scale: str = "stars", *, n: int = N, seed: int = SEED) -> Truth:
    """``ai_interactions.log``: ratings as 1-5 stars (``"stars"``, integers) or on 0..1
    (``"unit"``, floats), alternately under ``rating`` and ``user_rating``."""
    if rating_scale not in ("stars", "unit"):
        raise ValueError(f"rating_scale is 'stars' or 'unit', not {rating_scale!r}")
    rows = generate(n, seed)
    keys = ("rating", "user_rating")
    objects = [legacy_line(row, rating_scale, keys[k % 2]) for k, row in enumerate(rows)]
    return Truth("legacy", rows, (path,), _write(path, objects), rating_scale=rating_scale)


def server_line(row: Interaction, rated: bool) -> dict[str, Any]:
    auto = float(np.clip(row.score + (int(row.output_hash[:4], 16) / 65535 - 0.5) * 0.04, 0, 1))
    routing = "direct" if row.model == MODELS[row.provider][0].name else "cost_optimized"
    return {
        "id": row.id,
        "timestamp": row.ts_ms,
        "session_id": row.session_id,
        "user_wallet": row.wallet,
        "provider": row.provider,
        "model": row.model,
        "input_hash": row.prompt_hash,
        "output_hash": row.output_hash,
        "tokens_input": row.tokens_in,
        "tokens_output": row.tokens_out,
        "cost_usd": row.cost_usd,
        "latency_ms": row.latency_ms,
        "ai_credits_spent": row.credits,
        "feedback": {"score": row.score, "tags": ["helpful"] if row.score >= 0.7 else []},
        "eval": {"auto_score": round(auto, 3), "notes": "rubric v2"},
        "metadata": {
            "status": "completed" if row.success else "error",
            "task_type": row.use_case,
            "routing": routing,
            "session_type": "chat",
            "billing_unit": "credits",
        },
        "success": row.success,
        "task_type": row.use_case,
        "routing": routing,
        "hallucination_flags": [] if row.score >= 0.5 else ["unsupported_claim"],
        "user_rating": _stars(row.score) if rated else None,
        "preview": row.preview,
    }


def write_server(path: Path, *, n: int = N, seed: int = SEED) -> Truth:
    """``ai_interactions.jsonl``; a third of the rows also carry a star ``user_rating``."""
    rows = generate(n, seed)
    rng = np.random.default_rng([seed, 2])
    objects = [server_line(row, bool(rng.random() < 1 / 3)) for row in rows]
    return Truth("server", rows, (path,), _write(path, objects))


def v4_line(row: Interaction) -> dict[str, Any]:
    return {
        "id": row.id,
        "session_id": row.session_id,
        "provider_id": row.provider,
        "model": row.model,
        "prompt_hash": row.prompt_hash,
        "response_hash": row.output_hash,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "latency_ms": row.latency_ms,
        "cost_est": row.cost_usd,
        "created_at": row.ts_ms,
        "user_wallet": row.wallet,
        "metadata": {"client": "web", "region": "eu-west-1", "sdk": "thronos-js/4.2.1"},
    }


def score_event(
    event_id: str, interaction_id: str, created_at: int, score: float, use_case: str, k: int
) -> dict[str, Any]:
    return {
        "id": event_id,
        "interaction_id": interaction_id,
        "quality_score": score,
        "safety_score": round(0.9 + (k % 97) / 970, 3),
        "domain_label": use_case,
        "model_decision": "accept" if score >= 0.6 else "review",
        "human_feedback": ("thumbs_up", None, None, "thumbs_down")[k % 4],
        "created_at": created_at,
    }


def write_v4(
    path: Path,
    scores_path: Path | None = None,
    *,
    late_fraction: float = 0.1,
    orphan_fraction: float = 0.0,
    events_first: bool = False,
    n: int = N,
    seed: int = SEED,
) -> Truth:
    """``ai_interactions_v4.jsonl`` and its score events, one per interaction.

    Most events come 0.2-5 s after their interaction; ``late_fraction`` of them 1 h to 3 days
    later. ``orphan_fraction`` (of ``n``) extra events name an interaction that is in no file.
    Events go to ``scores_path``, in time order; without one, into ``path``, mixed with the
    interactions by time. ``events_first``: every event is read before its interaction (a
    mixed file puts it just before; separate files are drained scores first).
    """
    rows = generate(n, seed)
    rng = np.random.default_rng([seed, 3])
    late = rng.random(len(rows)) < late_fraction
    # (sort key, line): an event sorts by its own time, or just before its interaction.
    lines: list[tuple[tuple[float, int], dict[str, Any]]] = []
    events: list[tuple[tuple[float, int], dict[str, Any]]] = []
    for k, row in enumerate(rows):
        lines.append(((row.ts, 1), v4_line(row)))
        delay = rng.uniform(3600, 3 * 86_400) if late[k] else 0.2 + rng.exponential(1.5)
        created = row.ts_ms + row.latency_ms + int(delay * 1000)
        event = score_event(_uuid(rng), row.id, created, row.score, row.use_case, k)
        events.append(((row.ts, 0) if events_first else (created / 1000, 2), event))
    orphans = int(round(orphan_fraction * len(rows)))
    for k in range(orphans):
        created = int((START + rng.uniform(0, DAYS * 86_400)) * 1000)
        score = round(float(rng.uniform(0.3, 0.9)), 3)
        use_case = USE_CASES[k % len(USE_CASES)]
        event = score_event(_uuid(rng), _uuid(rng), created, score, use_case, k)
        events.append(((created / 1000, 2), event))
    if scores_path is None:
        _write(path, [obj for _, obj in sorted(lines + events, key=lambda x: x[0])])
        ledgers: tuple[Path, ...] = (path,)
    else:
        _write(path, [obj for _, obj in lines])
        _write(scores_path, [obj for _, obj in sorted(events, key=lambda x: x[0])])
        ledgers = (scores_path, path) if events_first else (path, scores_path)
    return Truth(
        "v4",
        rows,
        ledgers,
        len(lines) + len(events),
        events=len(events),
        orphans=orphans,
        late=int(late.sum()),
        events_first=events_first,
    )


LAYOUT_FILES = {
    "spec": "ai_ledger.jsonl",
    "legacy": "ai_interactions.log",
    "server": "ai_interactions.jsonl",
    "v4": "ai_interactions_v4.jsonl",
}
SCORES_FILE = "ai_scores.jsonl"


def write_layout(layout: str, directory: Path, **kwargs: Any) -> Truth:
    """One layout into ``directory`` under the file name Thronos gives it. ``layout`` is
    ``spec``, ``legacy`` (``legacy-stars``, ``legacy-unit``), ``server`` or ``v4``."""
    name, _, variant = layout.partition("-")
    path = directory / LAYOUT_FILES[name]
    if name == "spec":
        return write_spec(path, **kwargs)
    if name == "legacy":
        return write_legacy(path, variant or "stars", **kwargs)
    if name == "server":
        return write_server(path, **kwargs)
    if name == "v4":
        return write_v4(path, directory / SCORES_FILE, **kwargs)
    raise ValueError(f"unknown layout {layout!r}")


ANOMALY_KINDS = ("latency", "empty_output", "credits", "score")


def plant_anomalies(rows: Sequence[Row], rate: float, seed: int) -> tuple[list[Row], np.ndarray]:
    """``rate`` of the rows made anomalous, the kinds in turn: latency x8-40, an empty
    output, credits x8-30, a score near 0 where the cell's is about 0.85; and which."""
    rng = np.random.default_rng(seed)
    out, truth = list(rows), np.zeros(len(rows), dtype=bool)
    for k, i in enumerate(rng.choice(len(rows), int(rate * len(rows)), replace=False)):
        row, kind = out[i], ANOMALY_KINDS[k % len(ANOMALY_KINDS)]
        if kind == "latency":
            row = row._replace(latency_ms=(row.latency_ms or 1000.0) * rng.uniform(8, 40))
        elif kind == "empty_output":
            row = row._replace(output_len=0.0)
        elif kind == "credits":
            row = row._replace(credits_used=row.credits_used * rng.uniform(8, 30))
        else:
            row = row._replace(score=float(rng.uniform(0.0, 0.1)))
        out[i], truth[i] = row, True
    return out, truth


def frame(n: int = N, seed: int = SEED) -> pd.DataFrame:
    """``generate(n, seed)`` as the training window's frame holds it: time, provider, use
    case, wallet, score, latency and credits, one row a call."""
    rows = generate(n, seed)
    return pd.DataFrame(
        {
            "ts": [r.ts for r in rows],
            "provider": [r.provider for r in rows],
            "use_case": [r.use_case for r in rows],
            "wallet": [r.wallet for r in rows],
            "score": [r.score for r in rows],
            "latency_ms": [float(r.latency_ms) for r in rows],
            "credits_used": [r.credits for r in rows],
        }
    )
