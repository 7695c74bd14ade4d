"""A beat scheduler that schedules only while it holds a Redis lock.

Two beats started by mistake (two hosts, a restart overlap) would send every periodic task
twice. Each beat here tries to take the beat lock on every tick; only the holder sends
tasks, and a stopped holder's lock expires after ``LOCK_TTL`` so another beat takes over.
The in-memory scheduler keeps no shelve file: nothing is pickled to disk.
"""

from __future__ import annotations

import logging

from celery.beat import Scheduler

from thronos_analytics.core import store

LOCK_TTL = 30
TICK = 5.0
log = logging.getLogger(__name__)


class LockedScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        self.lock = store.lock(store.connect(), "beat", LOCK_TTL)
        self.leader = False
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        leader = store.hold(self.lock)
        if leader != self.leader:
            log.info("beat %s the schedule lock", "holds" if leader else "waits for")
            self.leader = leader
        if not leader:
            return TICK
        return min(super().tick(*args, **kwargs), TICK)
