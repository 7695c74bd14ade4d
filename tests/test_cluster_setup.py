"""Running on a Redis Cluster: the test cluster itself, the cluster client that
``store.connect`` gives with THRONOS_REDIS_CLUSTER=1 (locks, run_id), a node that comes
back from kill -9 with its data, and the one-line refusals of a cluster set up without a
broker of its own or without REDIS_URL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from thronos_analytics.core import store
from thronos_analytics.core.settings import Settings
from thronos_analytics.stack import ClusterMisconfigured, check_cluster, free_port

if TYPE_CHECKING:  # imported at run time by pytest_plugins, which may then rewrite it
    from cluster import LocalCluster

# The fixtures redis_cluster and cluster_env (imported names would trip ruff's F811).
pytest_plugins = ["cluster"]
CLI = [sys.executable, "-m", "thronos_analytics.cli"]
BROKER_LINE = (
    "Error: THRONOS_REDIS_CLUSTER=1: Celery cannot use a Redis Cluster as its broker"
    " (celery#2852), and the retrains' chords keep their results where the broker"
    " is; set CELERY_BROKER_URL to a plain Redis"
)


def keys_on_every_node(r: RedisCluster) -> dict[str, str]:
    """One key per master: node name -> a key of a slot it serves."""
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(r.get_primaries()):
        key = f"thronos:test:{i}"
        found.setdefault(r.get_node_from_key(key).name, key)
        i += 1
    return found


def test_the_cluster_is_ok_with_three_masters_and_every_slot(redis_cluster: LocalCluster):
    for port in redis_cluster.ports:
        info = redis_cluster.node(port).cluster("info")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == 16384
        assert int(info["cluster_size"]) == 3


def test_connect_gives_a_cluster_client_that_reaches_every_slot(
    redis_cluster: LocalCluster, cluster_env: dict
):
    r = store.connect()
    assert isinstance(r, RedisCluster)
    assert store.connect() is r  # one client per process
    spread = keys_on_every_node(r)
    assert len(spread) == 3
    for node, key in spread.items():
        r.set(key, node)
    assert {node: r.get(key) for node, key in spread.items()} == {
        node: node.encode() for node in spread
    }
    # The same URL without the setting is a plain client of that one node.
    from thronos_analytics.core.settings import use_settings

    use_settings(Settings(REDIS_URL=redis_cluster.url, THRONOS_REDIS_CLUSTER=False))
    assert type(store.connect()) is Redis


def test_locks_work_on_a_cluster(redis_cluster: LocalCluster, cluster_env: dict):
    r = store.connect()
    first, second = store.lock(r, "test-cluster", 5), store.lock(r, "test-cluster", 5)
    assert store.hold(first) and store.hold(first)  # taken, then extended
    assert not store.hold(second)
    store.release(first)
    assert store.hold(second)
    store.release(second)
    store.release(second)  # already gone: no error


def test_a_node_killed_with_9_comes_back_with_its_data_and_a_new_run_id(
    redis_cluster: LocalCluster, cluster_env: dict
):
    r = store.connect()
    before = store.run_id(r)
    names = sorted(f"127.0.0.1:{port}" for port in redis_cluster.ports)
    assert [part.split("=")[0] for part in before.split(",")] == names
    assert store.run_id(r) == before
    spread = keys_on_every_node(r)
    for node, key in spread.items():
        r.set(key, f"kept by {node}")
    victim = redis_cluster.ports[1]
    redis_cluster.kill(victim)
    redis_cluster.restart(victim)
    # The client that knew the old process reconnects; the other nodes kept their run_id.
    for node, key in spread.items():
        assert r.get(key) == f"kept by {node}".encode()
    after = dict(part.split("=") for part in store.run_id(r).split(","))
    was = dict(part.split("=") for part in before.split(","))
    changed = {node for node in was if after[node] != was[node]}
    assert changed == {f"127.0.0.1:{victim}"}


# --- refusals: one line, before anything starts ----------------------------------------


def test_check_cluster_refuses_a_cluster_as_broker_or_no_redis_url():
    url = "redis://10.0.0.1:7000/0"
    check_cluster(Settings(REDIS_URL=url))  # not a cluster: nothing to say
    check_cluster(Settings(REDIS_URL=url, THRONOS_REDIS_CLUSTER=True,
                           CELERY_BROKER_URL="redis://broker:6379/0"))
    for config in (
        Settings(REDIS_URL=url, THRONOS_REDIS_CLUSTER=True),  # broker filled from REDIS_URL
        Settings(REDIS_URL=url, THRONOS_REDIS_CLUSTER=True, CELERY_BROKER_URL=url),
    ):
        with pytest.raises(ClusterMisconfigured, match="celery#2852"):
            check_cluster(config)
    with pytest.raises(ClusterMisconfigured, match="needs REDIS_URL"):
        check_cluster(Settings(REDIS_URL=None, THRONOS_REDIS_CLUSTER=True))


def test_a_cluster_has_only_database_0(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("THRONOS_REDIS_CLUSTER", "1")
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.1:7000/2")
    with pytest.raises(SystemExit, match="only database 0") as exited:
        Settings.from_env()
    assert "\n" not in str(exited.value)
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.1:7000")
    assert Settings.from_env().redis_url == "redis://10.0.0.1:7000"


def one_line(env: dict, *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--no-demo", "--ledger", "{ledger}"],
        ["run", "--drain", "--no-demo", "--ledger", "{ledger}"],
        ["backfill", "{ledger}"],
        ["worker"],
    ],
)
def test_a_cluster_without_a_broker_of_its_own_is_one_line(
    args: list[str], env: dict, tmp_path: Path
):
    ledger = tmp_path / "ai_ledger.jsonl"
    ledger.write_text("")
    # A cluster that is not even up: the setup is refused before anything connects.
    values = {**env, "THRONOS_REDIS_CLUSTER": "1", "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    values.pop("CELERY_BROKER_URL", None)
    line = one_line(values, *(a.format(ledger=ledger) for a in args))
    assert line == BROKER_LINE
    assert not (tmp_path / "data" / "stack.json").exists()


@pytest.mark.parametrize("cluster", ["0", "1"], ids=["one node", "cluster"])
def test_a_worker_started_before_its_redis_is_up_waits_for_it(
    cluster: str, env: dict, redis_server
):
    """The worker checks the state's layout when it can reach it, and otherwise starts all
    the same: Celery waits for Redis, as it did before that check."""
    values = {
        **env,
        "THRONOS_REDIS_CLUSTER": cluster,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        # A database of its own: this worker must take no other test's messages.
        "CELERY_BROKER_URL": redis_server.url.rsplit("/", 1)[0] + "/14",
    }
    worker = subprocess.Popen(
        [*CLI, "worker", "--queues", "scoring", "--concurrency", "1"],
        env=values,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=8)
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert b"cannot reach Redis" not in err, err.decode()[-2000:]


def test_a_cluster_without_redis_url_is_one_line(env: dict, tmp_path: Path):
    values = {k: v for k, v in env.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    values["THRONOS_REDIS_CLUSTER"] = "1"
    line = one_line(values, "run", "--drain", "--no-demo")
    assert line.startswith("Error: THRONOS_REDIS_CLUSTER=1 needs REDIS_URL"), line
    assert "single node" in line
    assert not (tmp_path / "data" / "redis").exists()  # no embedded Redis was started


def test_a_redis_that_is_no_cluster_or_is_down_is_one_line(env: dict):
    values = {**env, "THRONOS_REDIS_CLUSTER": "1"}  # REDIS_URL: the tests' plain Redis
    line = one_line(values, "status")
    assert "is not a usable Redis Cluster" in line and "Cluster mode is not enabled" in line
    down = {**values, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert one_line(down, "status").startswith("Error: cannot reach Redis at")
