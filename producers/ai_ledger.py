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
    """Append-only JSONL file. A failed append is cut back, so no half line stays behind."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        line = orjson.dumps(row) + b"\n"
        with self.lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise LedgerWriteError(f"cannot open ledger {self.path}: {exc.strerror}") from exc
            try:
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(28, "short write (disk full?)")
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    os.ftruncate(fd, size)
                    raise LedgerWriteError(
                        f"cannot append to ledger {self.path}: {exc.strerror}"
                    ) from exc
            finally:
                os.close(fd)


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
        """Send what is queued (False if ``timeout`` ran out first) and stop the outbox."""
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
