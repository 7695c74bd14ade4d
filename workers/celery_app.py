"""The Celery app: configuration and task discovery, nothing else."""

from celery import Celery

import thronos_analytics.core.logs  # noqa: F401  (structured logs with task context, via signals)
import thronos_analytics.workers.watchdog  # noqa: F401  (a stalled consumer exits, via signals)
from thronos_analytics.core.messages import celery_config
from thronos_analytics.core.settings import settings
from thronos_analytics.workers.schedule import beat_schedule

app = Celery("thronos", include=["thronos_analytics.workers.tasks"])
app.conf.update(
    celery_config(settings()),
    beat_schedule=beat_schedule(),
    beat_scheduler="thronos_analytics.workers.beat:LockedScheduler",
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
)
