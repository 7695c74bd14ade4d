"""Sending rows to the scoring queue in micro-batches, from a background thread."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from thronos_analytics.core import store
from thronos_analytics.core.contract import Entry, Row
from thronos_analytics.core.messages import send_batch
from thronos_analytics.producers.receipts import CHECK_EVERY_S, MAX_WAITING_ROWS, Receipts

log = logging.getLogger(__name__)


class Outbox:
    """Rows waiting to be sent, and the thread that sends them.

    A row arriving when nothing was sent for ``linger_ms`` goes out at once. Under load,
    rows arriving within ``linger_ms`` of the last send are gathered into one batch of up to
    ``batch_size``. If sending fails (broker down), the rows stay queued and the thread
    retries with backoff; past ``max_rows`` the oldest are dropped from memory, which loses
    nothing because they are in the ledger, and ``backfill`` or the tail producer resends
    them.

    With ``confirm_with`` (the Redis that scoring writes to), sent rows keep receipts
    (``producers.receipts``) until Redis has seen them, and a batch the broker lost is sent
    again, as the tail producer does.
    """

    def __init__(
        self,
        send: Callable[[Sequence[Entry]], str | None] = send_batch,
        batch_size: int = 500,
        linger_ms: float = 5.0,
        max_rows: int = 100_000,
        confirm_with: store.Redis | None = None,
    ) -> None:
        self.send = send
        self.batch_size = batch_size
        self.linger = linger_ms / 1000.0
        self.rows: deque[Row] = deque(maxlen=max_rows)
        self.receipts = Receipts(confirm_with, send) if confirm_with is not None else None
        self.dropped = 0
        self.in_flight = 0
        self.last_send = 0.0
        self.closed = False
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="thronos-outbox", daemon=True)
        self.thread.start()

    def put(self, row: Row) -> None:
        with self.ready:
            if len(self.rows) == self.rows.maxlen:
                self.dropped += 1
            self.rows.append(row)
            self.ready.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row was sent; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.ready:
            while self.rows or self.in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.ready.wait(left)
        return True

    @property
    def unconfirmed(self) -> int:
        """Rows sent that Redis has not seen yet, as of the last check."""
        return self.receipts.waiting if self.receipts is not None else 0

    def close(self, timeout: float | None = 5.0) -> bool:
        flushed = self.flush(timeout)
        with self.ready:
            self.closed = True
            self.ready.notify_all()
        return flushed

    def _next_batch(self) -> list[Row] | None:
        with self.ready:
            while not self._sendable() and not self.closed:
                # With receipts waiting, wake up to check them even when no row comes.
                self.ready.wait(CHECK_EVERY_S if self.unconfirmed else None)
                if self.unconfirmed and not self._sendable():
                    return []
            if self.closed:
                return None
            # Busy: give followers up to the linger window to join this batch.
            gather_until = self.last_send + self.linger
            while len(self.rows) < self.batch_size and time.monotonic() < gather_until:
                self.ready.wait(gather_until - time.monotonic())
            batch = [self.rows.popleft() for _ in range(min(self.batch_size, len(self.rows)))]
            self.in_flight = len(batch)
            return batch

    def _sendable(self) -> bool:
        # Past MAX_WAITING_ROWS unconfirmed, rows wait here until Redis has caught up.
        return bool(self.rows) and self.unconfirmed < MAX_WAITING_ROWS

    def _run(self) -> None:
        backoff = 0.05
        while (batch := self._next_batch()) is not None:
            try:
                if self.receipts is not None:
                    self.receipts.check()
                if batch:
                    message = self.send(batch)
                    if self.receipts is not None:
                        self.receipts.add(batch, message)
                backoff = 0.05
            except Exception as exc:
                if self.receipts is not None:
                    self.receipts.lost_contact()
                what = f"send {len(batch)} rows" if batch else "check what was sent"
                log.warning("cannot %s (%s); retrying in %.1fs", what, exc, backoff)
                with self.ready:
                    # Put the batch back in front; on a full deque extendleft pushes the
                    # newest rows out of the other end, so count them as dropped too.
                    self.dropped += max(0, len(self.rows) + len(batch) - (self.rows.maxlen or 0))
                    self.rows.extendleft(reversed(batch))
                    self.in_flight = 0
                    self.ready.notify_all()
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            with self.ready:
                self.in_flight = 0
                if batch:
                    self.last_send = time.monotonic()
                self.ready.notify_all()
