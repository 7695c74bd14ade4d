"""The message contract between producers and workers: queue names, task names and routes,
the serializer, and the function that sends a batch.

Producers and workers both import this module; neither imports the other. Add routes here,
not in ``@task(queue=...)``. Task names are part of the message format (see
tests/test_task_names.py): rename one and messages already queued under the old name are lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson
from celery import Celery
from kombu import Queue
from kombu.serialization import register

from thronos_analytics.core.contract import Entry, Row
from thronos_analytics.core.settings import Settings, settings

SCORING = "scoring"  # flags in near real time: short tasks only
TRAINING = "training"  # retrains and the export: long tasks, never ahead of a flag

QUEUES = (Queue(SCORING), Queue(TRAINING))
# A worker exits with this code (EX_TEMPFAIL) to be started again (workers/watchdog.py).
EX_RESTART = 75

SCORE_BATCH = "thronos.score_batch"

ROUTES = {
    SCORE_BATCH: {"queue": SCORING},
    "thronos.retrain_*": {"queue": TRAINING},
    "thronos.detect_quality_drops": {"queue": TRAINING},
    "thronos.detect_incidents": {"queue": TRAINING},
    "thronos.refresh_analytics": {"queue": TRAINING},
    "thronos.write_analytics": {"queue": TRAINING},
}

# JSON, encoded with orjson: a scoring batch encodes and decodes 4x faster than with the
# standard json module. Its own content type, so other Celery clients' JSON is untouched.
register(
    "orjson",
    lambda payload: orjson.dumps(payload).decode(),
    orjson.loads,
    content_type="application/x-orjson",
    content_encoding="utf-8",
)


def is_amqp(broker_url: str | None) -> bool:
    return (broker_url or "").startswith(("amqp", "pyamqp", "amqps"))


def queues_for(broker_url: str | None) -> tuple[Queue, ...]:
    """On RabbitMQ, quorum queues: replicated, and safe across a broker node's loss."""
    if is_amqp(broker_url):
        return tuple(Queue(q.name, queue_arguments={"x-queue-type": "quorum"}) for q in QUEUES)
    return QUEUES


def celery_config(config: Settings) -> dict[str, Any]:
    """What the sending side and the workers agree on: broker, serializer, queues, routes."""
    # Sweep for messages of dead workers often enough to honour the visibility timeout.
    restore_every = max(1, min(10, int(config.visibility_timeout / 2)))
    return {
        "broker_url": config.broker_url,
        # Chords need one; results are kept an hour. Celery's Redis backend cannot use a
        # cluster, so with one the results go to the broker (a plain Redis: stack.py).
        "result_backend": config.broker_url if config.redis_cluster else config.redis_url,
        "result_expires": 3600,
        "task_serializer": "orjson",
        "result_serializer": "json",
        "accept_content": ["orjson", "json"],
        "task_ignore_result": True,
        "task_queues": queues_for(config.broker_url),
        "task_default_queue": SCORING,
        "task_routes": ROUTES,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": config.visibility_timeout,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            # The sweep's lock outlives a worker killed while holding it; kombu's default of
            # 300 s would hold back every redelivery that long.
            "unacked_mutex_expire": 3 * restore_every,
            # A publish to a broker that vanished without closing the socket must not hang.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        },
    }


@cache
def _sender(config: Settings) -> Celery:
    # A Celery app without tasks: it only publishes. One per configuration, for the process.
    app = Celery("thronos-sender", set_as_current=False)
    app.conf.update(celery_config(config))
    return app


# A worker writes a receipt for a message of at least this many rows and events (a
# backfill's), which its producer looks up rather than each row: a live message's few rows
# cost less to look up than a receipt per message would keep.
RECEIPT_ROWS = 1000


def takes_receipt(entries: int) -> bool:
    """Whether a worker writes a receipt for a message of this many rows and events."""
    return entries >= RECEIPT_ROWS


def send_batch(entries: Sequence[Entry]) -> str | None:
    """Publish one scoring task for ``entries`` (rows and score events): its id, which a
    receipt for it names (``RECEIPT_ROWS``). Raises if the broker cannot take it."""
    if not entries:
        return None
    rows = [e.to_wire() for e in entries if type(e) is Row]
    events = [e.to_wire() for e in entries if type(e) is not Row]
    # A short argsrepr for Flower and events: Celery's own walks the whole batch.
    argsrepr = f"[<{len(rows)} rows, {len(events)} score events, first {entries[0].id}>]"
    sent = _sender(settings()).send_task(
        SCORE_BATCH,
        args=[rows],
        # Only when there are events: a worker of the last release reads the rest.
        kwargs={"events": events} if events else None,
        argsrepr=argsrepr,
        retry=False,
        # Nothing reads a scoring task's result. Without this Celery's result consumer
        # subscribes to each one, and while Redis is away it retries for 20 s per send.
        ignore_result=True,
    )
    return sent.id


def queue_depths(config: Settings) -> dict[str, int]:
    """Messages waiting per queue, asked of the broker (Redis or RabbitMQ) through kombu."""
    depths = {}
    with _sender(config).connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        for q in QUEUES:
            try:
                depths[q.name] = channel.queue_declare(q.name, passive=True).message_count
            except Exception:  # not declared yet (no worker has started): none waiting
                channel = connection.channel()
                depths[q.name] = 0
    return depths
