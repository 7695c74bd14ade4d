"""``store.apply_batch`` against a real Redis: every aggregate equals a recount of the rows,
however batches repeat, overlap or hold the same row twice."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.core.settings import settings
from thronos_analytics.core.store.status import read_status

from recount import assert_published_once


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[Row]:
    ledger = Path(tmp_path_factory.mktemp("store")) / "ledger.jsonl"
    # Two days: inside the retention horizon (tests/test_retention.py tests it).
    write(SimConfig(rows=1500, seed=5, drop=False, days=2), ledger)
    parsed = [parse_line(line) for line in ledger.read_bytes().splitlines()]
    return [row for row in parsed if isinstance(row, Row)]


def flags_for(rows: list[Row]) -> list[dict]:
    """Flags as scoring makes them; every 37th row is an anomaly."""
    return [
        {
            "id": row.id,
            "anomaly_score": 2.0 if i % 37 == 0 else 0.1,
            "is_anomaly": i % 37 == 0,
            "reasons": ["test"] if i % 37 == 0 else [],
            "model_version": "20260101T000000.000000",
        }
        for i, row in enumerate(rows)
    ]


def expected_aggregates(rows: list[Row]) -> dict[tuple[str, str], dict[str, float]]:
    """Each scope's measures as they should read: every distinct row counted once."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sessions: dict[str, set[str]] = defaultdict(set)
    unique = {row.id: row for row in rows}.values()
    for row in unique:
        for scope, who in (("session", row.session_id), ("wallet", row.wallet)):
            if not who:
                continue
            out[scope, "calls"][who] += 1
            out[scope, "credits"][who] += row.credits_used
            if row.score is not None:
                out[scope, "score_sum"][who] += row.score
                out[scope, "score_n"][who] += 1
            out[scope, "mix"][f"{who}\t{row.provider}"] += 1
            if row.use_case:
                out[scope, "uc"][f"{who}\t{row.use_case}"] += 1
        if row.wallet and row.session_id:
            sessions[row.wallet].add(row.session_id)
    out["wallet", "sessions"] = {w: len(s) for w, s in sessions.items()}
    return out


def assert_state_matches(r, rows: list[Row]) -> None:
    held = {scope: store.aggregate_values(r, scope) for scope in ("session", "wallet")}
    for (scope, measure), expected in expected_aggregates(rows).items():
        actual = {k: v for k, v in held[scope][measure].items() if v}
        assert actual.keys() == expected.keys(), (scope, measure)
        for field, value in expected.items():
            assert actual[field] == pytest.approx(value, rel=1e-12, abs=1e-9), (measure, field)
    # Each session's wallet is its last row's that names one.
    wallets = {row.session_id: row.wallet for row in rows if row.session_id and row.wallet}
    assert held["session"]["wallet"] == wallets


def test_overlapping_repeated_and_replayed_batches_count_each_row_once(r, env, rows):
    first, second = rows[:600], rows[400:1000]
    assert store.apply_batch(r, first + first[:50], flags_for(first + first[:50])) == (600, 600)
    # Overlaps the first: the script names the 200 it holds, and the rest go in as new.
    assert store.apply_batch(r, second, flags_for(second)) == (400, 400)
    assert store.apply_batch(r, rows[:1000], flags_for(rows[:1000])) == (0, 0)

    ingested = rows[:1000]
    assert store.counts(r)["interactions_seen"] == 1000
    assert_published_once(r, ingested)
    assert_state_matches(r, ingested)
    flagged = store.flags_of(r, [(row.id, row.ts) for row in ingested]).values()
    anomalies = sum(f["is_anomaly"] for f in flagged)
    assert store.counts(r)["anomalies"] == anomalies == len(store.anomalies(r))
    assert all(f["reasons"] == ["test"] for f in flagged if f["is_anomaly"])
    assert sum(read_status(r, settings(), ())["anomaly_rate"]["by_provider"].values()) == anomalies
    assert store.window_rows(r, 5000) == ingested


def test_parked_rows_get_their_flags_once_when_scored_later(r, env, rows):
    part = rows[:300]
    assert store.apply_batch(r, part, None) == (300, 0)  # no model: the rows wait
    assert store.counts(r)["pending"] == 300
    assert store.counts(r)["interactions_scored"] == 0
    assert len(store.unflagged(r, [(row.id, row.ts) for row in part])) == 300
    # The drained rows come back as old ones: flagged now, never counted again.
    assert store.apply_batch(r, part, flags_for(part)) == (0, 300)
    assert store.apply_batch(r, part, flags_for(part)) == (0, 0)
    assert_published_once(r, part)
    assert_state_matches(r, part)
    assert store.counts(r)["anomalies"] == sum(f["is_anomaly"] for f in flags_for(part))


def test_a_model_published_while_preparing_writes_nothing(r, env, rows):
    store.publish_model(r, "anomaly", b"not a model", {"trained_at": 0})
    assert store.apply_batch(r, rows[:10], None) == (0, -1)
    assert store.counts(r)["interactions_seen"] == 0 and store.counts(r)["pending"] == 0
    # An unusable model: the rows wait anyway.
    assert store.apply_batch(r, rows[:10], None, park_anyway=True) == (10, 0)
    assert store.counts(r)["pending"] == 10


def test_a_model_keeps_its_newest_versions_only(r, env):
    published = [
        store.publish_model(r, "profiles", b"v%d" % i, {"trained_at": i})
        for i in range(store.KEPT_VERSIONS + 3)
    ]
    kept = published[-store.KEPT_VERSIONS :]
    assert store.versions(r, "profiles") == kept[::-1]
    assert store.current_model(r, "profiles") == (kept[-1], b"v%d" % (len(published) - 1))
    assert store.model_version(r, "profiles", published[0]) is None


def test_batches_of_mixed_sizes_equal_one_batch(r, env, rows):
    start = 0
    for size in (1, 2, 999, 3, 495):
        store.apply_batch(r, rows[start : start + size], flags_for(rows[start : start + size]))
        start += size
    assert_state_matches(r, rows[:start])
    assert_published_once(r, rows[:start])


def test_status_counts_the_rows_scored_this_minute_and_the_recent_anomaly_rate(r, env, rows):
    import time

    from thronos_analytics.core.store.status import _throughput

    part = rows[:400]
    batches = [part[start : start + 100] for start in range(0, 400, 100)]
    anomalies = sum(f["is_anomaly"] for batch in batches for f in flags_for(batch))
    before = time.time()
    for batch in batches:
        store.apply_batch(r, batch, flags_for(batch))
    store.apply_batch(r, part, flags_for(part))  # a redelivery: nothing new, nothing counted
    now = time.time()
    if int(before // 60) != int(now // 60):
        pytest.skip("the batches straddled a minute boundary")
    throughput = _throughput(r, now)
    assert throughput["rows_scored_last_minute"] == 400
    assert throughput["last_flag_age_s"] is not None and throughput["last_flag_age_s"] < 60
    assert throughput["recent_anomaly_rate"] == round(anomalies / 400, 5)
