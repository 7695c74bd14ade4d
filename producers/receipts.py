"""Receipts for sent rows: kept until Redis has every row, sent again if they went missing.

Score events are sent and confirmed alike, against ``thronos:join:events``.

kombu's Redis transport pops a message before it records it as unacknowledged. A message
is gone if Redis stops, or the worker fetching it is killed, between the two. So a
producer keeps what it sent until Redis has counted every row, and sends the missing rows
again; scoring ignores a row it has already seen, so a resend costs only work. A worker
that applied a big message whole says so in a receipt (``RECEIPT_ROWS``): its rows need
no looking up, which cost a quarter of a backfill producer's CPU.

Missing rows are sent again
- at the next check after a failed send or a restart of Redis (its ``run_id`` changed);
- once a batch has waited ``RESEND_AFTER_S`` while nothing is queued for scoring:
  nothing is ahead of it, so it was lost, or a dead worker holds it until the visibility
  timeout. Resending then also beats that timeout. RabbitMQ has no such window, and its
  queue is not in Redis to look at, so there only the first rule applies.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thronos_analytics.core import store
from thronos_analytics.core.contract import Entry
from thronos_analytics.core.messages import SCORING, is_amqp, queue_depths, takes_receipt
from thronos_analytics.core.settings import Settings, settings

log = logging.getLogger(__name__)
CHECK_EVERY_S = 1.0
RESEND_AFTER_S = 10.0
# At most this many rows wait for their receipt: past that a producer waits for Redis.
MAX_WAITING_ROWS = 100_000
PROBE_ROWS = 16  # rows of a batch looked up before all of them
MAX_LOOKUP_BATCHES = 500  # small batches looked up in one round trip
# A worker writes a message's receipt just after its rows: its rows are looked up only if
# none came this long after they were found in (the worker died in between).
RECEIPT_WAIT_S = 2.0


@dataclass
class Sent:
    rows: list[Entry]
    at: float
    message: str | None  # its id, if a receipt will name it (RECEIPT_ROWS)
    seen_at: float | None = None  # when its rows were first found in, for a receipt


class Receipts:
    def __init__(
        self,
        redis: store.Redis,
        send: Callable[[Sequence[Entry]], str | None],
        config: Settings | None = None,
    ) -> None:
        self.redis = redis
        self.send = send
        self.config = config or settings()
        self.resend_after = None if is_amqp(self.config.broker_url) else RESEND_AFTER_S
        self.sent: deque[Sent] = deque()
        self.waiting = 0  # rows sent and not yet seen by Redis
        self.redis_id: str | None = None  # Redis's run_id: it changes when Redis restarts
        self.outage = False
        self.last_check = -float("inf")

    def add(self, rows: Sequence[Entry], message: str | None = None) -> None:
        """Wait for ``rows``, sent as the message ``message`` (what the send returned)."""
        if rows:
            self.sent.append(Sent(list(rows), time.monotonic(), _receipted(rows, message)))
            self.waiting += len(rows)

    def forget(self) -> None:
        """Drop every receipt: what they wait for is being sent again from the top."""
        self.sent.clear()
        self.waiting = 0

    def lost_contact(self) -> None:
        """A send or a check failed: at the next check, everything missing goes again."""
        self.outage = True

    def check(self, every: float = CHECK_EVERY_S) -> None:
        """Forget the batches Redis has every row of; send again the ones that went missing.

        Runs at most once per ``every`` seconds, but at once after ``lost_contact``."""
        now = time.monotonic()
        if not self.outage and now < self.last_check + every:
            return
        redis_id = store.run_id(self.redis)
        if self.outage or self.redis_id not in (None, redis_id):
            resent = self._resend(list(self.sent), now)
            log.warning("Redis was away: sent again the %d rows it had not seen", resent)
        self.redis_id, self.outage = redis_id, False
        self._drop_seen()
        overdue = []
        if self.resend_after is not None:
            overdue = [s for s in self.sent if now - s.at >= self.resend_after]
        if (
            overdue
            and not queue_depths(self.config)[SCORING]
            and (resent := self._resend(overdue, now))
        ):
            log.warning("%d rows were lost on their way to scoring; sent them again", resent)
        self.last_check = now

    def wait(self, below: int = 1, timeout: float = 1800, poll: float = 0.05) -> None:
        """Block until fewer than ``below`` sent rows wait for Redis (by default: none),
        sending again what went missing. While blocked it checks every ``poll`` seconds,
        rather than waiting for the next periodic check."""
        deadline = time.monotonic() + timeout
        while True:
            self.check(every=poll if self.waiting >= below else CHECK_EVERY_S)
            if self.waiting < below:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.waiting:,} sent rows still not seen by Redis after {timeout:.0f}s:"
                    " are the scoring workers running?"
                )
            time.sleep(poll)

    def _drop_seen(self) -> None:
        """Forget the batches whose message a worker applied whole (its receipt), then the
        rows Redis has seen, oldest batch first, up to one it has not seen whole: batches
        are scored about in the order sent, so that is where to stop."""
        applied = store.received(self.redis, [s.message for s in self.sent])
        if any(applied):
            done_rows = (len(s.rows) for s, done in zip(self.sent, applied, strict=True) if done)
            self.waiting -= sum(done_rows)
            self.sent = deque(s for s, done in zip(self.sent, applied, strict=True) if not done)
        while self.sent:
            head = self.sent[0]
            # A few rows spread over the batch first: while one is missing, so is the batch,
            # and a poll costs a few lookups rather than one per row.
            step = len(head.rows) // PROBE_ROWS
            if step <= 1 and head.message is None:
                if self._drop_small_seen():
                    continue
                return
            if step > 1 and store.unseen(self.redis, head.rows[::step]):
                return
            if head.message is not None:
                head.seen_at = head.seen_at or time.monotonic()
                if time.monotonic() - head.seen_at < RECEIPT_WAIT_S:
                    return
            missing = self._missing(head)
            self.waiting -= len(head.rows) - len(missing)
            head.rows = missing
            if missing:
                return
            self.sent.popleft()

    def _drop_small_seen(self) -> bool:
        """The small batches at the head (a live producer's, a few rows each) looked up
        together, in one round trip rather than one each: their seen rows forgotten, and
        the batches left empty. Whether none of them is left."""
        group: list[Sent] = []
        for sent in itertools.islice(self.sent, MAX_LOOKUP_BATCHES):
            if len(sent.rows) // PROBE_ROWS > 1 or sent.message is not None:
                break
            group.append(sent)
        missing = {id(e) for e in store.unseen(self.redis, [e for s in group for e in s.rows])}
        for sent in group:
            left = [e for e in sent.rows if id(e) in missing]
            self.waiting -= len(sent.rows) - len(left)
            sent.rows = left
        while self.sent and not self.sent[0].rows:
            self.sent.popleft()
        return not missing

    def _resend(self, batches: list[Sent], now: float) -> int:
        """Send again the rows of ``batches`` that Redis has not seen; how many there were."""
        resent = 0
        for sent in batches:
            missing = self._missing(sent)
            self.waiting -= len(sent.rows) - len(missing)
            sent.rows, sent.at = missing, now
            if missing:
                sent.message = _receipted(missing, self.send(missing))
                resent += len(missing)
        self.sent = deque(s for s in self.sent if s.rows)
        return resent

    def _missing(self, sent: Sent) -> list[Entry]:
        return store.unseen(self.redis, sent.rows) if sent.rows else []


def _receipted(rows: Sequence[Entry], message: str | None) -> str | None:
    """The id a receipt for the message of ``rows`` will name, if a worker writes one."""
    return message if takes_receipt(len(rows)) else None
