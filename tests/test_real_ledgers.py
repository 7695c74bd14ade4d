"""Real LLM data, written as the ledgers Thronos writes (``tests/real_ledgers.py``), read in full.

RouteLLM MMLU as v4 interactions and score events, MT-Bench judge grades as server rows and
llmperf requests as legacy rows: every line must parse, every field the source has must be
read back as the source says, and a drain of MMLU must join every score and recommend, per
subject with a clear leader, the provider the data itself says is best.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import real_ledgers
from real_ledgers import RealTruth
from test_layouts import drain, parse, split

if (reason := real_ledgers.missing()) is not None:
    pytest.skip(reason, allow_module_level=True)

# Eight subjects, about 4,000 interactions: five clear leads of 0.14 to 0.29, the
# high_school_mathematics oddity (Mixtral leads by 0.29), and two near ties.
DRAIN_SUBJECTS = (
    "college_computer_science",
    "formal_logic",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "machine_learning",
    "marketing",
    "professional_psychology",
    "world_religions",
)
# Row fields each converted ledger fills on every row (v4: score and use case once joined).
ALWAYS = {
    "v4": ("session_id", "wallet", "model", "latency_ms", "output_len", "tokens_in", "cost_usd"),
    "server": (
        *("session_id", "wallet", "model", "latency_ms", "output_len", "tokens_in"),
        *("cost_usd", "use_case"),
    ),
    "legacy": ("session_id", "wallet", "model", "model_id", "latency_ms", "output_len"),
}
WRITERS = {
    "mmlu": real_ledgers.write_routellm_v4,
    "mt-bench": real_ledgers.write_mt_bench_server,
    "llmperf": real_ledgers.write_llmperf_legacy,
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RealTruth]:
    base = tmp_path_factory.mktemp("real")
    return {name: write(base / name) for name, write in WRITERS.items()}


def read(truth: RealTruth) -> tuple[list[Any], list[Any]]:
    rows: list[Any] = []
    events: list[Any] = []
    for path in truth.ledgers:
        file_rows, file_events, rejected = split(parse(path))
        assert rejected == [], rejected[:3]
        rows += file_rows
        events += file_events
    return rows, events


def joined(rows: list[Any], events: list[Any]) -> list[Any]:
    newest = {event.interaction_id: event for event in events}  # one event per interaction
    return [newest[row.id].fill(row) if row.id in newest else row for row in rows]


# --- the converters -----------------------------------------------------------------------


def test_the_sources_say_what_their_readme_says(written):
    mmlu, mt_bench, llmperf = written["mmlu"], written["mt-bench"], written["llmperf"]
    assert len(real_ledgers.mmlu_subjects()) == 57
    assert mmlu.rows == 2 * 14_042 and mmlu.events == mmlu.rows
    assert 0.09 * mmlu.rows < mmlu.late < 0.11 * mmlu.rows
    cells = mmlu.cells()["high_school_mathematics"]
    assert cells["gpt-4-1106-preview"][1] == pytest.approx(0.03, abs=0.005)
    assert cells["mixtral-8x7b-instruct-v0.1"][1] == pytest.approx(0.32, abs=0.005)
    assert mmlu.best()["high_school_mathematics"][0] == "mixtral-8x7b-instruct-v0.1"
    assert len(mt_bench.cells()) == 8 and mt_bench.rows == 4 * 80 * 2
    assert mt_bench.ungraded == 1  # a router's grade of -1: the judge gave none
    runs = Counter(call.provider for call in llmperf.calls)
    assert len(runs) == 8 and llmperf.rows == sum(runs.values()) == 19 * 150 - 5
    assert llmperf.errors == {429: 3 * 130 + 2, -100: 97 + 49, -1: 1}
    assert sum(call.latency_ms > 90_000 for call in llmperf.calls) == 2


def test_the_converters_are_deterministic_and_made_up_fields_ignore_the_scores(
    written, tmp_path, monkeypatch
):
    for name in ("mt-bench", "llmperf"):
        again = WRITERS[name](tmp_path / name)
        assert [p.read_bytes() for p in again.ledgers] == [
            p.read_bytes() for p in written[name].ledgers
        ]
    subjects = DRAIN_SUBJECTS[:2]
    plain = real_ledgers.write_routellm_v4(tmp_path / "plain", subjects)
    # Every answer's correctness flipped: only the scores (and what says them) may change.
    questions = real_ledgers.mmlu_questions(subjects)
    flipped = [q._replace(correct={m: not c for m, c in q.correct.items()}) for q in questions]
    monkeypatch.setattr(real_ledgers, "mmlu_questions", lambda subjects=None: flipped)
    other = real_ledgers.write_routellm_v4(tmp_path / "flipped", subjects)
    assert other.ledgers[0].read_bytes() == plain.ledgers[0].read_bytes()
    for a, b in zip(*(lines(t.ledgers[1]) for t in (plain, other)), strict=True):
        assert a["quality_score"] == 1 - b["quality_score"]
        scored = {"quality_score", "model_decision"}
        assert {k: v for k, v in a.items() if k not in scored} == {
            k: v for k, v in b.items() if k not in scored
        }


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_late_mmlu_events_come_after_a_later_block_of_interactions(tmp_path):
    truth = real_ledgers.write_routellm_v4(tmp_path, DRAIN_SUBJECTS[:3], one_file=True)
    written_lines = lines(truth.ledgers[0])
    assert len(written_lines) == truth.lines == 2 * truth.rows
    at: dict[str, int] = {}  # interaction id -> its index among interactions
    late = 0
    for line in written_lines:
        if "interaction_id" not in line:
            at[line["id"]] = len(at)
        else:
            behind = len(at) - 1 - at[line["interaction_id"]]  # interactions written since
            late += behind >= real_ledgers.LATE_AFTER
    # Near the end there are not enough later interactions to be behind.
    assert truth.late - real_ledgers.LATE_AFTER * 0.2 <= late <= truth.late


# --- parsing each real ledger ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_line_of_each_real_ledger_parses_and_reads_what_the_source_has(written, name):
    truth = written[name]
    rows, events = read(truth)
    assert len(rows) == truth.rows and len(events) == truth.events
    assert all(row.dropped is None for row in rows) and all(e.dropped is None for e in events)
    if truth.layout == "v4":
        assert all(row.score is None and row.use_case is None for row in rows)
        assert Counter(e.interaction_id for e in events) == Counter(c.id for c in truth.calls)
    rows = joined(rows, events)
    for field in ALWAYS[truth.layout]:
        assert sum(getattr(row, field) is not None for row in rows) == truth.rows, field
    assert all(row.output_unit == "tokens" for row in rows)
    for row, call in zip(rows, truth.calls, strict=True):
        assert (row.id, row.provider, row.use_case) == (call.id, call.provider, call.use_case)
        assert row.score == call.score and row.success is call.success, row
        assert (row.latency_ms, row.output_len) == (call.latency_ms, call.output_len), row
    scored = sum(row.score is not None for row in rows)
    assert scored == (0 if truth.layout == "legacy" else truth.rows - truth.ungraded)
    assert sum(not row.success for row in rows) == truth.failures


# --- draining MMLU through the pipeline -----------------------------------------------------


def test_a_drain_of_real_mmlu_joins_every_score_and_recommends_the_data_best(env, r):
    data = Path(env["THRONOS_DATA_DIR"])
    truth = real_ledgers.write_routellm_v4(data, DRAIN_SUBJECTS)
    assert 3_900 < truth.rows < 4_200
    summary = drain(env, truth.ledgers)

    stats = orjson.loads((data / "ai_analytics.json").read_bytes())["stats"]
    assert stats["interactions_seen"] == stats["interactions_scored"] == truth.rows, stats
    assert stats["interactions_rejected"] == 0 == summary["rejected_lines"], stats
    assert stats["score_events"] == truth.events == truth.rows
    assert stats["score_events_joined"] == truth.rows and stats["score_events_orphaned"] == 0

    recommendations = orjson.loads((data / "ai_analytics.json").read_bytes())["recommendations"]
    cells = recommendations["model"]["use_cases"]
    assert set(cells) == set(DRAIN_SUBJECTS)
    for use_case, expected in truth.cells().items():
        for provider, (n, mean) in expected.items():
            assert cells[use_case][provider]["n"] == n, (use_case, provider)
            assert cells[use_case][provider]["score"] == pytest.approx(mean, abs=1e-4)
    leads = truth.clear_leads(margin=0.1, min_n=50)
    assert len(leads) == 6 and leads["high_school_mathematics"] == "mixtral-8x7b-instruct-v0.1"
    top = {uc: ranked[0]["provider"] for uc, ranked in recommendations["global"].items()}
    assert {uc: top[uc] for uc in leads} == leads
