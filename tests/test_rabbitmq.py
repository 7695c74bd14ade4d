"""The RabbitMQ path: messages through AMQP, state in Redis, the same end result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import store
from thronos_analytics.core.messages import QUEUES, queues_for

from recount import ledger_rows

AMQP_URL = os.environ.get("THRONOS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp_url() -> str:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
            for queue in queues_for(AMQP_URL):
                _declare_afresh(connection, queue)
    except OSError as error:
        pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL}: {error}")
    return AMQP_URL


def _declare_afresh(connection, queue) -> None:
    """Declare ``queue`` as configured (quorum on AMQP) and empty it.

    Messages left by an earlier, interrupted run would be scored into this test, and a queue
    left with other arguments (classic rather than quorum) cannot be declared over.
    """
    from amqp.exceptions import PreconditionFailed

    channel = connection.channel()
    try:
        queue(channel).declare()
    except PreconditionFailed:
        channel = connection.channel()
        channel.queue_delete(queue.name)
        queue(channel).declare()
    channel.queue_purge(queue.name)
    channel.close()


def test_drain_through_rabbitmq_with_state_in_redis(env, r, amqp_url):
    ledger = Path(env["THRONOS_LEDGER"])
    summary = write(SimConfig(rows=3000, seed=21, bad_rate=0.01), ledger)
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "run", "--drain", "--no-demo"],
        env={**env, "CELERY_BROKER_URL": amqp_url},
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    drained = orjson.loads(done.stdout)
    assert drained["interactions_scored"] == drained["distinct_ids"] == summary["valid"]
    assert drained["rejected_lines"] == summary["bad"]
    # The state is in the test Redis, not in the broker.
    counted = store.counts(r)
    assert counted["interactions_seen"] == counted["interactions_scored"] == summary["valid"]
    rows = ledger_rows(ledger)
    assert set(store.flags_of(r, [(row.id, row.ts) for row in rows])) == {row.id for row in rows}
    assert counted["pending"] == 0
    for queue in QUEUES:
        assert r.llen(queue.name) == 0  # Redis carried no messages
    document = orjson.loads((Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.json").read_bytes())
    assert document["stats"]["interactions_scored"] == summary["valid"]
    assert (Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.html").exists()

    status = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "status", "--json"],
        env={**env, "CELERY_BROKER_URL": amqp_url},
        capture_output=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr.decode()[-3000:]
    report = orjson.loads(status.stdout)
    assert report["queues"] == {queue.name: 0 for queue in QUEUES}
    assert report["interactions_scored"] == summary["valid"]
