"""Replaying a whole ledger file into the pipeline, in large batches, with a progress bar.

Replaying is idempotent: rows are keyed by id, so a file fed twice is scored once. Given
Redis, a replay ends only when Redis has seen every row; rows lost on the way (see
``producers.receipts``) are sent again.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from thronos_analytics.core import store
from thronos_analytics.core.contract import Entry, Rejection
from thronos_analytics.producers.receipts import MAX_WAITING_ROWS, Receipts
from thronos_analytics.producers.tail import Position, read_batches

BACKFILL_BATCH = 5000


@dataclass
class Replay:
    ids: dict[str, float] = field(default_factory=dict)  # id -> ts: where its state is
    rows: int = 0
    events: int = 0
    rejected: int = 0
    lines: int = 0


def backfill(
    path: Path,
    send: Callable[[Sequence[Entry]], str | None],
    reject: Callable[[Sequence[Rejection]], None],
    batch_size: int = BACKFILL_BATCH,
    confirm_with: store.Redis | None = None,
    timeout: float = 1800,
    pause: tuple[int, Callable[[], object]] | None = None,
) -> Replay:
    """Send every valid row of ``path`` and reject the rest. With ``confirm_with``, wait
    (up to ``timeout`` seconds) until that Redis has seen every row. With ``pause`` (n,
    wait) too, once n rows are sent and seen, call ``wait()`` before sending the rest."""
    replay = Replay()
    # What is alive now (imports, models) stays for the replay: frozen, the cyclic collector
    # stops walking it each time the parsed rows trigger a collection (a fifth of the
    # producer's CPU).
    gc.freeze()
    receipts = Receipts(confirm_with, send) if confirm_with is not None else None
    with (
        Path(path).open("rb") as f,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            disable=not sys.stderr.isatty(),
            transient=True,
        ) as progress,
    ):
        task = progress.add_task(f"replaying {path}", total=Path(path).stat().st_size)
        for batch in read_batches(f, Position(), batch_size):
            entries = batch.entries
            message = send(entries)
            if receipts is not None:
                receipts.add(entries, message)
                receipts.wait(below=MAX_WAITING_ROWS, timeout=timeout)
            reject(batch.rejections)
            replay.ids.update((row.id, row.ts) for row in batch.rows)
            replay.rows += len(batch.rows)
            replay.events += len(batch.events)
            replay.rejected += len(batch.rejections)
            replay.lines = batch.end.line
            progress.update(task, completed=batch.end.offset)
            if receipts is not None and pause is not None and replay.rows >= pause[0]:
                receipts.wait(timeout=timeout)
                pause[1]()
                pause = None
    if receipts is not None:
        receipts.wait(timeout=timeout)
    return replay
