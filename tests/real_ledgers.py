"""Real LLM evaluation data written as the ledgers Thronos writes, with the truth the data gives.

The extracts in ``shared/real-ledger-data`` (see its README) are read straight from there:

* RouteLLM MMLU, per-question correctness of two models on 57 subjects, as **v4**
  interactions (``ai_interactions_v4.jsonl``) plus **score events** (``ai_scores.jsonl``):
  a subject is a use case, a model a provider, right or wrong a score of 1 or 0;
* RouteLLM MT-Bench, GPT-4 judge grades 1-10 (scaled to 0..1) per question and turn, as
  **server** rows (``ai_interactions.jsonl``) at the judge's own timestamps;
* llmperf, about 150 requests per run against 8 hosts, as **legacy** rows
  (``ai_interactions.log``) with their real latency, output tokens and failures.

What the sources lack (wallets, sessions, ids, hashes of text they do not have, per-call
times where they have none, latency for the evaluations) is made up from a hash of the
question or request id, never of the score, so nothing made up can favour a provider. Each
converter returns a :class:`RealTruth`: what it wrote, per call what a reader must get back,
and per use case the best provider by the data itself.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import orjson

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("THRONOS_REAL_DATA") or ROOT.parent / "shared" / "real-ledger-data")
ROUTELLM = "routellm.raw.jsonl.gz"
LLMPERF = "llmperf.raw.jsonl.gz"

MMLU_DIR = "routellm/evals/mmlu/responses/"
MT_BENCH_QUESTIONS = "routellm/evals/mt_bench/question.jsonl"
MT_BENCH_JUDGEMENTS = (
    "routellm/evals/mt_bench/judgements.jsonl",
    "benchmarks/mt-bench/gpt-4_single.jsonl",
)
LLMPERF_RUNS = "raw_data/individual/"

LAYOUT_FILES = {
    "v4": "ai_interactions_v4.jsonl",
    "scores": "ai_scores.jsonl",
    "server": "ai_interactions.jsonl",
    "legacy": "ai_interactions.log",
}
# Made-up time spans for sources with no time per call.
MMLU_START = datetime(2024, 5, 6, tzinfo=UTC).timestamp()
MMLU_DAYS = 14
# llmperf: per host, as each host was benchmarked by its own client.
WALLETS = {"mmlu": 120, "mt-bench": 24, "llmperf": 5}
SESSION_QUESTIONS = 8  # MMLU questions per made-up session, each asked of both models
LATE_FRACTION = 0.1
LATE_AFTER = 200  # a late event is written after this many later interactions
# Made-up median latency per provider (the evaluations did not time their calls).
LATENCY_MS = {
    "gpt-4-1106-preview": 2200.0,
    "mixtral-8x7b-instruct-v0.1": 900.0,
    "martian": 2600.0,
    "unify": 2400.0,
}
# USD per million tokens (in, out): OpenAI's list price for gpt-4-1106-preview and a
# typical hosted Mixtral price in 2024; the routers' prices are unknown, priced as gpt-4.
USD_PER_MTOK = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mixtral-8x7b-instruct-v0.1": (0.6, 0.6),
    "martian": (10.0, 30.0),
    "unify": (10.0, 30.0),
}
USD_PER_CREDIT = 0.01
CHARS_PER_TOKEN = 4.0  # no tokenizer here: text length / 4 is the usual estimate
ROUTERS = frozenset({"martian", "unify"})
PREVIEW_CHARS = 80
MT_BENCH_GRADES = (1.0, 10.0)  # FastChat writes -1 where it could not read the judge's grade

# Which fields are real, derived from real data, or made up; shown in docs/ledgers.md.
MMLU_FIELDS = (
    ("provider, model", "real: the model that answered"),
    ("use case (`domain_label`)", "real: the MMLU subject"),
    ("score (`quality_score`)", "real: 1.0 if the model's answer was right, else 0.0"),
    ("`prompt_hash`", "real: sha256 of the question text"),
    ("`tokens_in`", "derived: question length in characters / 4"),
    ("`cost_est`", "derived: tokens times list prices (`tokens_out` is made up)"),
    ("`tokens_out`, `latency_ms`, `response_hash`", "made up (no answer text or timing)"),
    (
        "`created_at`",
        f"made up: {MMLU_DAYS} days from 2024-05-06; events 0.2-5 s after their "
        f"interaction, {LATE_FRACTION:.0%} late (after {LATE_AFTER} later interactions)",
    ),
    ("`id`, `session_id`, `user_wallet`", "made up (8 questions a session)"),
)
MT_BENCH_FIELDS = (
    ("provider, model", "real: the model or router that answered"),
    ("use case (`task_type`)", "real: the MT-Bench category"),
    ("score (`eval.auto_score`)", "real: the GPT-4 judge's grade, (grade - 1) / 9"),
    ("`timestamp`", "real: the judge's timestamp (not the call's)"),
    ("`session_id`", "real structure: one session per question and model, both turns"),
    ("`preview`, `output_hash`, `input_hash`", "real: the answer's text and sha256s"),
    ("`tokens_input`, `tokens_output`", "derived: prompt and answer length / 4"),
    ("`cost_usd`, `ai_credits_spent`", "derived: tokens times list prices"),
    ("`latency_ms`", "made up (not timed)"),
    ("`id`, `user_wallet`", "made up"),
)
LLMPERF_FIELDS = (
    ("provider, `model_id`, `tier`", "real: the host, its model id and the model size"),
    ("`duration`, `latency_ms`", "real: `end_to_end_latency_s` (0 on a refused call)"),
    ("`metadata.output_tokens`, `input_tokens`, `ttft_ms`", "real"),
    ("`error`, `success`", "real: from `error_code` and `error_msg`"),
    ("`preview`, `output_hash`", "real where the run kept the text (`GEN_TEXT`, Bedrock)"),
    ("`timestamp`", "derived: run start and end are real, calls placed by 5 lanes between"),
    ("`session_id`, `wallet`, hashes, `difficulty`, `block_hash`", "made up"),
)


class Call(NamedTuple):
    """One real interaction as written: what a reader of the ledger must get back."""

    id: str
    provider: str
    use_case: str | None
    score: float | None  # on 0..1; None where the source has none
    latency_ms: float | None  # real only in llmperf
    output_len: float  # tokens
    success: bool


@dataclass(frozen=True)
class RealTruth:
    """What a converter wrote, and what the source data says."""

    name: str
    layout: str
    source: str  # repo@commit
    ledgers: tuple[Path, ...]  # in the order to drain them
    calls: tuple[Call, ...]  # in ledger order
    lines: int
    fields: tuple[tuple[str, str], ...]
    events: int = 0
    late: int = 0
    ungraded: int = 0  # judge grades that were not grades
    errors: Counter[Any] = field(default_factory=Counter)  # error code -> calls

    @property
    def rows(self) -> int:
        return len(self.calls)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    def cells(self) -> dict[str, dict[str, tuple[int, float]]]:
        """Per use case and provider: scored calls and mean score, from the data itself."""
        sums: dict[tuple[str, str], list[float]] = {}
        for call in self.calls:
            if call.use_case is not None and call.score is not None:
                sums.setdefault((call.use_case, call.provider), []).append(call.score)
        out: dict[str, dict[str, tuple[int, float]]] = {}
        for (use_case, provider), scores in sorted(sums.items()):
            out.setdefault(use_case, {})[provider] = (len(scores), sum(scores) / len(scores))
        return out

    def best(self) -> dict[str, tuple[str, float]]:
        """Per use case: the provider with the best mean score and its lead over the next."""
        out = {}
        for use_case, cells in self.cells().items():
            ranked = sorted(cells, key=lambda p: (-cells[p][1], p))
            lead = cells[ranked[0]][1] - cells[ranked[1]][1] if len(ranked) > 1 else 0.0
            out[use_case] = (ranked[0], lead)
        return out

    def clear_leads(self, margin: float = 0.1, min_n: int = 50) -> dict[str, str]:
        """Use cases whose best provider leads by more than ``margin``, every cell >= min_n."""
        cells = self.cells()
        return {
            use_case: best
            for use_case, (best, lead) in self.best().items()
            if lead > margin and min(n for n, _ in cells[use_case].values()) >= min_n
        }


def missing() -> str | None:
    """Why the real data cannot be read, or None."""
    absent = [name for name in (ROUTELLM, LLMPERF) if not (DATA / name).is_file()]
    if absent:
        return f"real ledger data not found: {', '.join(absent)} in {DATA} (set THRONOS_REAL_DATA)"
    return None


@functools.lru_cache(maxsize=2)
def extract(name: str) -> tuple[str, dict[str, str]]:
    """An extract's source (repo@commit) and its files' texts by path."""
    with gzip.open(DATA / name, "rb") as handle:
        first, *rest = handle.read().splitlines()
    source = orjson.loads(first)["_source"]
    files = {}
    for line in rest:
        entry = orjson.loads(line)
        files[entry["path"]] = entry["text"]
    return f"{source['repo']}@{source['commit']}", files


# --- deterministic made-up values, from a key that never holds a score ---------------------


def _digest(*key: object) -> bytes:
    return hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()


def _unit(*key: object) -> float:
    """Uniform in (0, 1)."""
    return (int.from_bytes(_digest(*key)[:8], "big") + 0.5) / 2**64


def _lognormal(median: float, sigma: float, *key: object) -> float:
    return median * math.exp(sigma * NormalDist().inv_cdf(_unit(*key)))


def _uuid(*key: object) -> str:
    return str(uuid.UUID(bytes=_digest(*key)[:16], version=4))


def _hex(*key: object) -> str:
    return _digest(*key).hex()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _wallet(kind: str, pool: str, *key: object) -> str:
    """One of ``WALLETS[kind]`` wallets of ``pool``, picked by ``key``."""
    index = int.from_bytes(_digest(kind, "wallet", *key)[:8], "big") % WALLETS[kind]
    return "THR" + hashlib.sha1(f"{kind} {pool} wallet {index}".encode()).hexdigest()


def _tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def _cost(provider: str, tokens_in: int, tokens_out: int) -> float:
    usd_in, usd_out = USD_PER_MTOK[provider]
    return round((tokens_in * usd_in + tokens_out * usd_out) / 1e6, 8)


def provider_name(model: str) -> str:
    """``mistralai/Mixtral-8x7B-Instruct-v0.1`` -> ``mixtral-8x7b-instruct-v0.1``."""
    return model.rsplit("/", 1)[-1].lower()


def _write(path: Path, objects: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps(obj) + b"\n" for obj in objects]
    path.write_bytes(b"".join(lines))
    return len(lines)


# --- RouteLLM MMLU: v4 interactions and score events ----------------------------------------


class Question(NamedTuple):
    id: str  # mmlu/<subject>/<row>
    subject: str
    prompt: str
    correct: dict[str, bool]  # model (as the CSV names it) -> answered right


def mmlu_subjects() -> list[str]:
    _, files = extract(ROUTELLM)
    return sorted(p[len(MMLU_DIR) + 5 : -4] for p in files if p.startswith(MMLU_DIR + "mmlu_"))


def mmlu_questions(subjects: Sequence[str] | None = None) -> list[Question]:
    _, files = extract(ROUTELLM)
    out = []
    for subject in subjects or mmlu_subjects():
        reader = csv.reader(io.StringIO(files[f"{MMLU_DIR}mmlu_{subject}.csv"]))
        _, *models = next(reader)
        for k, (prompt, *cells) in enumerate(reader):
            if set(cells) - {"True", "False"}:
                raise ValueError(f"mmlu_{subject}.csv row {k + 2}: correctness {cells}")
            correct = {m: c == "True" for m, c in zip(models, cells, strict=True)}
            out.append(Question(f"mmlu/{subject}/{k}", subject, prompt, correct))
    return out


def write_routellm_v4(
    directory: Path,
    subjects: Sequence[str] | None = None,
    *,
    late_fraction: float = LATE_FRACTION,
    one_file: bool = False,
) -> RealTruth:
    """MMLU as ``ai_interactions_v4.jsonl`` and ``ai_scores.jsonl`` (or, ``one_file``, both
    in the first, by time): each question asked of both models in a made-up session of
    eight, every call scored by one event, ``late_fraction`` of them late."""
    source, _ = extract(ROUTELLM)
    made: list[tuple[float, dict[str, Any], Call, str, bool]] = []
    for question in mmlu_questions(subjects):
        block, index = question.id.rsplit("/", 1)
        session_key = (block, int(index) // SESSION_QUESTIONS)
        start = MMLU_START + _unit("mmlu session start", *session_key) * MMLU_DAYS * 86_400
        asked = start + (int(index) % SESSION_QUESTIONS) * 90.0 * _unit("gap", question.id)
        tokens_in = _tokens(question.prompt)
        for model, right in question.correct.items():
            provider = provider_name(model)
            key = (question.id, provider)
            latency = max(80, round(_lognormal(LATENCY_MS[provider], 0.35, "latency", *key)))
            tokens_out = 1 + int(_unit("tokens out", *key) * 4)
            ts = round(asked + 2.0 * _unit("call offset", *key), 3)
            line = {
                "id": _uuid("mmlu interaction", *key),
                "session_id": _uuid("mmlu session", *session_key),
                "provider_id": provider,
                "model": model,
                "prompt_hash": _sha(question.prompt),
                "response_hash": _hex("mmlu response", *key),
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "latency_ms": latency,
                "cost_est": _cost(provider, tokens_in, tokens_out),
                "created_at": round(ts * 1000),
                "user_wallet": _wallet("mmlu", "", *session_key),
                "metadata": {"client": "eval", "sdk": "thronos-py/4.2.1"},
            }
            score = 1.0 if right else 0.0
            call = Call(line["id"], provider, question.subject, score, latency, tokens_out, True)
            late = _unit("late", *key) < late_fraction
            made.append((ts, line, call, question.id, late))
    made.sort(key=lambda m: (m[0], m[1]["id"]))
    interactions = [(m[1]["created_at"], 1, m[1]) for m in made]
    events = []
    for k, (ts, line, call, question_id, late) in enumerate(made):
        key = (question_id, call.provider)
        if late:  # after LATE_AFTER later interactions were written
            later = made[min(k + LATE_AFTER, len(made) - 1)][0]
            created = max(later, ts) + 60 + 3600 * _unit("late delay", *key)
        else:
            created = ts + line["latency_ms"] / 1000 + 0.2 + 4.8 * _unit("delay", *key)
        event = {
            "id": _uuid("mmlu event", *key),
            "interaction_id": line["id"],
            "quality_score": call.score,
            "safety_score": round(0.9 + 0.1 * _unit("safety", *key), 3),
            "domain_label": call.use_case,
            "model_decision": "accept" if call.score else "review",
            "human_feedback": None,
            "created_at": round(created * 1000),
        }
        events.append((event["created_at"], 2, event))
    directory.mkdir(parents=True, exist_ok=True)
    v4 = directory / LAYOUT_FILES["v4"]
    if one_file:  # by time; at a tie the interaction first
        _write(v4, [obj for *_, obj in sorted(interactions + events, key=_by_time)])
        ledgers: tuple[Path, ...] = (v4,)
    else:
        scores = directory / LAYOUT_FILES["scores"]
        _write(v4, [obj for *_, obj in interactions])
        _write(scores, [obj for *_, obj in sorted(events, key=_by_time)])
        ledgers = (v4, scores)
    return RealTruth(
        "RouteLLM MMLU",
        "v4",
        source,
        ledgers,
        tuple(m[2] for m in made),
        len(interactions) + len(events),
        MMLU_FIELDS,
        events=len(events),
        late=sum(m[4] for m in made),
    )


def _by_time(entry: tuple[int, int, dict[str, Any]]) -> tuple[int, int]:
    return entry[0], entry[1]


# --- RouteLLM MT-Bench: server rows graded by the judge -------------------------------------


class Judgement(NamedTuple):
    question_id: int
    model: str
    turn: int
    grade: float
    judge: str
    tstamp: float
    answer: str
    prompt: str  # what the model was asked at this turn, with the conversation before it


def mt_bench_judgements() -> list[Judgement]:
    _, files = extract(ROUTELLM)
    out = []
    for path in MT_BENCH_JUDGEMENTS:
        for line in files[path].splitlines():
            if not line.strip():
                continue
            record = orjson.loads(line)
            answer, prompt = _mt_bench_turn(record["user_prompt"], record["turn"])
            out.append(
                Judgement(
                    record["question_id"],
                    record["model"],
                    record["turn"],
                    float(record["score"]),
                    " ".join(record["judge"]),
                    float(record["tstamp"]),
                    answer,
                    prompt,
                )
            )
    return out


def _mt_bench_turn(user_prompt: str, turn: int) -> tuple[str, str]:
    """The answer the judge graded, and what the model was asked, from the judge's prompt."""
    if turn == 1:
        question = user_prompt.split("[Question]\n", 1)[1].split("\n\n[The ", 1)[0]
        answer = user_prompt.split("[The Start of Assistant's Answer]\n", 1)[1]
        return answer.rsplit("\n[The End of Assistant's Answer]", 1)[0].strip(), question
    conversation = user_prompt.split("<|The Start of Assistant A's Conversation with User|>", 1)[1]
    before, answer = conversation.rsplit("### Assistant A:\n", 1)
    answer = answer.rsplit("<|The End of Assistant A's Conversation with User|>", 1)[0]
    return answer.strip(), before.replace("### User:\n", "").replace("### Assistant A:\n", "")


def write_mt_bench_server(directory: Path) -> RealTruth:
    """MT-Bench as ``ai_interactions.jsonl``: one row per question, model and turn."""
    source, files = extract(ROUTELLM)
    categories = {
        q["question_id"]: q["category"]
        for q in map(orjson.loads, files[MT_BENCH_QUESTIONS].splitlines())
    }
    made = []
    ungraded = 0
    for j in mt_bench_judgements():
        provider = provider_name(j.model)
        key = ("mt-bench", j.question_id, provider, j.turn)
        category = categories[j.question_id]
        graded = MT_BENCH_GRADES[0] <= j.grade <= MT_BENCH_GRADES[1]
        ungraded += not graded
        score = round((j.grade - 1) / 9, 4) if graded else None
        tokens_in, tokens_out = _tokens(j.prompt), _tokens(j.answer)
        cost = _cost(provider, tokens_in, tokens_out)
        latency = max(80, round(_lognormal(LATENCY_MS[provider] * 4, 0.4, "latency", *key)))
        routing = "router" if provider in ROUTERS else "direct"
        line = {
            "id": _uuid("interaction", *key),
            "timestamp": round(j.tstamp * 1000),
            "session_id": _uuid("mt-bench session", j.question_id, provider),
            "user_wallet": _wallet("mt-bench", "", j.question_id),
            "provider": provider,
            "model": j.model,
            "input_hash": _sha(j.prompt),
            "output_hash": _sha(j.answer),
            "tokens_input": tokens_in,
            "tokens_output": tokens_out,
            "cost_usd": cost,
            "latency_ms": latency,
            "ai_credits_spent": round(cost / USD_PER_CREDIT, 6),
            "feedback": {"score": None, "tags": []},
            "eval": {"auto_score": score, "notes": j.judge},
            "metadata": {
                "status": "completed",
                "task_type": category,
                "routing": routing,
                "session_type": "chat",
                "billing_unit": "credits",
            },
            "success": True,
            "task_type": category,
            "routing": routing,
            "hallucination_flags": [],
            "user_rating": None,
            "preview": j.answer[:PREVIEW_CHARS],
        }
        call = Call(line["id"], provider, category, score, latency, tokens_out, True)
        made.append((line["timestamp"], line, call))
    made.sort(key=lambda m: (m[0], m[1]["id"]))
    path = directory / LAYOUT_FILES["server"]
    lines = _write(path, [m[1] for m in made])
    return RealTruth(
        "MT-Bench",
        "server",
        source,
        (path,),
        tuple(m[2] for m in made),
        lines,
        MT_BENCH_FIELDS,
        ungraded=ungraded,
    )


# --- llmperf: legacy rows with real latency and failures ------------------------------------


def write_llmperf_legacy(directory: Path) -> RealTruth:
    """Every llmperf request as an ``ai_interactions.log`` row, all runs by time."""
    source, files = extract(LLMPERF)
    made = []
    errors: Counter[Any] = Counter()
    for path in sorted(p for p in files if p.startswith(LLMPERF_RUNS)):
        run = path[len(LLMPERF_RUNS) : -len(".json")]
        host, size = run.rsplit("_", 1)
        summary = orjson.loads(files[path.replace("/individual/", "/summary/")])
        requests = orjson.loads(files[path])
        for k, (ts, request) in enumerate(
            zip(_call_times(summary, requests), requests, strict=True)
        ):
            key = ("llmperf", run, k)
            code = request.get("error_code")
            if code is not None:
                errors[code] += 1
            seconds = float(request["end_to_end_latency_s"])
            text = request.get("GEN_TEXT")
            line: dict[str, Any] = {
                "timestamp": round(ts, 3),
                "provider": host,
                "model": f"llama-2-{size}-chat",
                "model_id": summary["model"],
                "tier": size,
                "prompt_hash": _hex("llmperf prompt", *key),
                "output_hash": _sha(text) if text is not None else _hex("llmperf output", *key),
                "duration": round(seconds, 6),
                "latency_ms": round(seconds * 1000, 3),
                "session_id": _uuid("llmperf session", run, k // 10),
                "wallet": _wallet("llmperf", host, run, k // 10),
                "difficulty": 4 + int(_unit("difficulty", *key) * 3),
                "block_hash": _hex("llmperf block", *key),
                "error": _error_text(code, request.get("error_msg")),
                "success": code is None,
                "metadata": {
                    "output_tokens": request["number_output_tokens"],
                    "input_tokens": request["number_input_tokens"],
                    "ttft_ms": round(float(request["ttft_s"]) * 1000, 3),
                },
            }
            if text is not None:
                line["preview"] = text[:PREVIEW_CHARS]
            call = Call(
                _line_id(line),
                host,
                None,
                None,
                line["latency_ms"],
                request["number_output_tokens"],
                code is None,
            )
            made.append((line["timestamp"], run, k, line, call))
    made.sort(key=lambda m: m[:3])
    out = directory / LAYOUT_FILES["legacy"]
    lines = _write(out, [m[3] for m in made])
    return RealTruth(
        "llmperf",
        "legacy",
        source,
        (out,),
        tuple(m[4] for m in made),
        lines,
        LLMPERF_FIELDS,
        errors=errors,
    )


def _line_id(line: dict[str, Any]) -> str:
    """A legacy row has no id: readers take a hash of its canonical JSON (the contract's rule)."""
    return "h" + hashlib.sha256(orjson.dumps(line, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _error_text(code: Any, message: Any) -> str | None:
    if code is None:
        return None
    if message:
        return str(message)
    return f"HTTP {code}" if code > 0 else f"llmperf error {code}"


def _call_times(summary: dict[str, Any], requests: list[dict[str, Any]]) -> list[float]:
    """When each request ended: the run's lanes (its concurrency) each take the next request
    as they free up, fitted between the run's real start and end."""
    # llmperf stamps the summary when it saves it, at the end; completed/min gives the length.
    end = float(summary["timestamp"])
    per_min = float(summary["results_num_completed_requests_per_min"])
    length = 60.0 * summary["results_num_completed_requests"] / per_min if per_min else 0.0
    lanes = [0.0] * int(summary["num_concurrent_requests"])
    ends = []
    for request in requests:
        lane = min(range(len(lanes)), key=lanes.__getitem__)
        lanes[lane] += float(request["end_to_end_latency_s"])
        ends.append(lanes[lane])
    span = max(ends) or 1.0
    return [end - length + length * t / span for t in ends]
