"""Live scoring sees each row's session and wallet as they are now, as in-process scoring
does: "unusual provider" rows of sessions newer than the model are found, in a real Redis,
through the scoring code the workers run."""

from __future__ import annotations

from thronos_analytics.analytics.anomaly import AnomalyDetector
from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.workers import scoring


def test_unusual_providers_of_sessions_newer_than_the_model_are_found_live(r, env):
    lines, truth = simulate(SimConfig(rows=8000, seed=5))
    rows = sorted((x for x in map(parse_line, lines) if type(x) is Row), key=lambda x: x.ts)
    old, live = rows[:4000], rows[4000:]
    detector = AnomalyDetector().fit(old)
    store.publish_model(r, "anomaly", detector.to_bytes(), {"n_samples": len(old)})
    for i in range(0, len(old), 500):
        scoring.score_batch(r, [row.to_wire() for row in old[i : i + 500]])
    for i in range(0, len(live), 100):  # as the tail producer sends them, in time order
        scoring.score_batch(r, [row.to_wire() for row in live[i : i + 100]])

    unusual = [row for row in live if truth["anomalies"].get(row.id) == "unusual_provider"]
    assert len(unusual) >= 5
    held = store.flags_of(r, [(row.id, row.ts) for row in unusual])
    assert set(held) == {row.id for row in unusual}
    flags = list(held.values())
    found_live = sum(f["is_anomaly"] for f in flags)
    # The model alone knows none of these sessions: without their history it sees nothing.
    found_blind = sum(f["is_anomaly"] for f in detector.flag(unusual))
    # In-process, a model trained on every row knows every session.
    full = AnomalyDetector().fit(rows)
    found_in_process = sum(f["is_anomaly"] for f in full.flag(unusual))
    assert found_live >= found_in_process - 1 and found_live > found_blind
    assert all("is unusual here" in f["reasons"][0] for f in flags if f["is_anomaly"])
