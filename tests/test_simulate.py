"""The synthetic ledger: deterministic, readable by the contract, and true to its truth.

Given a ``SimConfig``, when the ledger is simulated, then the same seed gives the same
bytes, every planted bad line is rejected by the row contract and every other line parses,
and the planted structure (anomaly kinds, personas, popular-but-not-best providers, the
quality drop) is in the rows where the truth says it is.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from thronos_analytics.analytics.simulate import (
    ANOMALY_KINDS,
    BAD_KINDS,
    PROVIDERS,
    SimConfig,
    generate,
    simulate,
    write,
)
from thronos_analytics.core.contract import Rejection, Row, parse_line

ROWS = 20_000


def parse_all(lines: list[bytes]) -> list[Row | Rejection]:
    return [parse_line(line, no) for no, line in enumerate(lines, 1)]


@pytest.fixture(scope="module")
def ledger() -> dict:
    cfg = SimConfig(rows=ROWS, seed=3, bad_rate=0.005)
    lines, truth = simulate(cfg)
    parsed = parse_all(lines)
    rows = [r for r in parsed if isinstance(r, Row)]
    return {"cfg": cfg, "lines": lines, "truth": truth, "parsed": parsed, "rows": rows}


def test_same_seed_gives_the_same_bytes_and_truth() -> None:
    cfg = SimConfig(rows=3000, seed=11, bad_rate=0.01)
    first, second = simulate(cfg), simulate(SimConfig(rows=3000, seed=11, bad_rate=0.01))
    assert first[0] == second[0]
    assert orjson.dumps(first[1]) == orjson.dumps(second[1])


def test_different_seeds_give_different_ledgers() -> None:
    a, truth_a = simulate(SimConfig(rows=3000, seed=1))
    b, truth_b = simulate(SimConfig(rows=3000, seed=2))
    assert a != b
    assert set(truth_a["groups"]) != set(truth_b["groups"])


def test_bad_lines_do_not_change_the_valid_rows() -> None:
    clean, _ = simulate(SimConfig(rows=3000, seed=5))
    mixed, truth = simulate(SimConfig(rows=3000, seed=5, bad_rate=0.02))
    bad = {int(no) for no in truth["bad_lines"]}
    assert [line for no, line in enumerate(mixed, 1) if no not in bad] == clean


def test_write_counts_match_the_file(tmp_path: Path) -> None:
    cfg = SimConfig(rows=ROWS, seed=4, bad_rate=0.004)
    out, truth_path = tmp_path / "nested" / "ai_ledger.jsonl", tmp_path / "truth.json"
    seen: list[int] = []
    summary = write(cfg, out, truth_path, progress=seen.append)

    data = out.read_bytes()
    assert data.endswith(b"\n")
    lines = data[:-1].split(b"\n")
    truth = orjson.loads(truth_path.read_bytes())
    assert summary["rows"] == len(lines) == summary["valid"] + summary["bad"]
    assert summary["valid"] == truth["valid_rows"] == cfg.rows
    assert summary["bad"] == len(truth["bad_lines"]) == round(cfg.bad_rate * cfg.rows)
    assert summary["anomalies"] == len(truth["anomalies"]) == round(cfg.anomaly_rate * cfg.rows)
    assert sum(summary["anomaly_kinds"].values()) == summary["anomalies"]
    assert summary["bytes"] == len(data)
    assert seen and seen[-1] == len(lines)
    assert summary["legacy"] == sum(line.startswith(b'{"interaction_id"') for line in lines)
    # The file is what simulate returns, and the truth file is the truth dict.
    expected_lines, expected_truth = simulate(cfg)
    assert lines == expected_lines
    assert truth == expected_truth
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_bad_lines_are_rejected_and_all_others_parse(ledger: dict) -> None:
    bad = {int(no): kind for no, kind in ledger["truth"]["bad_lines"].items()}
    assert set(bad.values()) == set(BAD_KINDS)
    for no, result in enumerate(ledger["parsed"], 1):
        if no in bad:
            assert isinstance(result, Rejection), (no, bad[no])
        else:
            assert isinstance(result, Row), (no, result)
    rows = ledger["rows"]
    assert len(rows) == ledger["truth"]["valid_rows"]
    assert [r.id for r in rows] == [f"sim-3-{i}" for i in range(ROWS)]
    ts = [r.ts for r in rows]
    assert ts == sorted(ts)
    period = ledger["truth"]["period"]
    assert period["start_ts"] <= ts[0] and ts[-1] < period["end_ts"]


def test_rows_carry_the_intended_values(ledger: dict) -> None:
    sim = generate(ledger["cfg"])
    rows = ledger["rows"]
    assert np.allclose([r.ts for r in rows], sim.ts_ms / 1000.0, rtol=0, atol=1e-6)
    assert [r.provider for r in rows] == [PROVIDERS[p] for p in sim.provider]
    assert np.allclose([r.latency_ms for r in rows], sim.latency_ms, rtol=1e-9)
    assert np.allclose([r.credits_used for r in rows], sim.credits)
    assert np.array_equal([r.output_len for r in rows], sim.output_chars)
    score = np.array([r.score for r in rows])
    legacy = sim.legacy
    assert 0.1 < legacy.mean() < 0.3
    assert np.array_equal(score[~legacy], sim.score[~legacy])
    assert np.abs(score[legacy] - sim.score[legacy]).max() <= 0.0026
    # Every ts format is used.
    raw = [line for line in ledger["lines"] if line.startswith(b'{"id"')]
    kinds = Counter(
        "iso" if b'"ts":"' in x else "ms" if b'"ts":1' in x and b'.' not in x.split(b",")[1]
        else "s" for x in raw
    )
    assert set(kinds) == {"iso", "ms", "s"}
    legacy_lines = [line for line in ledger["lines"] if line.startswith(b'{"interaction_id"')]
    assert any(b'"duration":' in x for x in legacy_lines)
    assert any(b'"latency_ms":' in x for x in legacy_lines)


def test_every_anomaly_kind_is_planted_and_separable(ledger: dict) -> None:
    truth, rows = ledger["truth"], ledger["rows"]
    anomalies = truth["anomalies"]
    counts = Counter(anomalies.values())
    assert set(counts) == set(ANOMALY_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    norms = truth["providers"]
    used = {g: {p for p, w in persona["providers"].items() if w > 0}
            for g, persona in truth["personas"].items()}

    def flags(r: Row) -> set[str]:
        norm = norms[r.provider]
        found = set()
        if r.output_len >= 30 * norm["output_chars_median"]:
            found.add("long_output")
        if r.output_len <= 5:
            found.add("short_output")
        if r.score <= 0.05 and truth["true_scores"][r.use_case][r.provider] >= 0.65:
            found.add("low_score")
        if r.latency_ms >= 20 * norm["latency_ms_median"]:
            found.add("extreme_latency")
        if r.credits_used >= 20 * norm["credits_median"]:
            found.add("credits_off")
        if r.provider not in used[truth["session_groups"][r.session_id]]:
            found.add("unusual_provider")
        return found

    for r in rows:
        kind = anomalies.get(r.id)
        assert flags(r) == ({kind} if kind else set()), (r, kind)


def test_personas_are_consistent(ledger: dict) -> None:
    truth, rows = ledger["truth"], ledger["rows"]
    groups, session_groups = truth["groups"], truth["session_groups"]
    assert set(groups.values()) == set(truth["personas"])
    session_wallet = {}
    for r in rows:
        assert session_wallet.setdefault(r.session_id, r.wallet) == r.wallet
        assert session_groups[r.session_id] == groups[r.wallet]
    assert set(session_wallet) == set(session_groups)
    assert set(groups) == set(session_wallet.values())
    assert 10 <= len(rows) / len(groups) <= 35
    calls = Counter(r.session_id for r in rows)
    by_group = defaultdict(list)
    for session, n in calls.items():
        by_group[session_groups[session]].append(n)
    means = {g: np.mean(v) for g, v in by_group.items()}
    assert means["architect"] > means["researcher"] > means["casual"]
    assert all(set(offsets) == set(PROVIDERS) for offsets in truth["wallet_offsets"].values())


def test_the_popular_provider_is_not_always_the_best(ledger: dict) -> None:
    truth, rows = ledger["truth"], ledger["rows"]
    drop = truth["drop"]
    counts: dict[str, Counter] = defaultdict(Counter)
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        dropped = (r.provider, r.use_case) == (drop["provider"], drop["use_case"]) and (
            r.ts >= drop["onset_ts"]
        )
        if r.id in truth["anomalies"]:
            continue
        counts[r.use_case][r.provider] += 1
        if not dropped:
            scores[r.use_case, r.provider].append(r.score)
    differs = []
    for use_case, planted in truth["popular_vs_best"].items():
        total = sum(counts[use_case].values())
        popular = counts[use_case].most_common(1)[0][0]
        used = [p for p, n in counts[use_case].items() if n >= 0.05 * total]
        best = max(used, key=lambda p: np.mean(scores[use_case, p]))
        true = truth["true_scores"][use_case]
        runner_up = max(true[p] for p in used if p != planted["best"])
        assert popular == planted["popular"]
        if true[planted["best"]] - runner_up >= 0.04:
            assert best == planted["best"], use_case
        if popular != best:
            differs.append(use_case)
    assert differs
    assert any(v["popular"] != v["best"] for v in truth["popular_vs_best"].values())


@pytest.mark.parametrize("seed", range(4))
def test_the_drop_starts_inside_the_period(seed: int) -> None:
    cfg = SimConfig(rows=ROWS, seed=seed)
    lines, truth = simulate(cfg)
    drop, period = truth["drop"], truth["period"]
    span = period["end_ts"] - period["start_ts"]
    assert period["start_ts"] + 2 * span / 3 <= drop["onset_ts"] < period["end_ts"]
    assert drop["size"] == pytest.approx(0.25)
    assert drop["rows_after"] > 100
    before, after = [], []
    for r in map(parse_line, lines):
        cell = (r.provider, r.use_case) == (drop["provider"], drop["use_case"])
        if cell and r.id not in truth["anomalies"]:
            (after if r.ts >= drop["onset_ts"] else before).append(r.score)
    assert before and after
    assert 0.18 < np.mean(before) - np.mean(after) < 0.32


def test_without_a_drop_only_the_dropped_scores_change() -> None:
    sim = generate(SimConfig(rows=5000, seed=8))
    flat = generate(SimConfig(rows=5000, seed=8, drop=False))
    assert flat.drop is None and sim.drop is not None
    changed = sim.score != flat.score
    assert changed.any()
    assert np.array_equal(sim.output_chars, flat.output_chars)
    assert set(zip(sim.provider[changed], sim.use_case[changed], strict=True)) == {
        (PROVIDERS.index(sim.drop["provider"]), ("coding", "research", "writing", "chat",
                                                 "quantum").index(sim.drop["use_case"]))
    }


@pytest.mark.parametrize("rows", [0, 1, 2, 9, 60])
def test_tiny_ledgers_still_follow_the_contract(rows: int) -> None:
    lines, truth = simulate(SimConfig(rows=rows, seed=1, bad_rate=0.3, anomaly_rate=0.5))
    bad = {int(no) for no in truth["bad_lines"]}
    assert len(lines) == rows + len(bad) and truth["valid_rows"] == rows
    for no, result in enumerate(parse_all(lines), 1):
        assert isinstance(result, Rejection if no in bad else Row)
    assert len(truth["anomalies"]) == round(0.5 * rows)
    assert orjson.loads(orjson.dumps(truth)) == truth


@pytest.mark.parametrize(
    "change",
    [{"rows": -1}, {"seed": -2}, {"days": 0}, {"bad_rate": 1.5}, {"legacy_rate": -0.1}],
)
def test_a_bad_config_is_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        simulate(SimConfig(**change))
