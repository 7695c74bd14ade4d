"""Rejected lines: appended once each to ``<ledger>.rejected.jsonl`` and counted once in Redis.

A line is the same rejection when its source, line number and excerpt are. The file itself
says which are already in it, rather than Redis: a Redis that lost its state would have
every line appended again, and one recorded in Redis by a process that died before writing
the file would never be. The file is read under a lock, so a tail and a backfill of one
ledger share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from thronos_analytics.core import store
from thronos_analytics.core.contract import Rejection


def _key(entry: dict[str, Any]) -> tuple[str, int, bytes]:
    raw = str(entry.get("raw", "")).encode("utf-8", "replace")
    return str(entry.get("source", "")), int(entry.get("line") or 0), hashlib.sha1(raw).digest()


class DeadLetter:
    def __init__(self, path: Path, source: str, r: store.Redis | None) -> None:
        self.path = Path(path)
        self.source = source
        self.redis = r
        self.written: set[tuple[str, int, bytes]] = set()
        self.read_to = (0, 0)  # (inode, offset) of the file read into ``written`` so far

    def record(self, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            self._catch_up(f)
            lines = []
            for rej in rejections:
                entry = rej.to_json(self.source)
                key = _key(entry)
                if key not in self.written:
                    self.written.add(key)
                    lines.append(orjson.dumps(entry) + b"\n")
            f.writelines(lines)
            f.flush()
            stat = os.fstat(f.fileno())
            self.read_to = (stat.st_ino, stat.st_size)
        # Written before counted: a crash in between leaves a line counted later, not lost.
        store.record_rejections(self.redis, self.source, rejections)

    def _catch_up(self, f: BinaryIO) -> None:
        """Read what this or another process appended since the last time."""
        stat = os.fstat(f.fileno())
        inode, offset = self.read_to
        if stat.st_ino != inode or stat.st_size < offset:  # replaced or truncated
            self.written.clear()
            offset = 0
        f.seek(offset)
        line = b""
        for line in f:
            try:
                self.written.add(_key(orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                continue  # not ours, or cut short by a crash: nothing to dedupe against
        if line and not line.endswith(b"\n"):
            f.write(b"\n")  # a line cut short must not swallow the next one
