"""Score events joined to their interactions against a real Redis: before or after them, in
any order, replayed any number of times, the state equals a recount of the joined rows."""

from __future__ import annotations

import random

import pytest
from test_store import assert_state_matches, flags_for

from analytics.contract import Row, ScoreEvent, parse_line
from thronos_analytics import keys, store

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


@pytest.mark.parametrize("seed", range(4))
def test_events_before_after_and_replayed_leave_the_state_of_one_join(r, env, seed):
    rng = random.Random(seed)
    rows = v4_rows(300)
    events = events_for(rows, rng)
    # Rows and events in batches, shuffled together, a third of them delivered twice.
    work = [("rows", rows[i : i + 40]) for i in range(0, len(rows), 40)]
    work += [("events", events[i : i + 50]) for i in range(0, len(events), 50)]
    work += rng.sample(work, len(work) // 3)
    rng.shuffle(work)
    for kind, batch in work:
        if kind == "rows":
            apply_rows(r, batch)  # type: ignore[arg-type]
        else:
            store.apply_scores(r, batch)  # type: ignore[arg-type]

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
    assert r.scard(keys.SEEN) == 0  # the refused batch wrote nothing
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
