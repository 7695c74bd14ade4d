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


def test_the_live_context_counts_each_sessions_and_wallets_other_calls(r, env):
    """``provider_context`` against a recount from the rows: the state's calls plus the
    batch's rows not yet counted, each once, less the row itself; a session's on its rows'
    days and the day before, a wallet's for good."""
    lines, _ = simulate(SimConfig(rows=3000, seed=8))
    rows = sorted((x for x in map(parse_line, lines) if type(x) is Row), key=lambda x: x.ts)
    counted, batch = rows[:2000], rows[2000:2600]
    batch += batch[:50] + counted[-50:]  # repeated within the batch, and counted already
    for i in range(0, len(counted), 500):
        scoring.score_batch(r, [row.to_wire() for row in counted[i : i + 500]])
    providers = sorted({row.provider for row in rows})[:-1]  # one the model does not know
    counts, given = store.provider_context(r, batch, providers)

    known = {row.id: row for row in counted + batch}.values()
    day = lambda row: int(row.ts // 86_400)  # noqa: E731
    days_of: dict[str, set[int]] = {}
    for row in batch:
        if row.session_id:
            days_of.setdefault(row.session_id, set()).update({day(row), day(row) - 1})
    for i, row in enumerate(batch):
        for k, attr in enumerate(("session_id", "wallet")):
            who = getattr(row, attr)
            assert given[i, k] == bool(who)
            if not who:
                continue
            same = [x for x in known if getattr(x, attr) == who]
            if k == 0:
                same = [x for x in same if day(x) in days_of[who]]
            expected = [
                sum(x.provider == p for x in same) - (row.provider == p) for p in providers
            ]
            assert counts[i, k].tolist() == expected, (i, attr)
