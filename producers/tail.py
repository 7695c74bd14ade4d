"""Following a ledger that another program writes, and replaying a whole one.

The tail producer keeps a checkpoint (inode, byte offset, line number) beside the ledger,
written atomically after each batch is handed to Redis. After a restart it resumes there,
so it skips nothing; a batch sent but not yet checkpointed is sent again, which scoring
ignores because every row has an id. Only complete lines are read: a partial last line
waits for its newline. A file that shrank was truncated and is read again from the top;
a path that points at a new inode was rotated, and the old file is finished first.

Given Redis, it also keeps receipts for what it sent (``producers.receipts``) and sends
again the rows a Redis restart or a killed worker lost on the way. The checkpoint names the
Redis state it was sent to (``store.state_id``): if Redis comes back without that state
(emptied, replaced, its data unreadable), the ledger is read again from the top, which
ingest makes safe, rather than left unread.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from thronos_analytics.core import store
from thronos_analytics.core.atomic_file import write_atomically
from thronos_analytics.core.contract import Entry, Rejection, Row, ScoreEvent, parse_line
from thronos_analytics.core.settings import settings
from thronos_analytics.producers.receipts import MAX_WAITING_ROWS, Receipts

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 22
# Shortest wait between polls of an idle ledger: a poll costs one read() of nothing.
MIN_IDLE_POLL = 0.001


@dataclass
class Position:
    inode: int = 0
    offset: int = 0
    line: int = 0
    state: str = ""  # the Redis state the lines up to offset were sent to; "" if unknown

    @classmethod
    def load(cls, path: Path) -> Position:
        try:
            return cls(**orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            return cls()

    def save(self, path: Path) -> None:
        write_atomically(path, orjson.dumps(asdict(self)))


@dataclass
class Batch:
    rows: list[Row]
    events: list[ScoreEvent]
    rejections: list[Rejection]
    end: Position

    @property
    def entries(self) -> list[Entry]:
        """What is sent: the rows and the score events."""
        return [*self.rows, *self.events]


def read_batches(
    f: BinaryIO, start: Position, batch_size: int, rating_scale: str | None = None
) -> Iterator[Batch]:
    """Parse complete lines from ``start`` on, in batches of up to ``batch_size`` lines.
    ``rating_scale`` defaults to ``THRONOS_RATING_SCALE``."""
    scale = rating_scale or settings().rating_scale
    f.seek(start.offset)
    offset, line = start.offset, start.line
    sent_to = offset
    rows: list[Row] = []
    events: list[ScoreEvent] = []
    rejections: list[Rejection] = []
    tail = b""
    while chunk := f.read(READ_CHUNK):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()  # no newline yet: maybe still being written
        for raw in lines:
            line += 1
            offset += len(raw) + 1
            if not raw.strip():
                continue
            parsed = parse_line(raw, line, scale)
            if type(parsed) is Row:
                rows.append(parsed)
            elif type(parsed) is ScoreEvent:
                events.append(parsed)
            else:
                rejections.append(parsed)  # type: ignore[arg-type]
            if len(rows) + len(events) + len(rejections) >= batch_size:
                yield Batch(rows, events, rejections, Position(start.inode, offset, line))
                rows, events, rejections = [], [], []
                sent_to = offset
    # Blank lines only still move the checkpoint; a batch that ended at the end does not.
    if rows or events or rejections or offset != sent_to:
        yield Batch(rows, events, rejections, Position(start.inode, offset, line))


class TailProducer:
    def __init__(
        self,
        ledger: Path,
        send: Callable[[Sequence[Entry]], str | None],
        reject: Callable[[Sequence[Rejection]], None],
        batch_size: int = 500,
        checkpoint: Path | None = None,
        linger_ms: float | None = None,
        confirm_with: store.Redis | None = None,
    ) -> None:
        """``linger_ms`` (default ``THRONOS_LINGER_MS``) is how long an idle ledger waits for
        its next poll: a line written then is sent within that long, in a batch with every
        line written meanwhile (up to ``batch_size``). ``confirm_with`` is the Redis whose
        ``thronos:seen`` confirms that sent rows arrived."""
        if linger_ms is None:
            linger_ms = settings().linger_ms
        self.idle_poll = max(linger_ms / 1000.0, MIN_IDLE_POLL)
        self.ledger = Path(ledger)
        self.send = send
        self.reject = reject
        self.batch_size = batch_size
        self.checkpoint = checkpoint or self.ledger.with_name(self.ledger.name + ".checkpoint")
        self.position = Position.load(self.checkpoint)
        self.file: BinaryIO | None = None
        self.stop = threading.Event()
        self.sent = 0
        self.events = 0
        self.receipts = Receipts(confirm_with, send) if confirm_with is not None else None
        self.redis = confirm_with
        self.state = self.position.state
        self.last_state_check = -float("inf")

    def run(self) -> None:
        gc.freeze()  # as backfill does: the collector stops walking what lives for good
        backoff = 0.05
        try:
            while not self.stop.is_set():
                try:
                    moved = self.step()
                    backoff = 0.05
                except Exception as exc:  # Redis or broker down, file unreadable: wait
                    if self.receipts is not None:
                        self.receipts.lost_contact()
                    log.warning("tail of %s paused (%s); retry in %.1fs", self.ledger, exc, backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not moved:
                    self.stop.wait(self.idle_poll)
        finally:
            if self.file:
                self.file.close()

    def step(self) -> bool:
        """Read and send whatever is new. True if anything was read."""
        if self.file is None and not self._open():
            return False
        assert self.file is not None
        self._check_state()
        if self.receipts is not None:
            self.receipts.check()
            if self.receipts.waiting >= MAX_WAITING_ROWS:
                return False
        if os.fstat(self.file.fileno()).st_size < self.position.offset:
            log.warning("%s was truncated; reading it again from the top", self.ledger)
            self._move(Position(self.position.inode))
        moved = False
        for batch in read_batches(self.file, self.position, self.batch_size):
            entries = batch.entries
            message = self.send(entries)
            if self.receipts is not None:
                self.receipts.add(entries, message)
            self.reject(batch.rejections)
            self._move(batch.end)
            self.sent += len(batch.rows)
            self.events += len(batch.events)
            moved = True
        if not moved and self._rotated():
            # Everything complete in the old file was read above; go on with the new one.
            log.info("%s was rotated; following the new file", self.ledger)
            self.file.close()
            self.file = None
            self._move(Position())
            return True
        return moved

    def _open(self) -> bool:
        try:
            self.file = self.ledger.open("rb")
        except FileNotFoundError:
            return False
        inode = os.fstat(self.file.fileno()).st_ino
        if self.position.inode != inode:
            if self.position.inode:
                log.warning(
                    "%s is a new file since the checkpoint; reading from the top", self.ledger
                )
            self._move(Position(inode))
        return True

    def _rotated(self) -> bool:
        assert self.file is not None
        try:
            return os.stat(self.ledger).st_ino != os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False  # moved away, new one not created yet

    def _check_state(self, every: float = 1.0) -> None:
        """Read again from the top if Redis lacks the state the checkpoint was sent to."""
        now = time.monotonic()
        if self.redis is None or now < self.last_state_check + every:
            return
        state = store.state_id(self.redis)
        known = self.position.state
        # A checkpoint from before states were recorded: an empty SEEN tells the same.
        lost = known != state if known else self.position.offset and not store.seen_any(self.redis)
        if lost:
            log.warning(
                "Redis holds none of what the checkpoint of %s says was sent (its data was"
                " lost or replaced): reading the ledger again from the top",
                self.ledger,
            )
            if self.receipts is not None:
                self.receipts.forget()
            self._move(Position(self.position.inode))
        self.state = state
        if self.position.state != state:
            self._move(self.position)
        self.last_state_check = now

    def _move(self, position: Position) -> None:
        position.state = self.state
        self.position = position
        position.save(self.checkpoint)
