"""Ledger layouts benchmark: what the contract reads from each layout Thronos writes.

``python -m benchmarks.ledgers [--rows N] [--seed S]`` writes the same planted interactions
in each layout (``tests/layouts.py``: spec, legacy with star or 0..1 ratings, server, v4
with its score events apart or in the same file), and real LLM data in three of them
(``tests/real_ledgers.py``: RouteLLM MMLU as v4 + scores, MT-Bench as server rows, llmperf
as legacy rows; skipped, with a note, if the shared data is missing), parses every line with
:func:`analytics.contract.parse_line` and prints, per layout, the share of rows in which
each :class:`~analytics.contract.Row` field was read, the lines rejected, and for score
events how many were parsed and how many name an interaction that was read. The tables
are written into ``docs/ledgers.md`` between markers. Parse-level only: no Redis, no
workers.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import real_ledgers
from tests.layouts import SEED, N, Truth, write_layout, write_v4
from tests.real_ledgers import RealTruth
from thronos_analytics.core.contract import Rejection, Row, ScoreEvent, parse_line

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ledgers.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
INTRO = f"""# Ledger layouts: what the contract reads from each

Thronos writes interactions in four layouts (spec `ai_ledger.jsonl`, legacy
`ai_interactions.log`, server `ai_interactions.jsonl`, v4 `ai_interactions_v4.jsonl`) and
score events apart (`ai_scores.jsonl`). `python -m benchmarks.ledgers` writes the same
planted interactions in each (`tests/layouts.py`), and real LLM evaluation data in three of
them (`tests/real_ledgers.py`, read from `shared/real-ledger-data`), parses every line with
`analytics.contract.parse_line` (rating scale `auto`) and counts, per ledger:

- the share of interactions in which each `Row` field was read (not None). A field the
  layout does not carry reads 0%, except `credits_used` and `success`, which are never None
  (0 and true when absent); for `dropped` the share is of rows in which some field could
  not be read, so 0% is the good value; `success` false is the share read as failed;
- the lines rejected (a clean ledger should have none);
- for score events: how many parsed, the share that name an interaction read from the
  layout's files (orphans are planted on purpose), and the share of interactions that
  have a score and a use case once their events are joined.

The real ledgers are public evaluations (Apache-2.0): RouteLLM's MMLU correctness and
MT-Bench judge grades for gpt-4-1106-preview, Mixtral-8x7B and two routers, and llmperf's
requests to 8 hosts of Llama-2. Their providers, use cases and scores are real, and so are
llmperf's latency, output tokens and failures; MT-Bench's output lengths come from the real
answers. What they lack (wallets, sessions, ids, most times, latency for the evaluations)
is made up from a hash of the question or request id, never from a score, so nothing made
up can favour a provider: flipping every MMLU answer changes the score events and nothing
else (`tests/test_real_ledgers.py` checks it). Below the table, field by field, which is
which.

`tests/test_layouts.py` and `tests/test_real_ledgers.py` assert the same, and drain each
synthetic layout and the real MMLU ledger through the pipeline.

{BEGIN}
{END}
"""


@dataclass(frozen=True)
class Case:
    name: str
    layout: str
    options: dict[str, Any]
    describe: str
    real: Callable[[Path], RealTruth] | None = None  # a converter of real data


CASES = (
    Case("spec", "spec", {}, "`ai_ledger.jsonl`"),
    Case("spec, 5% nulls", "spec", {"null_rate": 0.05}, "null score, session or wallet"),
    Case("legacy, stars", "legacy-stars", {}, "`ai_interactions.log`, ratings 1-5 (integers)"),
    Case("legacy, 0..1", "legacy-unit", {}, "`ai_interactions.log`, ratings 0..1 (floats)"),
    Case("server", "server", {}, "`ai_interactions.jsonl`"),
    Case(
        "v4 + scores",
        "v4",
        {"late_fraction": 0.1, "orphan_fraction": 0.02},
        "`ai_interactions_v4.jsonl` + `ai_scores.jsonl`, 10% of events late, 2% orphans",
    ),
    Case(
        "v4, one file",
        "v4-mixed",
        {"late_fraction": 0.1, "orphan_fraction": 0.02, "events_first": True},
        "interactions and events in one file, each event before its interaction",
    ),
)
REAL_CASES = (
    Case(
        "RouteLLM MMLU (v4 + scores)",
        "v4",
        {},
        "57 subjects x 2 models, one score event per call, 10% of events late",
        real_ledgers.write_routellm_v4,
    ),
    Case(
        "MT-Bench (server)",
        "server",
        {},
        "80 questions x 2 turns x 4 models or routers, graded by GPT-4",
        real_ledgers.write_mt_bench_server,
    ),
    Case(
        "llmperf (legacy)",
        "legacy",
        {},
        "19 runs against 8 hosts serving Llama-2, failures included",
        real_ledgers.write_llmperf_legacy,
    ),
)


def write(case: Case, directory: Path, rows: int, seed: int) -> Truth | RealTruth:
    if case.real is not None:
        return case.real(directory)
    if case.layout == "v4-mixed":
        path = directory / "ai_interactions_v4.jsonl"
        return write_v4(path, None, n=rows, seed=seed, **case.options)
    return write_layout(case.layout, directory, n=rows, seed=seed, **case.options)


@dataclass
class Measured:
    lines: int
    rows: int
    events: int
    rejected: int
    seconds: float
    shares: dict[str, str]  # table row -> this case's cell
    truth: Truth | RealTruth


def measure(case: Case, rows_n: int, seed: int) -> Measured:
    with tempfile.TemporaryDirectory() as tmp:
        truth = write(case, Path(tmp), rows_n, seed)
        lines = [line for path in truth.ledgers for line in path.read_bytes().splitlines()]
    started = time.perf_counter()
    parsed = [parse_line(line, i) for i, line in enumerate(lines, 1)]
    seconds = time.perf_counter() - started
    rows = [p for p in parsed if isinstance(p, Row)]
    events = [p for p in parsed if isinstance(p, ScoreEvent)]
    rejected = [p for p in parsed if isinstance(p, Rejection)]
    shares = {
        f"`{name}`": _share(sum(getattr(row, name) is not None for row in rows), len(rows))
        for name in Row._fields  # generic: a field added to Row shows up here
    }
    shares["`success` false"] = _share(sum(not row.success for row in rows), len(rows))
    shares.update(_event_shares(rows, events))
    return Measured(len(lines), len(rows), len(events), len(rejected), seconds, shares, truth)


def _event_shares(rows: list[Row], events: list[ScoreEvent]) -> dict[str, str]:
    ids = {row.id for row in rows}
    newest = {event.interaction_id: event for event in events}  # file order: the last wins
    scored = labelled = 0
    for row in rows:
        event = newest.get(row.id)
        scored += row.score is not None or (event is not None and event.score is not None)
        labelled += bool(row.use_case) or (event is not None and bool(event.use_case))
    named = sum(e.interaction_id in ids for e in events)
    return {
        "score, events joined": _share(scored, len(rows)),
        "use case, events joined": _share(labelled, len(rows)),
        "events naming an interaction read": _share(named, len(events)) if events else "",
    }


def _share(n: int, total: int) -> str:
    if not total:
        return "n/a"
    text = f"{n / total:.0%}"
    # 639 of 640 is not 100%: one more digit where rounding would hide a row.
    return f"{n / total:.1%}" if text in ("0%", "100%") and 0 < n < total else text


def run(rows_n: int, seed: int) -> str:
    started = time.perf_counter()
    absent = real_ledgers.missing()
    cases = CASES + (REAL_CASES if absent is None else ())
    results = [measure(case, rows_n, seed) for case in cases]
    table = [
        "| | " + " | ".join(case.name for case in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for label, attr in (("lines", "lines"), ("interactions", "rows"), ("score events", "events")):
        table.append(f"| {label} | " + " | ".join(f"{getattr(m, attr):,}" for m in results) + " |")
    table.append("| **rejected** | " + " | ".join(f"**{m.rejected:,}**" for m in results) + " |")
    for label in results[0].shares:
        table.append(f"| {label} | " + " | ".join(m.shares[label] for m in results) + " |")
    parse_s = sum(m.seconds for m in results)
    lines = sum(m.lines for m in results)
    notes = "\n".join(f"- {case.name}: {case.describe}" for case in cases)
    real = [m.truth for m in results if isinstance(m.truth, RealTruth)]
    sections = "".join(_real_section(truth) for truth in real) if real else f"\n{absent}.\n"
    footer = (
        f"{rows_n:,} planted interactions per synthetic layout, seed {seed}; {lines:,} lines "
        f"parsed at {lines / parse_s:,.0f} lines/s. Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; benchmark wall time "
        f"{time.perf_counter() - started:.1f} s.\n"
    )
    text = "\n".join(table) + "\n\n" + notes + "\n\n" + footer + sections
    print(text)
    return text


def _real_section(truth: RealTruth) -> str:
    """What a real ledger holds, what the data says is best, and which fields are real."""
    facts = [f"{truth.rows:,} calls"]
    if truth.events:
        facts.append(f"{truth.events:,} score events, {truth.late:,} of them late")
    if truth.ungraded:
        facts.append(f"{truth.ungraded} judge grade of -1 (no grade), written without a score")
    if truth.errors:
        codes = ", ".join(f"{n} x {code}" for code, n in truth.errors.most_common())
        facts.append(f"{truth.failures:,} failed ({codes}), written as `success: false`")
    best = truth.best()
    if best:
        wins = Counter(provider for provider, _ in best.values())
        leads = truth.clear_leads()
        facts.append(
            "best provider per use case by mean score: "
            + ", ".join(f"{p} in {n}" for p, n in wins.most_common())
            + f" of {len(best)}; {len(leads)} lead by more than 0.1 with at least 50 calls each"
        )
    rows = "\n".join(f"| {name} | {what} |" for name, what in truth.fields)
    return (
        f"\n### {truth.name} ({truth.layout}): what is real\n\n"
        f"From `{truth.source}`: {'; '.join(facts)}.\n\n"
        f"| field | source |\n|---|---|\n{rows}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=N, help="interactions per layout")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    results = run(args.rows, args.seed)
    text = DOC.read_text() if DOC.exists() else INTRO
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{results}\n{END}{tail}")


if __name__ == "__main__":
    main()
