"""A worker whose consumer stopped while its queue holds messages exits to be started again,
and the messages wait for it: a real worker, its consumer really cancelled."""

from __future__ import annotations

from thronos_analytics.core import store
from thronos_analytics.core.contract import parse_line
from thronos_analytics.core.messages import EX_RESTART, SCORING, send_batch
from thronos_analytics.core.metrics import RedisCollector
from thronos_analytics.core.settings import settings
from thronos_analytics.workers.registry import NAMES
from thronos_analytics.workers.watchdog import Watch

from processes import wait_for

STALL_S = 2.0


def test_a_queue_that_waits_on_a_worker_holding_nothing_is_a_stall_after_stall_s() -> None:
    watch = Watch([SCORING], STALL_S)
    start = watch.last_taken
    assert watch.stalled({SCORING: 3}, held=0, now=start + 1) is None  # waiting since now
    assert watch.stalled({SCORING: 3}, held=1, now=start + 2) is None  # busy: not stalled
    assert watch.stalled({SCORING: 3}, held=0, now=start + 3) is None  # waiting again
    assert watch.stalled({SCORING: 0, "training": 9}, held=0, now=start + 4) is None  # not ours
    assert watch.stalled({SCORING: 3}, held=0, now=start + 5) is None
    reason = watch.stalled({SCORING: 3}, held=0, now=start + 5 + STALL_S)
    assert reason is not None and "3 on scoring" in reason
    watch.last_taken = start + 6  # a message was taken meanwhile
    assert watch.stalled({SCORING: 3}, held=0, now=start + 7) is None


def test_a_worker_whose_consumer_stopped_exits_to_be_restarted_and_its_messages_wait(
    env, r, workers
) -> None:
    from thronos_analytics.workers.celery_app import app

    worker = workers.start("scoring1", SCORING, extra_env={"THRONOS_CONSUMER_STALL_S": "2"})
    workers.wait_ready()
    # What kombu's reconnect bug leaves: a live worker that takes nothing from its queue.
    replies = app.control.cancel_consumer(SCORING, reply=True, timeout=5)
    assert replies, "the worker did not answer cancel_consumer"
    row = parse_line(b'{"id": "w1", "ts": 1.7e9, "provider": "gpt", "score": 0.9}')
    send_batch([row])
    assert worker.wait(30) == EX_RESTART
    assert r.llen(SCORING) == 1  # still queued: the next worker takes it
    (hostname,) = store.worker_stalls(r)  # counted, for status and the metrics
    (stalls,) = [m for m in RedisCollector(r, settings(), NAMES).collect() if "stalls" in m.name]
    assert hostname.startswith("scoring1@")
    assert [(s.name, s.labels, s.value) for s in stalls.samples] == [
        ("thronos_worker_stalls_total", {"worker": hostname}, 1)
    ]
    workers.start("scoring2", SCORING)
    wait_for(lambda: store.counts(r)["interactions_seen"] == 1, timeout=60, what="the row seen")
