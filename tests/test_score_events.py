"""Score events joined to their interactions against a real Redis: before or after them, in
any order, replayed any number of times, the state equals a recount of the joined rows."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from layouts import write_v4
from test_store import assert_state_matches, flags_for

from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, ScoreEvent, parse_line

from processes import stop, wait_for

USE_CASES = ("coding", "research", "writing")


def v4_rows(n: int) -> list[Row]:
    """Interactions as the v4 writer leaves them: no score, no use case; some have their own."""
    rows = []
    for i in range(n):
        row = Row(
            id=f"ix-{i}",
            ts=1.8e9 + i,
            provider=("claude", "gpt", "gemini")[i % 3],
            model=None,
            session_id=f"s{i // 5}",
            wallet=f"w{i // 5 % 7}",
            credits_used=1.0,
            score=0.5 if i % 10 == 0 else None,  # a score of its own wins over any event
            latency_ms=900.0,
            output_len=120.0,
            use_case="chat" if i % 15 == 0 else None,
            success=True,
        )
        rows.append(row)
    return rows


def events_for(rows: list[Row], rng: random.Random) -> list[ScoreEvent]:
    """One to three events per interaction, most of them; some name no interaction at all."""
    events = []
    for row in rows:
        if rng.random() < 0.15:
            continue
        for k in range(rng.randint(1, 3)):
            events.append(
                ScoreEvent(
                    id=f"ev-{row.id}-{k}",
                    interaction_id=row.id,
                    ts=1.8e9 + rng.randint(0, 5),  # ties are broken by the event id
                    score=round(rng.random(), 3),
                    use_case=rng.choice(USE_CASES),
                )
            )
    events += [ScoreEvent(f"ev-orphan-{k}", f"gone-{k}", 1.8e9, 0.9, "coding") for k in range(9)]
    return events


def standing(rows: list[Row], events: list[ScoreEvent]) -> list[Row]:
    """What the state must say: each row filled by its newest event."""
    newest: dict[str, ScoreEvent] = {}
    for e in events:
        if e.interaction_id not in newest or (e.ts, e.id) > (
            newest[e.interaction_id].ts,
            newest[e.interaction_id].id,
        ):
            newest[e.interaction_id] = e
    return [newest[row.id].fill(row) if row.id in newest else row for row in rows]


def apply_rows(r, rows: list[Row]) -> None:
    while True:  # as scoring does it
        try:
            joins = store.read_joins(r, rows)
            store.apply_batch(r, rows, flags_for(rows), joins=joins)
            return
        except store.JoinsChanged:
            continue


def deliver_shuffled(r, rows: list[Row], events: list[ScoreEvent], rng: random.Random) -> None:
    """Rows and events in batches, shuffled together, a third of them delivered twice."""
    work: list[tuple[str, list]] = [("rows", rows[i : i + 40]) for i in range(0, len(rows), 40)]
    work += [("events", events[i : i + 50]) for i in range(0, len(events), 50)]
    work += rng.sample(work, len(work) // 3)
    rng.shuffle(work)
    for kind, batch in work:
        if kind == "rows":
            apply_rows(r, batch)
        else:
            store.apply_scores(r, batch)


@pytest.mark.parametrize("seed", range(4))
def test_events_before_after_and_replayed_leave_the_state_of_one_join(r, env, seed):
    rng = random.Random(seed)
    rows = v4_rows(300)
    events = events_for(rows, rng)
    deliver_shuffled(r, rows, events, rng)

    assert_state_matches(r, standing(rows, events))
    # The window holds rows in the order they came; each is read with its newest event.
    window = store.window_rows(r, 5000)
    assert len(window) == len(rows)
    assert {row.id: row for row in window} == {row.id: row for row in standing(rows, events)}
    counts = store.counts(r)
    assert counts["score_events"] == len(events)
    targets = {e.interaction_id for e in events}
    assert counts["score_events_joined"] == len(targets & {row.id for row in rows})
    assert counts["score_events_orphaned"] == 9


def test_an_event_that_arrives_while_a_batch_is_prepared_is_not_lost(r, env):
    rows = v4_rows(30)
    joins = store.read_joins(r, rows)  # nothing yet
    late = ScoreEvent("ev-race", rows[1].id, 1.8e9, 0.8, "coding")
    store.apply_scores(r, [late])  # arrives before the batch is applied
    with pytest.raises(store.JoinsChanged):
        store.apply_batch(r, rows, flags_for(rows), joins=joins)
    assert store.counts(r)["interactions_seen"] == 0  # the refused batch wrote nothing
    apply_rows(r, rows)
    assert_state_matches(r, standing(rows, [late]))


def test_a_score_event_line_is_read_as_one_and_any_field_it_cannot_read_is_dropped():
    event = parse_line(
        b'{"id": "e1", "interaction_id": "ix-9", "quality_score": 0.7, "safety_score": 1,'
        b' "domain_label": "Coding", "model_decision": "keep", "created_at": 1772366400000}'
    )
    assert event == ScoreEvent("e1", "ix-9", 1772366400.0, 0.7, "coding")
    odd = parse_line(b'{"interaction_id": 5, "quality_score": 7, "created_at": "soon"}')
    assert isinstance(odd, ScoreEvent) and odd.score is None and odd.ts is None
    assert odd.interaction_id == "5" and odd.id.startswith("h")
    assert odd.dropped == "created_at,quality_score"
    assert ScoreEvent.from_wire(odd.to_wire()) == odd


# --- end to end: a late score event while `run` tails both files ---------------------------


def wait_for_export(path: Path, ready, timeout: float = 180) -> dict:
    """The first export written after now that satisfies ``ready``."""
    since = time.time()

    def written() -> dict | None:
        try:
            document = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return document if document["generated_at"] > since and ready(document) else None

    return wait_for(written, timeout, f"an export at {path} that meets the condition", 0.2)


def test_a_score_event_an_hour_late_changes_the_next_export_and_a_replay_changes_nothing(
    env, r, tmp_path
):
    v4, scores = tmp_path / "ai_interactions_v4.jsonl", tmp_path / "ai_scores.jsonl"
    truth = write_v4(v4, scores, late_fraction=0.0, n=1500)
    by_id = {row.id: row for row in truth.interactions}
    provider, use_case = truth.interactions[0].provider, truth.interactions[0].use_case
    events = [orjson.loads(line) for line in scores.read_bytes().splitlines()]
    cell = [
        e
        for e in events
        if (by_id[e["interaction_id"]].provider, e["domain_label"]) == (provider, use_case)
    ]
    held = cell[:40]  # these come an hour after their interactions
    held_ids = {e["id"] for e in held}
    scores.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events if e["id"] not in held_ids))
    path = Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json"
    stack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thronos_analytics.cli",
            "run",
            "--no-demo",
            "--workers",
            "1",
            "--ledger",
            str(v4),
            "--ledger",
            str(scores),
        ],
        env={**env, "THRONOS_RETRAIN_SECONDS": "2", "THRONOS_MIN_TRAIN_ROWS": "500"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def complete(n_events: int):
            return lambda d: (
                d["stats"]["interactions_scored"] == len(truth.interactions)
                and d["stats"]["score_events"] == n_events
                and provider in d["recommendations"]["model"]["use_cases"].get(use_case, {})
            )

        before = wait_for_export(path, complete(len(events) - len(held)))
        old = before["recommendations"]["model"]["use_cases"][use_case][provider]
        assert old["n"] == len(cell) - len(held)

        late = [{**e, "created_at": e["created_at"] + 3_600_000} for e in held]
        with scores.open("ab") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in late))
        # An export's stats are read when it is written, its models at their retrain: the
        # one written during the retrain that saw the last events can still show the old n.
        def cell_n(d) -> int:
            return d["recommendations"]["model"]["use_cases"][use_case][provider]["n"]

        after = wait_for_export(path, lambda d: complete(len(events))(d) and cell_n(d) > old["n"])
        new = after["recommendations"]["model"]["use_cases"][use_case][provider]
        assert new["n"] == len(cell)
        expected = sum(e["quality_score"] for e in cell) / len(cell)
        assert new["score"] == pytest.approx(expected, abs=1e-4)
        assert after["stats"]["score_events_joined"] == len(truth.interactions)

        # Replayed: the same lines appended again, and the whole file backfilled.
        with scores.open("ab") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in late))
        done = subprocess.run(
            [sys.executable, "-m", "thronos_analytics.cli", "backfill", str(scores)],
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        # Every replayed event reached the script, which applied none of them again.
        repeats = len(late) + len(events) + len(late)
        wait_for(
            lambda: store.counts(r)["score_events_repeated"] >= repeats,
            timeout=120,
            what="the replayed events to reach a worker",
        )
        assert store.counts(r)["score_events_repeated"] == repeats
        replayed = wait_for_export(path, lambda d: True)
        # Only the count of replayed events moved.
        moved = {k for k in after["stats"] if replayed["stats"][k] != after["stats"][k]}
        assert moved == {"score_events_repeated"}
        again = replayed["recommendations"]["model"]["use_cases"][use_case][provider]
        assert (again["n"], again["score"]) == (new["n"], new["score"])
    finally:
        stop(stack, sig=signal.SIGINT, timeout=60)
