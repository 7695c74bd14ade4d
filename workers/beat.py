"""A beat scheduler that schedules only while it holds a Redis lock.

Two beats started by mistake (two hosts, a restart overlap) would send every periodic task
twice. Each beat here tries to take ``BEAT_LOCK`` on every tick; only the holder sends
tasks, and a stopped holder's lock expires after ``LOCK_TTL`` so another beat takes over.
The in-memory scheduler keeps no shelve file: nothing is pickled to disk.
"""

from __future__ import annotations

import logging
import uuid

from celery.beat import Scheduler
from thronos_analytics.core import keys, store

LOCK_TTL = 30
TICK = 5.0
log = logging.getLogger(__name__)

# Extend the lock only if this beat still holds it.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) and 1 or 0
"""


class LockedScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        self.token = uuid.uuid4().hex
        self.leader = False
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        leader = bool(store.connect().eval(_REFRESH, 1, keys.BEAT_LOCK, self.token, LOCK_TTL))
        if leader != self.leader:
            log.info("beat %s the schedule lock", "holds" if leader else "waits for")
            self.leader = leader
        if not leader:
            return TICK
        return min(super().tick(*args, **kwargs), TICK)
