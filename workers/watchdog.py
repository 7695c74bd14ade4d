"""A worker that stops taking messages while its queue holds some exits to be restarted.

After a broker reconnect, kombu's Redis transport can leave a worker connected and idle,
never taking another message (celery#8091, #10205): the queue grows, nothing is scored and
nothing says so. So each worker watches its own queues. If one holds messages for
``THRONOS_CONSUMER_STALL_S`` while the worker takes none and holds none, it logs why,
counts it (``worker_stalls`` in ``status`` and the metrics) and exits with
``EX_RESTART``; ``thronos-analytics run``, compose and systemd start it again. The
messages wait in the queue meanwhile, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from celery.signals import task_received, worker_ready
from celery.worker import state

from thronos_analytics.core import store
from thronos_analytics.core.messages import EX_RESTART, queue_depths
from thronos_analytics.core.settings import settings

log = logging.getLogger(__name__)
# After asking Celery for a warm shutdown, how long to wait before exiting without it.
GRACE_S = 30.0


class Watch:
    """Whether a worker's queues have waited on it too long."""

    def __init__(self, queues: Iterable[str], stall_s: float) -> None:
        self.queues = sorted(queues)
        self.stall_s = stall_s
        self.last_taken = time.monotonic()
        self.waiting_since: float | None = None

    def taken(self) -> None:
        self.last_taken = time.monotonic()

    def stalled(self, depths: Mapping[str, int], held: int, now: float) -> str | None:
        """Why the worker must restart, or None. ``held``: messages it holds now."""
        waiting = {q: depths[q] for q in self.queues if depths.get(q)}
        if not waiting or held:
            self.waiting_since = None
            return None
        if self.waiting_since is None:
            self.waiting_since = now
        idle = now - max(self.waiting_since, self.last_taken)
        if idle < self.stall_s:
            return None
        queued = ", ".join(f"{n:,} on {q}" for q, n in waiting.items())
        return (
            f"messages waited {idle:.0f}s ({queued}) and this worker took none: its consumer"
            " is stuck (a broker reconnect can leave it so); exiting to be started again"
        )


def watch(queues: Iterable[str], stall_s: float, every: float, worker: str) -> Watch:
    """Start the watching thread for ``worker`` (its hostname); the returned Watch is told
    of each message taken."""
    config = settings()
    current = Watch(queues, stall_s)

    def run() -> None:
        while True:
            time.sleep(every)
            try:
                depths = queue_depths(config)
            except Exception:  # the broker is away: the consumer's own reconnect is on it
                current.waiting_since = None
                continue
            reason = current.stalled(depths, len(state.reserved_requests), time.monotonic())
            if reason:
                log.error("%s", reason)
                with contextlib.suppress(Exception):  # the state's Redis may be away too
                    store.count_worker_stall(store.connect(), worker)
                state.should_stop = EX_RESTART  # what Celery's SIGTERM handler sets
                time.sleep(GRACE_S)
                os._exit(EX_RESTART)  # the warm shutdown itself hung

    threading.Thread(target=run, name="thronos-watchdog", daemon=True).start()
    return current


_watch: Watch | None = None


@worker_ready.connect
def _start(sender: Any, **_: Any) -> None:
    global _watch
    stall_s = settings().consumer_stall_s
    if _watch is None and stall_s > 0:
        queues = sender.app.amqp.queues.consume_from
        _watch = watch(queues, stall_s, min(stall_s / 4, 5.0), sender.hostname)


@task_received.connect
def _taken(**_: Any) -> None:
    if _watch is not None:
        _watch.taken()
