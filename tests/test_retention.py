"""The retention horizon against a real Redis: inside it every id, flag, join and session is
exact; past it the state stops growing, late rows count once, and nothing is lost."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest
from test_store import assert_state_matches, flags_for

from thronos_analytics.core import keys, store
from thronos_analytics.core.contract import Rejection, Row, ScoreEvent

DAY = 86_400.0
START = 1.75e9 - 1.75e9 % DAY  # midnight UTC, in the past: the clock stops at tomorrow


def day_rows(day: int, n: int, tag: str = "") -> list[Row]:
    """``n`` rows on ``day`` (days after START), in sessions of 5 over 7 wallets."""
    return [
        Row(
            id=f"d{day}{tag}-{i}",
            ts=START + day * DAY + 60.0 * i,
            provider=("claude", "gpt", "gemini")[i % 3],
            model=None,
            session_id=f"s{day}{tag}-{i // 5}",
            wallet=f"w{i // 5 % 7}",
            credits_used=1.0 + i % 4,
            score=0.5 + (i % 5) / 10,
            latency_ms=900.0,
            output_len=120.0,
            use_case=("coding", "chat")[i % 2],
            success=True,
        )
        for i in range(n)
    ]


def ingest(r, rows: list[Row]) -> tuple[int, int]:
    return store.apply_batch(r, rows, flags_for(rows), joins=store.read_joins(r, rows))


@pytest.fixture
def horizon(env, monkeypatch):
    """Three days, set before anything in the test reads the settings."""
    monkeypatch.setenv("THRONOS_RETENTION_DAYS", "3")
    env["THRONOS_RETENTION_DAYS"] = "3"
    return 3


def test_days_past_the_horizon_leave_and_their_sessions_live_on_in_the_wallets(horizon, r, env):
    days = [day_rows(d, 200) for d in range(3 * horizon)]
    for rows in days:
        assert ingest(r, rows) == (200, 200)
    everything = [row for rows in days for row in rows]
    kept = [row for rows in days[-horizon:] for row in rows]
    counts = store.counts(r)
    assert counts["interactions_seen"] == counts["interactions_scored"] == len(everything)
    assert counts["interactions_late"] == 0
    # Sessions and flags are kept for the horizon's days; wallets for all time.
    sessions = store.aggregate_values(r, "session")
    assert set(sessions["calls"]) == {row.session_id for row in kept}
    wallets = store.aggregate_values(r, "wallet")
    assert sum(wallets["calls"].values()) == len(everything)
    assert sum(wallets["credits"].values()) == pytest.approx(
        sum(r.credits_used for r in everything)
    )
    assert sum(wallets["sessions"].values()) == len({row.session_id for row in everything})
    flags = store.flags_of(r, [(row.id, row.ts) for row in everything])
    assert flags.keys() == {row.id for row in kept}
    # What left its horizon waits for nothing: a drain waiting for flags is done.
    assert store.unflagged(r, [(row.id, row.ts) for row in everything]) == []


def test_a_row_older_than_the_horizon_counts_as_late_once_and_changes_nothing_else(horizon, r, env):
    ingest(r, day_rows(0, 100))
    ingest(r, day_rows(2 * horizon, 100))
    before = store.aggregate_values(r, "wallet")
    old = day_rows(1, 10, tag="x")  # a day already past the horizon, never seen
    for _ in range(3):  # and delivered three times
        assert ingest(r, old) == (0, 0)
    assert store.counts(r)["interactions_late"] == 10
    assert store.aggregate_values(r, "wallet") == before
    assert store.unseen(r, old) == []  # counted: a receipt does not send it again
    assert store.unflagged(r, [(row.id, row.ts) for row in old]) == []


def test_the_state_stops_growing_with_the_ledger(horizon, r, env, monkeypatch):
    """Keys and memory at three horizons of ledger equal those at one, within noise."""
    # The training window is bounded by rows, not days: full from the start here.
    monkeypatch.setenv("THRONOS_WINDOW_ROWS", "300")

    def size_after(days: range) -> tuple[int, int]:
        for d in days:
            ingest(r, day_rows(d, 400))
        return int(r.dbsize()), int(r.info("memory")["used_memory"])

    keys_1, memory_1 = size_after(range(horizon + 1))
    keys_3, memory_3 = size_after(range(horizon + 1, 3 * horizon + 1))
    assert keys_3 <= keys_1 * 1.05
    assert memory_3 <= memory_1 * 1.2


def test_rows_waiting_for_a_model_keep_their_day_until_they_are_flagged(horizon, r, env):
    early = day_rows(0, 50)
    assert store.apply_batch(r, early, None) == (50, 0)  # no model: they wait
    assert store.apply_batch(r, day_rows(2 * horizon, 50), None) == (50, 0)
    # The first model's training drains PENDING: its rows are queued, not yet scored, when
    # newer rows are scored and the clock leaves day 0 behind.
    assert store.drain_pending(r, lambda rows: None) == 100
    assert ingest(r, day_rows(2 * horizon + 1, 50)) == (50, 50)
    assert store.unflagged(r, [(row.id, row.ts) for row in early]) != []  # day 0 stayed
    # The queued rows come: their day still holds them, so they are flagged, not late;
    # with none of its rows waiting any more, day 0 then leaves.
    assert ingest(r, early) == (0, 50)
    assert store.counts(r)["interactions_late"] == 0
    streamed = {flag["id"] for flag in store.latest_flags(r, 1000)[0]}
    assert {row.id for row in early} <= streamed
    assert store.flags_of(r, [(row.id, row.ts) for row in early]) == {}


def test_a_score_event_joins_inside_the_horizon_and_is_late_past_it(horizon, r, env):
    rows = [row._replace(score=None, use_case=None) for row in day_rows(0, 20)]
    ingest(r, rows)
    events = [ScoreEvent(f"e-{row.id}", row.id, row.ts + 30, 0.9, "writing") for row in rows[:10]]
    assert store.apply_scores(r, events) == 10
    assert store.apply_scores(r, events) == 0  # a replay changes nothing
    joined = [e.fill(row) for e, row in zip(events, rows, strict=False)] + rows[10:]
    assert_state_matches(r, joined)
    assert store.counts(r)["score_events_joined"] == 10
    # An event that names a row not seen yet waits for it, and the row counts it.
    orphan = ScoreEvent("e-later", "d0-later", START + 100, 0.7, "chat")
    assert store.apply_scores(r, [orphan]) == 1
    assert store.counts(r)["score_events_orphaned"] == 1
    later = day_rows(0, 1)[0]._replace(id="d0-later", score=None, use_case=None)
    ingest(r, [later])
    assert store.counts(r)["score_events_orphaned"] == 0
    assert store.window_rows(r, 100)[-1] == orphan.fill(later)
    # Past the horizon an event has no row to change: counted late, once.
    ingest(r, day_rows(2 * horizon, 20))
    stale = ScoreEvent("e-stale", rows[15].id, rows[15].ts + 30, 0.1, "chat")
    assert store.apply_scores(r, [stale]) == 0
    assert store.apply_scores(r, [stale]) == 0
    assert store.counts(r)["score_events_late"] == 1



def test_a_rejected_line_counts_once_for_the_horizon_and_its_record_expires(horizon, r, env):
    bad = [Rejection(n, "not JSON", f"{{broken {n}") for n in range(1, 6)]
    assert store.record_rejections(r, "a.jsonl", bad) == 5
    assert store.record_rejections(r, "a.jsonl", bad[:3]) == 0  # the same lines read again
    assert store.record_rejections(r, "b.jsonl", bad[:1]) == 1  # another ledger's line 1
    today = keys.day(time.time())
    assert r.hlen(keys.rejected_on(today)) == 6
    assert horizon * DAY < r.ttl(keys.rejected_on(today)) <= (horizon + 1) * DAY
    assert [x["line"] for x in store.latest_rejections(r, 10)] == [1, 5, 4, 3, 2, 1]
    # As if those lines had been first rejected on the horizon's first day: still known.
    r.rename(keys.rejected_on(today), keys.rejected_on(today - horizon))
    assert store.record_rejections(r, "a.jsonl", bad) == 0
    # On the day before it: forgotten, so they count again.
    r.rename(keys.rejected_on(today - horizon), keys.rejected_on(today - horizon - 1))
    assert store.record_rejections(r, "a.jsonl", bad) == 5
    # An earlier release kept every rejection in one hash: still looked in, and counted.
    old = Rejection(9, "old", "old line")
    digest = hashlib.sha1(old.raw.encode()).hexdigest()[:12]
    r.hset(keys.REJECTED_BEFORE_DAYS, f"old.jsonl:9:{digest}", orjson.dumps({"reason": "old"}))
    assert store.record_rejections(r, "old.jsonl", [old]) == 0
    assert store.counts(r)["interactions_rejected"] == 6 + 5 + 1
