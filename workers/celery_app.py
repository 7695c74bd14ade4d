"""The Celery app: configuration and task discovery, nothing else."""

import orjson
from celery import Celery
from kombu.serialization import register

import thronos_analytics.logs  # noqa: F401  (structured logs with task context, via signals)
from thronos_analytics.settings import settings
from workers.queues import ROUTES, SCORING, queues_for
from workers.schedule import beat_schedule

# JSON, encoded with orjson: a scoring batch encodes and decodes 4x faster than with the
# standard json module. Its own content type, so other Celery clients' JSON is untouched.
register(
    "orjson",
    lambda payload: orjson.dumps(payload).decode(),
    orjson.loads,
    content_type="application/x-orjson",
    content_encoding="utf-8",
)
config = settings()
# Sweep for messages of dead workers often enough to honour the visibility timeout.
restore_every = max(1, min(10, int(config.visibility_timeout / 2)))
app = Celery("thronos", include=["workers.tasks"])
app.conf.update(
    broker_url=config.broker_url,
    result_backend=config.redis_url,  # chords need one; results are kept an hour
    result_expires=3600,
    task_serializer="orjson",
    result_serializer="json",
    accept_content=["orjson", "json"],
    task_ignore_result=True,
    task_queues=queues_for(config.broker_url),
    task_default_queue=SCORING,
    task_routes=ROUTES,
    beat_schedule=beat_schedule(),
    beat_scheduler="workers.beat:LockedScheduler",
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
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
    worker_hijack_root_logger=False,
)
