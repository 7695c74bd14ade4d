"""Every ledger layout Thronos writes, read by the contract and drained through the pipeline.

The same planted interactions (``tests/layouts.py``) are written as spec, legacy (ratings as
stars or on 0..1), server and v4 lines (v4 with its score events apart). Each must parse
with nothing rejected and every field the layout carries read, and a drain of each must
score every row, profile every wallet and find the planted best provider per use case.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from layouts import (
    PREVIEW_CHARS,
    PREVIEW_TEXTS,
    USE_CASES,
    Interaction,
    Truth,
    generate,
    legacy_line,
    write_layout,
    write_spec,
    write_v4,
)

from thronos_analytics.core import contract, store
from thronos_analytics.workers.export import SCHEMA_PATH

from recount import assert_aggregates_match_ledger, redis_contents

LAYOUTS = ("spec", "legacy-stars", "legacy-unit", "server", "v4")
# The contract's names for the generator's two rating scales.
CONTRACT_SCALE = {"stars": "1..5", "unit": "0..1"}
# How far a score read may be from the planted one: stars round to quarters, the server's
# eval.auto_score is within 0.02 of it and its star user_rating within 0.125.
SCORE_TOLERANCE = {"spec": 1e-9, "legacy-stars": 0.125, "legacy-unit": 0.005, "server": 0.125}
SCORE_MEAN_ERROR = {"spec": 1e-9, "legacy-stars": 0.07, "legacy-unit": 0.003, "server": 0.03}
# The fields each layout carries, by the Row field they fill. v4's score and use case come
# from its score events.
COMMON = {"session_id", "wallet", "latency_ms", "output_len"}
CARRIED = {
    "spec": COMMON | {"credits_used", "score"},
    "legacy": COMMON | {"score", "success", "model_id"},
    "server": COMMON | {"credits_used", "score", "success", "cost_usd", "tokens_in"},
    "v4": COMMON | {"cost_usd", "tokens_in"},
}
OUTPUT_UNIT = {"spec": "chars", "legacy": "chars", "server": "tokens", "v4": "tokens"}


def parse(path: Path, rating_scale: str = "auto") -> list[Any]:
    lines = path.read_bytes().splitlines()
    return [
        contract.parse_line(line, i, rating_scale=rating_scale) for i, line in enumerate(lines, 1)
    ]


def split(parsed: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """Rows, score events and rejections, each in file order."""
    rows = [p for p in parsed if isinstance(p, contract.Row)]
    events = [p for p in parsed if isinstance(p, contract.ScoreEvent)]
    rejected = [p for p in parsed if isinstance(p, contract.Rejection)]
    assert len(rows) + len(events) + len(rejected) == len(parsed)
    return rows, events, rejected


def planted_value(name: str, planted: Interaction) -> Any:
    """What a Row field should hold for a planted interaction."""
    values = {
        "credits_used": planted.credits,
        "cost_usd": planted.cost_usd,
        "tokens_in": planted.tokens_in,
        "latency_ms": planted.latency_ms,
        "model_id": planted.model_id,
        "output_len": planted.output_chars,
    }
    return values.get(name, getattr(planted, name, None))


def read_all(truth: Truth, rating_scale: str = "auto") -> tuple[list[Any], list[Any]]:
    rows: list[Any] = []
    events: list[Any] = []
    for path in truth.ledgers:
        file_rows, file_events, rejected = split(parse(path, rating_scale))
        assert rejected == [], rejected[:3]
        rows += file_rows
        events += file_events
    return rows, events


def assert_rows_read(layout: str, rows: list[Any], truth: Truth) -> None:
    """``layout`` as in LAYOUTS: the rating scale sets how close a score must be."""
    name = layout.partition("-")[0]
    assert len(rows) == truth.rows
    # A writer writes in time order, so the k-th row is the k-th planted interaction.
    pairs = list(zip(rows, truth.interactions, strict=True))
    errors = []
    for k, (row, planted) in enumerate(pairs):
        nulls = truth.nulls.get(k, frozenset())
        assert row.dropped is None, (k, row.dropped)
        assert row.provider == planted.provider and row.model == planted.model, k
        assert row.ts == pytest.approx(planted.ts, abs=1e-3), k
        # A layout without success, error or status says nothing of failures.
        assert row.success is (planted.success if "success" in CARRIED[name] else True), k
        for field in CARRIED[name]:
            value = getattr(row, field)
            if field in nulls:
                assert value is None, (k, field)
            elif field == "success":
                continue
            elif field == "score":
                assert value is not None and 0 <= value <= 1, (k, value)
                errors.append(abs(value - planted.score))
            elif field == "output_len" and OUTPUT_UNIT[name] == "tokens":
                assert value == planted.tokens_out, (k, field)
            else:
                expected = planted_value(field, planted)
                if isinstance(expected, float):
                    expected = pytest.approx(expected, rel=1e-9)
                assert value == expected, (k, field, value)
        if "output_len" in CARRIED[name]:
            assert row.output_unit == OUTPUT_UNIT[name], k
        if name != "v4":
            assert row.use_case == planted.use_case, k
        if name in ("server", "v4"):
            assert row.id == planted.id, k
    if errors:
        assert max(errors) <= SCORE_TOLERANCE[layout] + 1e-9, max(errors)
        assert float(np.mean(errors)) <= SCORE_MEAN_ERROR[layout], float(np.mean(errors))


def assert_events_join(rows: list[Any], events: list[Any], truth: Truth) -> None:
    """Each interaction has its one event, with the planted score and use case."""
    assert len(events) == truth.events
    by_interaction: dict[str, list[Any]] = {}
    for event in events:
        assert event.dropped is None, event
        assert event.score is not None and 0 <= event.score <= 1, event
        assert event.use_case in USE_CASES, event
        by_interaction.setdefault(event.interaction_id, []).append(event)
    ids = {row.id for row in rows}
    assert len(ids) == truth.rows
    assert ids <= by_interaction.keys()
    assert len(by_interaction.keys() - ids) == truth.orphans
    for planted in truth.interactions:
        (event,) = by_interaction[planted.id]
        assert event.score == pytest.approx(planted.score, abs=1e-9)
        assert event.use_case == planted.use_case
        assert event.ts is not None and event.ts > planted.ts
    late = sum(by_interaction[p.id][0].ts - p.ts > 3600 for p in truth.interactions)
    assert late == truth.late


# --- the generator --------------------------------------------------------------------


def test_the_generator_plants_what_it_says_and_is_deterministic(tmp_path):
    rows = generate()
    assert rows == generate.__wrapped__()  # the same without the cache
    assert len(rows) == 3000 and len({r.id for r in rows}) == 3000
    assert len({r.wallet for r in rows}) == 60
    assert all(r.wallet.startswith("THR") and len(r.wallet) == 43 for r in rows)
    calls = Counter(r.session_id for r in rows)
    assert min(calls.values()) >= 1 and max(calls.values()) <= 8
    assert 2.5 <= np.mean(list(calls.values())) <= 5
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)
    for use_case in USE_CASES:
        mine = [r for r in rows if r.use_case == use_case]
        means = {
            p: np.mean([r.score for r in mine if r.provider == p])
            for p in {r.provider for r in mine}
        }
        best = max(means, key=means.__getitem__)
        assert means[best] >= 0.8 and all(v <= 0.7 for p, v in means.items() if p != best)
    # The best provider is not simply the most used one.
    coding = Counter(r.provider for r in rows if r.use_case == "coding")
    assert coding.most_common(1)[0][0] != "claude"
    for layout in LAYOUTS:
        a = write_layout(layout, tmp_path / "a" / layout)
        b = write_layout(layout, tmp_path / "b" / layout)
        assert [p.read_bytes() for p in a.ledgers] == [p.read_bytes() for p in b.ledgers]
        assert a.best == {"coding": "claude", "research": "gemini", "writing": "gpt"}


def written(layout: str, directory: Path) -> list[dict[str, Any]]:
    (path, *_) = write_layout(layout, directory).ledgers
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_each_layout_writes_its_own_field_names_and_units(tmp_path):
    rows = generate()
    spec, legacy, server, v4 = (
        written(layout, tmp_path / layout) for layout in ("spec", "legacy-unit", "server", "v4")
    )
    assert spec[0]["ts"].endswith("Z") and "meta" in spec[0] and "timestamp" not in spec[0]
    assert isinstance(legacy[0]["timestamp"], float) and legacy[0]["timestamp"] == rows[0].ts
    assert legacy[0]["duration"] == pytest.approx(rows[0].latency_ms / 1000)
    assert isinstance(server[0]["timestamp"], int) and server[0]["timestamp"] == rows[0].ts_ms
    assert isinstance(v4[0]["created_at"], int) and "provider" not in v4[0]
    assert all("score" not in line and "use_case" not in str(line) for line in v4)
    assert {
        type(line["metadata"].get("rating", line["metadata"].get("user_rating"))) for line in legacy
    } == {float}
    stars = legacy_line(rows[0], "stars", "rating")["metadata"]["rating"]
    assert isinstance(stars, int) and 1 <= stars <= 5
    previews = [line["preview"] for line in legacy + server if line.get("preview")]
    assert 0.2 * len(rows) < len(previews) < len(legacy) + len(server)
    assert all(len(p) <= PREVIEW_CHARS and p in PREVIEW_TEXTS for p in previews)


def test_v4_score_events_come_late_orphaned_or_first_as_asked(tmp_path):
    truth = write_v4(
        tmp_path / "v4.jsonl", tmp_path / "scores.jsonl", late_fraction=0.2, orphan_fraction=0.05
    )
    assert truth.events == truth.rows + truth.orphans and truth.orphans == 150
    assert 0.15 * truth.rows < truth.late < 0.25 * truth.rows
    assert truth.ledgers == (tmp_path / "v4.jsonl", tmp_path / "scores.jsonl")
    events = [orjson.loads(x) for x in (tmp_path / "scores.jsonl").read_bytes().splitlines()]
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)
    first = write_v4(tmp_path / "v4.jsonl", tmp_path / "scores.jsonl", events_first=True)
    assert first.ledgers == (tmp_path / "scores.jsonl", tmp_path / "v4.jsonl")
    # One file: each event just before its interaction.
    mixed = write_v4(tmp_path / "mixed.jsonl", events_first=True)
    lines = [orjson.loads(x) for x in (tmp_path / "mixed.jsonl").read_bytes().splitlines()]
    assert len(lines) == mixed.lines == 2 * mixed.rows
    where: dict[str, list[int]] = {}  # interaction id -> its lines
    for i, line in enumerate(lines):
        where.setdefault(line.get("interaction_id", line["id"]), []).append(i)
    assert all(len(at) == 2 and lines[at[0]].get("interaction_id") for at in where.values())


# --- parsing each layout --------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_line_of_each_layout_parses_with_every_field_read(layout, tmp_path):
    truth = write_layout(layout, tmp_path, **({"orphan_fraction": 0.02} if layout == "v4" else {}))
    rows, events = read_all(truth)
    assert_rows_read(layout, rows, truth)
    if layout == "v4":
        assert all(row.score is None and row.use_case is None for row in rows)
        assert_events_join(rows, events, truth)
    else:
        assert events == []


def test_spec_nulls_are_read_as_missing_not_as_unreadable(tmp_path):
    truth = write_spec(tmp_path / "ai_ledger.jsonl", null_rate=0.1)
    assert 200 < len(truth.nulls) < 400
    rows, _ = read_all(truth)
    assert_rows_read("spec", rows, truth)


@pytest.mark.parametrize("scale", ["stars", "unit"])
def test_legacy_ratings_read_on_the_scale_named(scale, tmp_path):
    truth = write_layout(f"legacy-{scale}", tmp_path)
    rows, _ = read_all(truth, CONTRACT_SCALE[scale])
    assert_rows_read(f"legacy-{scale}", rows, truth)


@pytest.mark.parametrize(
    "scale, rating",
    [("auto", 9), ("auto", -1), ("auto", 7.5), ("0..1", 3), ("1..5", 0.4), ("auto", "five")],
)
@pytest.mark.parametrize("key", ["rating", "user_rating"])
def test_an_impossible_rating_drops_the_score_and_keeps_the_interaction(scale, rating, key):
    planted = generate()[0]
    line = legacy_line(planted, "stars", key)
    line["metadata"][key] = rating
    row = contract.parse_line(orjson.dumps(line), 1, rating_scale=scale)
    assert isinstance(row, contract.Row), row
    assert row.score is None
    assert row.dropped and any("rating" in f or "score" in f for f in row.dropped.split(",")), row
    assert (row.wallet, row.use_case, row.latency_ms) == (
        planted.wallet,
        planted.use_case,
        planted.latency_ms,
    )


def test_v4_in_one_file_with_each_event_before_its_interaction(tmp_path):
    truth = write_v4(tmp_path / "mixed.jsonl", events_first=True, orphan_fraction=0.02)
    rows, events, rejected = split(parse(tmp_path / "mixed.jsonl"))
    assert rejected == []
    assert_rows_read("v4", rows, truth)
    assert_events_join(rows, events, truth)


# --- draining each layout through the pipeline ------------------------------------------


def drain(env: dict, ledgers: tuple[Path, ...]) -> dict:
    args = [arg for path in ledgers for arg in ("--ledger", str(path))]
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "run", "--drain", "--no-demo", *args],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return orjson.loads(done.stdout)


DRAINS = {
    "spec": ("spec", {}),
    "legacy-stars": ("legacy-stars", {}),
    "legacy-unit": ("legacy-unit", {}),
    "server": ("server", {}),
    "v4": ("v4", {"orphan_fraction": 0.02}),
    "v4-scores-first": ("v4", {"orphan_fraction": 0.02, "events_first": True}),
}


@pytest.mark.parametrize("case", list(DRAINS))
def test_a_drain_of_each_layout_scores_profiles_and_recommends(case, env, r, tmp_path):
    layout, options = DRAINS[case]
    data = Path(env["THRONOS_DATA_DIR"])
    truth = write_layout(layout, data, **options)
    summary = drain(env, truth.ledgers)

    document = orjson.loads((data / "ai_analytics.json").read_bytes())
    jsonschema.validate(document, orjson.loads(SCHEMA_PATH.read_bytes()))
    stats = document["stats"]
    assert stats["interactions_seen"] == stats["interactions_scored"] == truth.rows, stats
    assert stats["interactions_rejected"] == 0 == summary["rejected_lines"], stats
    rows, events = read_all(truth)
    assert set(store.flags_of(r, [(row.id, row.ts) for row in rows])) == {row.id for row in rows}
    if layout == "v4":
        # Score events are counted apart from interactions, and joined by interaction id.
        assert stats["score_events"] == truth.events
        assert stats["score_events_joined"] == truth.events - truth.orphans
        assert stats["score_events_orphaned"] == truth.orphans
        scored = {e.interaction_id: e for e in events}
        rows = [row._replace(score=scored[row.id].score) for row in rows]
    else:
        assert stats.get("score_events", 0) == 0
    assert_aggregates_match_ledger(r, rows)

    profiles = document["profiles"]
    assert set(profiles["wallets"]) == truth.wallets
    assert all(p["label"] for p in profiles["wallets"].values())
    assert set(profiles["sessions"]) == truth.sessions
    recommendations = document["recommendations"]
    assert set(recommendations["wallets"]) == truth.wallets
    assert set(document["suggestions"]) <= truth.wallets
    assert set(recommendations["global"]) == set(USE_CASES)
    top = {uc: ranked[0]["provider"] for uc, ranked in recommendations["global"].items()}
    assert top == truth.best
    # Every row counted in its cell: each score and use case was read (v4: joined).
    cells = recommendations["model"]["use_cases"]
    counted = {uc: {p: cell["n"] for p, cell in cells[uc].items()} for uc in cells}
    assert counted == truth.cells()

    # Raw output text (preview) stays in the ledger.
    needles = [text[:40].encode() for text in PREVIEW_TEXTS]
    ledger = b"".join(path.read_bytes() for path in truth.ledgers)
    assert all(needle in ledger for needle in needles) == (
        layout.partition("-")[0] in ("legacy", "server")
    )
    leaked = redis_contents(r)
    exported = b"".join(
        (data / name).read_bytes() for name in ("ai_analytics.json", "ai_analytics.html")
    )
    for needle in needles:
        assert needle not in leaked and needle not in exported, needle
