"""Incidents: each kind found on its entity within an hour of its onset, none on clean traffic.

The scenario ledgers (``tests/scenarios.py``) are traffic of our own, not the project
simulator's, with each kind planted on a known entity at a known time. Real llmperf
requests (``tests/real_ledgers.py``) must raise an error spike for the host that answered
HTTP 429 to most of them, and nothing for the hosts without errors. One drain through
``run --drain`` with real workers must export every kind.
"""

from __future__ import annotations

import doctest
import html
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import orjson
import pandas as pd
import pytest
import real_ledgers
import scenarios
from scenarios import PLANTS, Planted, frame, scenario
from test_layouts import drain

from thronos_analytics.analytics import incidents as module
from thronos_analytics.analytics.incidents import KINDS, detect_incidents
from thronos_analytics.core import keys
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.core.metrics import INCIDENT_KINDS, RedisCollector
from thronos_analytics.core.settings import settings
from thronos_analytics.workers import registry
from thronos_analytics.workers.export import SCHEMA_PATH

HOUR = 3600.0


def found(planted: Planted, incidents: list[dict[str, Any]]) -> dict[str, Any]:
    """The incident that is ``planted``: its kind and entity, onset within an hour."""
    hits = [i for i in incidents if planted.matches(i)]
    assert hits, (planted, [i["message"] for i in incidents])
    best = min(hits, key=lambda i: abs(i["since_ts"] - planted.onset))
    assert abs(best["since_ts"] - planted.onset) <= HOUR, (planted, best)
    return best


def assert_ended_or_lasting(planted: Planted, incident: dict[str, Any]) -> None:
    if planted.until is None:
        assert incident["active"] and incident["until_ts"] is None, incident
    else:
        assert not incident["active"], incident
        assert abs(incident["until_ts"] - planted.until) <= 2 * HOUR, (planted, incident)


def test_the_module_doctest_holds():
    assert doctest.testmod(module).failed == 0


def test_the_false_alarm_design_is_the_one_stated():
    assert pytest.approx(np.log(24 / 1e-4)) == module.H_PROVIDER
    assert module.H_SPEND["hour"] == pytest.approx(np.log(24 * 6 / 1e-6))
    assert module.H_SPEND["day"] == pytest.approx(np.log(6 / 1e-6))
    assert pytest.approx(np.log(1e6 / 1e-3)) == module.H_BURST
    assert INCIDENT_KINDS == KINDS


@pytest.mark.parametrize("kind", list(PLANTS))
def test_each_kind_is_found_on_its_entity_from_its_onset_and_nothing_else(kind):
    s = scenario(kind)
    incidents = detect_incidents(frame(kind))
    (planted,) = s.truth
    incident = found(planted, incidents)
    assert_ended_or_lasting(planted, incident)
    assert [i["kind"] for i in incidents] == [kind], [i["message"] for i in incidents]
    evidence = incident["evidence"]
    assert evidence["ratio"] >= 2.5 and evidence["statistic"] >= evidence["threshold"] > 0
    assert incident["message"] and "\n" not in incident["message"]


@pytest.mark.parametrize("rows", [30_000, 8_000])
def test_every_kind_at_once_is_found_newest_first(rows):
    s = scenario("every_kind", rows=rows)
    incidents = detect_incidents(frame("every_kind", rows))
    assert len(incidents) == len(s.truth) == len(KINDS)
    for planted in s.truth:
        assert_ended_or_lasting(planted, found(planted, incidents))
    assert [i["since_ts"] for i in incidents] == sorted(i["since_ts"] for i in incidents)[::-1]
    orjson.dumps(incidents)  # JSON-ready as it is


@pytest.mark.parametrize(
    "rows, seed", [(30_000, 11), (30_000, 20), (8_000, 11), (8_000, 20), (8_000, 21)]
)
def test_clean_traffic_raises_no_incident(rows, seed):
    assert detect_incidents(frame("clean", rows, seed)) == []


def test_the_same_ledger_read_from_server_lines_gives_the_same_incidents():
    spec = detect_incidents(frame("every_kind", 8_000))
    server = detect_incidents(frame("every_kind", 8_000, layout="server"))
    assert [(i["kind"], i["key"]) for i in spec] == [(i["kind"], i["key"]) for i in server]


def test_an_incident_is_found_while_it_happens_and_not_before():
    (planted,) = scenario("latency_regression").truth
    rows = frame("latency_regression")
    assert detect_incidents(rows[rows["ts"] < planted.onset]) == []
    # Three hours into it, on the ledger's clock then.
    now = planted.onset + 3 * HOUR
    incident = found(planted, detect_incidents(rows[rows["ts"] <= now]))
    assert incident["active"]


def test_odd_frames_give_no_incident_and_no_error():
    assert detect_incidents(pd.DataFrame(columns=["ts", "provider"])) == []
    assert detect_incidents(pd.DataFrame({"ts": [1.7e9], "provider": ["p"]})) == []
    rows = frame("every_kind", 8_000)
    # Time and provider only: no failure, output, latency or wallet to tell one by.
    assert detect_incidents(rows[["ts", "provider"]]) == []
    # On a clock 40 days past the ledger, nothing in it is still going on.
    later = detect_incidents(rows, now=float(rows["ts"].max()) + 40 * 86_400)
    assert not any(i["active"] for i in later)


def test_detection_on_a_full_training_window_takes_seconds():
    """200,000 rows: seven copies of the every-kind ledger on their own wallets and providers."""
    base = frame("every_kind")
    copies = []
    for k in range(7):
        copy = base.copy()
        copy["wallet"] = copy["wallet"] + f"-{k}"
        copy["provider"] = copy["provider"] + f"-{k}"
        copies.append(copy)
    window = pd.concat(copies, ignore_index=True).iloc[:200_000]
    detect_incidents(window.iloc[:1000])  # imports and caches warm
    started = time.perf_counter()
    incidents = detect_incidents(window)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, elapsed  # about 1.5 s on a laptop core
    assert len(incidents) >= 6 * len(KINDS)


# --- real data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llmperf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pd.DataFrame]:
    if (reason := real_ledgers.missing()) is not None:
        pytest.skip(reason)
    truth = real_ledgers.write_llmperf_legacy(tmp_path_factory.mktemp("llmperf"))
    (path,) = truth.ledgers
    rows = [parse_line(line) for line in path.read_bytes().splitlines()]
    return truth, pd.DataFrame([r for r in rows if isinstance(r, Row)], columns=Row._fields)


def test_the_llmperf_host_answering_429_raises_an_error_spike_and_clean_hosts_nothing(llmperf):
    truth, frame = llmperf
    incidents = detect_incidents(frame)
    calls = frame.groupby("provider")["success"].agg(["size", "sum"])
    failing = set(calls.index[calls["sum"] < calls["size"]])
    clean = set(calls.index) - failing
    # lepton: HTTP 429 on 390 of 450 requests.
    answered_429 = {c.provider for c in truth.calls if not c.success} & {"lepton"}
    assert answered_429 == {"lepton"}
    spikes = {i["provider"] for i in incidents if i["kind"] == "error_spike"}
    assert "lepton" in spikes
    # Nothing names a host without errors, nor a wallet that called only such hosts.
    named = {i["provider"] for i in incidents if "provider" in i}
    assert named <= failing, named & clean
    hosts_of = frame.groupby("wallet")["provider"].agg(set)
    for incident in incidents:
        if "wallet" in incident:
            assert hosts_of[incident["wallet"]] & failing, incident["message"]


# --- end to end ---------------------------------------------------------------------------


def test_a_drain_exports_every_kind_with_its_entity_and_onset(env, r, tmp_path):
    s = scenario("every_kind", rows=8_000)
    data = Path(env["THRONOS_DATA_DIR"])
    ledger = s.write(data / "ai_ledger.jsonl")
    summary = drain(env, (ledger,))
    assert summary["interactions_scored"] == len(s.interactions)

    document = orjson.loads((data / "ai_analytics.json").read_bytes())
    schema = orjson.loads(SCHEMA_PATH.read_bytes())
    assert "incidents" in schema["required"]
    jsonschema.validate(document["incidents"], schema["properties"]["incidents"])
    assert document["models"]["incidents"]["n_samples"] == len(s.interactions)
    exported = document["incidents"]
    for planted in s.truth:
        assert_ended_or_lasting(planted, found(planted, exported))
    assert len(exported) == len(s.truth)
    # The pipeline's window gives what the rows give in process.
    in_process = detect_incidents(frame("every_kind", 8_000))
    assert [i["key"] for i in exported] == [i["key"] for i in in_process]

    # Redis keeps them with the time each was first reported; metrics count the active ones.
    stored = {k.decode(): orjson.loads(v) for k, v in r.hgetall(keys.INCIDENTS).items()}
    assert set(stored) == {i["key"] for i in exported}
    assert all(i["first_reported_at"] > 0 for i in stored.values())
    collector = RedisCollector(r, settings(), registry.NAMES)
    (gauge,) = [m for m in collector.collect() if m.name == "thronos_incidents_active"]
    counts = {sample.labels["kind"]: sample.value for sample in gauge.samples}
    assert set(counts) == set(KINDS)
    assert counts == {k: sum(i["active"] and i["kind"] == k for i in exported) for k in KINDS}

    # The page lists the active ones, and those that ended folded away below them.
    page = html.unescape((data / "ai_analytics.html").read_text())
    section = page.split("<h2>Incidents</h2>", 1)[1].split("</section>", 1)[0]
    listed, folded = section.split("<details>", 1)
    for incident in exported:
        assert incident["message"] in (listed if incident["active"] else folded)


def test_the_scenarios_are_what_their_docstring_says():
    rows = scenario("clean").interactions
    assert len(rows) == scenarios.ROWS and len({r.wallet for r in rows}) == scenarios.WALLETS
    span = (rows[-1].ts - rows[0].ts) / 86_400
    assert 4.9 < span <= scenarios.DAYS
    hours = pd.Series([int(r.ts // 3600 % 24) for r in rows]).value_counts()
    assert hours[scenarios.PEAK_HOUR] > 4 * hours[(scenarios.PEAK_HOUR + 12) % 24]
    assert 0.015 < np.mean([not r.success for r in rows]) < 0.025
    assert scenario("every_kind") is scenario("every_kind")  # cached: one build per run
    assert {p.kind for p in scenario("every_kind").truth} == set(KINDS)
