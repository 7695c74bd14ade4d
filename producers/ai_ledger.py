"""The ledger writer: ``record_interaction`` appends a row to the ledger and emits it.

The row is on disk before the call returns. Emitting is done by a background thread, so a
slow or absent Redis never delays or fails the AI request that records the row; rows it
could not send, and rows the broker lost on the way, are sent again when Redis is back.
All are in the ledger for ``backfill`` if the process dies first.

    >>> from thronos_analytics.producers.ai_ledger import record_interaction
    >>> row = record_interaction("claude", "claude-sonnet", prompt="...", output="...",
    ...                          session_id="s1", wallet="w1", credits_used=1.5, score=0.9,
    ...                          meta={"use_case": "coding", "latency_ms": 1800})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, RowError, normalise
from thronos_analytics.core.settings import settings
from thronos_analytics.producers.emit import Outbox


class LedgerWriteError(OSError):
    """The ledger could not be appended to; the message names the file and the cause."""


class Ledger:
    """Append-only JSONL file, shared by the threads of a process.

    A call returns once its line is on disk. Lines written while an fsync runs wait for the
    next one, which covers them all (group commit): threads that record at once share the
    fsyncs rather than queueing for one each. A failed write, or a failed fsync, cuts the
    file back to the first line not yet on disk, and each call whose line that was raises
    LedgerWriteError: the ledger never holds a half line, nor the line of a call that
    failed. The file stays open, and is opened again once another file takes its path
    (rotation).
    """

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.changed = threading.Condition()  # guards _file and its offsets
        self._file: _OpenFile | None = None
        self.fsyncs = 0  # fsync rounds so far, for the benchmarks

    def append(self, row: dict[str, Any]) -> None:
        line = orjson.dumps(row) + b"\n"
        with self.changed:
            file = self._current()
            start = os.fstat(file.fd).st_size
            try:
                written = os.write(file.fd, line)
                if written != len(line):
                    raise OSError(28, "short write (disk full?)")
            except OSError as exc:
                os.ftruncate(file.fd, start)
                raise self._error(exc) from exc
            end = start + len(line)
            if not self.fsync:
                return
            file.unsynced = start if file.unsynced is None else file.unsynced
            failures = file.failures
            while file.synced < end and file.failures == failures:
                if not file.syncing:
                    self._sync(file)
                else:
                    self.changed.wait()
            if file.failures != failures:
                raise self._error(file.failure)

    def _sync(self, file: _OpenFile) -> None:
        """One fsync round for every line written so far; called, and returns, locked."""
        file.syncing = True
        upto, first = os.fstat(file.fd).st_size, file.unsynced
        self.changed.release()
        try:
            os.fsync(file.fd)
            failure = None
        except OSError as exc:
            failure = exc
        finally:
            self.changed.acquire()
        self.fsyncs += 1
        file.syncing = False
        if failure is None:
            file.synced = upto
            file.unsynced = None if os.fstat(file.fd).st_size <= upto else upto
        else:
            # Nothing after ``first`` is known to be on disk: cut it, and fail its calls.
            first = file.synced if first is None else first
            os.ftruncate(file.fd, first)
            file.synced, file.unsynced = first, None
            file.failures, file.failure = file.failures + 1, failure
        self.changed.notify_all()

    def close(self) -> None:
        """Close the file once every line written is on disk; an append opens it again."""
        with self.changed:
            while (file := self._file) is not None:
                self._retire(file)

    def _current(self) -> _OpenFile:
        """The open ledger; once the path names another file, that one, after every line
        of the old one is on disk. Called locked; the lock is let go while it waits."""
        while (file := self._file) is not None:
            try:
                inode: int | None = os.stat(self.path).st_ino
            except OSError:
                inode = None
            if file.inode == inode:
                return file
            self._retire(file)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerWriteError(f"cannot open ledger {self.path}: {exc.strerror}") from exc
        self._file = _OpenFile(fd, os.fstat(fd).st_ino, synced=os.fstat(fd).st_size)
        return self._file

    def _retire(self, file: _OpenFile) -> None:
        """Close ``file`` once no round runs on it and every line of it is on disk (or
        cut), unless another thread did meanwhile."""
        while file.syncing or file.unsynced is not None:
            if file.syncing:
                self.changed.wait()
            else:
                self._sync(file)
        if self._file is file:
            os.close(file.fd)
            self._file = None

    def _error(self, exc: OSError | None) -> LedgerWriteError:
        reason = exc.strerror if exc is not None else "unknown error"
        return LedgerWriteError(f"cannot append to ledger {self.path}: {reason}")


@dataclass
class _OpenFile:
    fd: int
    inode: int
    synced: int  # the file is on disk up to this offset
    unsynced: int | None = None  # where the lines not on disk yet begin
    syncing: bool = False
    failures: int = 0  # failed fsync rounds; a call whose round failed raises
    failure: OSError | None = None


class Recorder:
    """A ledger plus the outbox that emits its rows; one per process is enough."""

    def __init__(self, ledger: Path, emit: bool = True, **outbox: Any) -> None:
        self.ledger = Ledger(ledger)
        if emit and settings().redis_url is not None:
            # Receipts: a batch the broker loses is sent again (producers.receipts).
            outbox.setdefault("confirm_with", store.connect())
        self.outbox = Outbox(**outbox) if emit else None

    def record(self, **fields: Any) -> Row:
        raw = _build_row(**fields)
        try:
            row = normalise(raw, strict=True)
        except RowError as exc:
            raise ValueError(f"interaction not recorded: {exc}") from None
        self.ledger.append(raw)
        if self.outbox is not None:
            self.outbox.put(row)
        return row

    def close(self, timeout: float | None = 5.0) -> bool:
        """Send what is queued (False if ``timeout`` ran out first), stop the outbox and
        close the ledger."""
        self.ledger.close()
        return self.outbox.close(timeout) if self.outbox is not None else True


_default: Recorder | None = None
_default_lock = threading.Lock()


def default_recorder() -> Recorder:
    global _default
    with _default_lock:
        if _default is None:
            config = settings()
            _default = Recorder(
                config.ledger,
                emit=config.redis_url is not None,
                batch_size=config.batch_size,
                linger_ms=config.linger_ms,
            )
        return _default


def record_interaction(
    provider: str,
    model: str | None = None,
    *,
    prompt: str | None = None,
    output: str | None = None,
    prompt_hash: str | None = None,
    output_hash: str | None = None,
    session_id: str | None = None,
    wallet: str | None = None,
    credits_used: float = 0.0,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
    ts: float | None = None,
    id: str | None = None,
) -> Row:
    """Record one AI call. Raw ``prompt``/``output`` are hashed with sha256, never stored.

    Raises ValueError for an invalid row and LedgerWriteError if the ledger cannot be
    written; never for Redis being unavailable.
    """
    return default_recorder().record(
        provider=provider,
        model=model,
        prompt=prompt,
        output=output,
        prompt_hash=prompt_hash,
        output_hash=output_hash,
        session_id=session_id,
        wallet=wallet,
        credits_used=credits_used,
        score=score,
        meta=meta,
        ts=ts,
        id=id,
    )


def _build_row(
    *,
    prompt: str | None = None,
    output: str | None = None,
    meta: dict[str, Any] | None = None,
    ts: float | None = None,
    id: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    meta = dict(meta or {})
    if output is not None:
        meta.setdefault("output_chars", len(output))
    row = {
        "id": id or uuid.uuid4().hex,
        "ts": time.time() if ts is None else ts,
        **{k: v for k, v in fields.items() if v is not None},
        "meta": meta,
    }
    if prompt is not None:
        row["prompt_hash"] = _sha256(prompt)
    if output is not None:
        row["output_hash"] = _sha256(output)
    return row


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
