"""The state sharded over a real 3-master Redis Cluster: each row once whatever the
batches, score events joined, days leaving with the horizon, and ``run --drain`` from a
ledger to flags and ``ai_analytics.json`` with the broker on a plain Redis."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from redis.exceptions import RedisError
from test_retention import day_rows, ingest
from test_score_events import deliver_shuffled, events_for, standing, v4_rows
from test_store import assert_state_matches, flags_for

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.settings import settings, use_settings
from thronos_analytics.core.store.shards import all_shards
from thronos_analytics.core.store.status import read_status

from recount import assert_aggregates_match_ledger, assert_published_once, ledger_rows

pytest_plugins = ["cluster"]  # the fixtures redis_cluster and cluster_env


@pytest.fixture
def cr(env, r, cluster_env):
    """A cluster client on an empty cluster, from store.connect as the workers get it. ``r``
    empties the broker too: messages another test left there would be scored into this
    state (rows dated 2027 once moved the clock and made a drain's rows late)."""
    client = store.connect()
    client.flushall()
    return client


@pytest.fixture(params=["3", "16"], ids=lambda n: f"{n} shards")
def sharded(request, monkeypatch, cr):
    """``cr`` with the state in 3 shards (the default: one per master) or 16 (several on
    each master, and shards of uneven slots)."""
    monkeypatch.setenv("THRONOS_CLUSTER_SHARDS", request.param)
    use_settings(None)
    assert len(all_shards()) == int(request.param)
    return cr


def test_batches_split_by_shard_count_each_row_once(sharded):
    cr = sharded
    ledger_rows_ = day_rows(0, 1200) + day_rows(1, 300)
    first, second = ledger_rows_[:600], ledger_rows_[400:1500]
    assert store.apply_batch(cr, first + first[:50], flags_for(first + first[:50])) == (600, 600)
    assert store.apply_batch(cr, second, flags_for(second)) == (900, 900)
    assert store.apply_batch(cr, ledger_rows_, flags_for(ledger_rows_)) == (0, 0)
    assert_state_matches(cr, ledger_rows_)
    assert_published_once(cr, ledger_rows_)
    assert {row.id for row in store.window_rows(cr, 5000)} == {row.id for row in ledger_rows_}
    # The shards spread over every node, and status says so.
    held = {node.name: node.redis_connection.dbsize() for node in cr.get_primaries()}
    assert len(held) == 3 and min(held.values()) > 0, held
    memory = read_status(cr, settings(), ())["redis_memory"]
    assert (memory["nodes"], memory["nodes_without_shard"]) == (3, 0)


def test_status_names_masters_that_hold_no_shard(monkeypatch, cr):
    monkeypatch.setenv("THRONOS_CLUSTER_SHARDS", "2")
    use_settings(None)
    ingest(cr, day_rows(0, 50))
    memory = read_status(cr, settings(), ())["redis_memory"]
    assert (memory["nodes"], memory["shards"], memory["nodes_without_shard"]) == (3, 2, 1)


def test_the_window_gives_the_newest_rows_asked_for_whatever_each_shard_holds(sharded):
    cr = sharded
    rows = day_rows(0, 3000)
    ingest(cr, rows)
    # n shards hold about 1/n of any 1,000 rows each, some more and some fewer.
    for limit in (1000, 2999, 3000, 5000):
        newest = sorted(rows, key=lambda row: row.ts)[-limit:]
        assert [row.id for row in store.window_rows(cr, limit)] == [row.id for row in newest]


def test_a_state_of_other_shards_is_refused_in_one_line_and_kept_with_its_count(
    monkeypatch, env, cluster_env, cr
):
    from test_cli_errors import assert_one_line, cli

    monkeypatch.setenv("THRONOS_CLUSTER_SHARDS", "16")
    use_settings(None)
    rows = day_rows(0, 200)
    store.check_layout(cr)  # as every writer does first: the state records its layout
    ingest(cr, rows)
    # The default, 3 shards, would misread the 16 shards' keys: refused before any write,
    # by a command and by a worker.
    default = {k: v for k, v in {**env, **cluster_env}.items() if k != "THRONOS_CLUSTER_SHARDS"}
    for args in (["status"], ["worker", "--queues", "scoring"]):
        err = assert_one_line(cli(default, *args), "shards=16", "THRONOS_CLUSTER_SHARDS")
        assert "shards=3" in err
    assert store.counts(cr)["interactions_seen"] == len(rows)
    kept = cli({**default, "THRONOS_CLUSTER_SHARDS": "16"}, "status", "--json")
    assert kept.returncode == 0, kept.stderr.decode()[-2000:]
    assert orjson.loads(kept.stdout)["interactions_seen"] == len(rows)


def test_score_events_join_across_shards_in_any_order(cr):
    rng = random.Random(3)
    rows = v4_rows(300)
    events = events_for(rows, rng)
    deliver_shuffled(cr, rows, events, rng)
    assert_state_matches(cr, standing(rows, events))
    counts = store.counts(cr)
    assert counts["score_events"] == len(events)
    assert counts["score_events_orphaned"] == 9


def test_days_leave_every_shard_with_the_horizon(monkeypatch, env, cluster_env):
    monkeypatch.setenv("THRONOS_RETENTION_DAYS", "3")
    r = store.connect()
    r.flushall()
    days = [day_rows(d, 300) for d in range(9)]
    for rows in days:
        ingest(r, rows)
    kept = {row.session_id for rows in days[-3:] for row in rows}
    assert set(store.aggregate_values(r, "session")["calls"]) == kept
    assert sum(store.aggregate_values(r, "wallet")["calls"].values()) == 2700
    assert store.counts(r)["interactions_late"] == 0
    late = day_rows(2, 5, tag="late")
    assert ingest(r, late) == (0, 0) and ingest(r, late) == (0, 0)
    assert store.counts(r)["interactions_late"] == 5


def test_run_drain_on_a_cluster_flags_every_row_once_and_writes_the_export(
    env, cluster_env, cr, tmp_path
):
    ledger = tmp_path / "ledger.jsonl"
    write(SimConfig(rows=4000, seed=21, days=3), ledger)
    rows = ledger_rows(ledger)
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "run", "--drain", "--ledger", str(ledger)],
        env={**env, **cluster_env},
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert_published_once(cr, rows)
    assert_aggregates_match_ledger(cr, rows)
    export = orjson.loads((Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json").read_bytes())
    assert export["stats"]["interactions_scored"] == len({row.id for row in rows})
    assert export["stats"]["interactions_seen"] == export["stats"]["interactions_scored"]


def test_a_node_killed_mid_stream_and_restarted_loses_and_repeats_nothing(
    env, cluster_env, cr, workers, redis_cluster, tmp_path
):
    """kill -9 of one master while a tail producer streams: its shards' batches fail
    meanwhile, the producer's receipts send their rows again, and every row counts once."""
    from test_faults import WORKER_ENV, assert_scored_exactly_once, train_first_model

    from thronos_analytics.core.messages import SCORING, TRAINING, send_batch
    from thronos_analytics.producers.dead_letter import DeadLetter
    from thronos_analytics.producers.tail import TailProducer

    from processes import wait_for

    env.update(cluster_env)
    source = tmp_path / "source.jsonl"
    write(SimConfig(rows=6000, seed=12, days=3), source)
    lines = source.read_bytes().splitlines(keepends=True)
    rows = ledger_rows(source)
    workers.start("scoring1", SCORING, extra_env=WORKER_ENV)
    workers.start("training", TRAINING, extra_env=WORKER_ENV)
    workers.wait_ready()
    train_first_model(rows[:1000], cr)

    ledger = tmp_path / "ai_ledger.jsonl"
    ledger.write_bytes(b"".join(lines[:3000]))
    tail = TailProducer(
        ledger, send_batch, DeadLetter(tmp_path / "rej.jsonl", "t", None).record, confirm_with=cr
    )
    thread = threading.Thread(target=tail.run, daemon=True)
    thread.start()

    def scored() -> int:
        try:
            return store.counts(cr)["interactions_scored"]
        except RedisError:  # a node is away
            return -1

    try:
        wait_for(lambda: scored() >= 2000, what="scoring under way")
        victim = redis_cluster.ports[1]
        redis_cluster.kill(victim)
        with ledger.open("ab") as f:  # the ledger keeps growing while the node is away
            f.writelines(lines[3000:])
        time.sleep(2)  # batches for the dead node's shards fail meanwhile
        redis_cluster.restart(victim)
        wait_for(lambda: scored() == len(rows), timeout=240, what="every row scored")
    finally:
        tail.stop.set()
        thread.join(10)
    assert_scored_exactly_once(cr, rows)
