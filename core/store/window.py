"""The training window: the newest rows, read incrementally and cached per process."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import orjson
from redis import Redis

from thronos_analytics.core import keys
from thronos_analytics.core.contract import Row
from thronos_analytics.core.store.batch import Joins, joined, read_joins


@dataclass
class _WindowRead:
    limit: int
    last_id: bytes
    last_entry: bytes
    rows: list[Row]


# Per process and Redis database: the rows of the window read last, and its newest entry.
_window_reads: dict[str, _WindowRead] = {}
_window_lock = threading.Lock()


def _entry_end(entry_id: bytes) -> int:
    """Rows ever added to the window up to this entry's last: its id's first part."""
    return int(entry_id.split(b"-")[0])


def _entry_rows(fields: dict[bytes, bytes]) -> list[Row]:
    return [Row.from_wire(wire) for wire in orjson.loads(fields[b"r"])]


def window_rows(r: Redis, limit: int) -> list[Row]:
    """The newest ``limit`` rows of the training window, oldest first, with their score
    events joined: an event that arrived after its row counts from the next read on."""
    rows = _window_rows_as_written(r, limit)
    if not r.hlen(keys.SCORES):
        return rows
    open_rows = [row for row in rows if row.score is None or not row.use_case]
    joins: Joins = {}
    for i in range(0, len(open_rows), CHECK_CHUNK):
        joins.update(read_joins(r, open_rows[i : i + CHECK_CHUNK]))
    return joined(rows, joins)


CHECK_CHUNK = 10_000  # ids per HMGET


def _window_rows_as_written(r: Redis, limit: int) -> list[Row]:
    """The newest ``limit`` rows of the training window as the ledger has them.

    A refresh reads the window once per model and once more for the export. The stream only
    grows at its end, and ``apply_batch`` trims its start only past the newest
    ``THRONOS_WINDOW_ROWS`` rows, so when the newest entry read last time is still there
    unchanged, the newest rows now are those read then followed by the entries added since,
    and only those are read and parsed. Otherwise (first read, a larger ``limit``, or a
    stream that was recreated) the window is read whole.
    """
    if limit <= 0:
        return []
    where = repr(sorted(r.connection_pool.connection_kwargs.items()))
    with _window_lock:
        last = _window_reads.get(where)
        if last is not None and limit <= last.limit:
            pipe = r.pipeline(transaction=False)
            pipe.xrange(keys.WINDOW, min=last.last_id, max=last.last_id)
            pipe.xrange(keys.WINDOW, min=b"(" + last.last_id)
            still_there, added = pipe.execute()
            if still_there and still_there[0][1][b"r"] == last.last_entry:
                if added:
                    new_rows = [row for _, fields in added for row in _entry_rows(fields)]
                    last.rows = (last.rows + new_rows)[-last.limit :]
                    last.last_id, last.last_entry = added[-1][0], added[-1][1][b"r"]
                return last.rows[-limit:]  # a new list: callers may change it
        newest = r.xrevrange(keys.WINDOW, count=1)
        if not newest:
            _window_reads.pop(where, None)
            return []
        end = _entry_end(newest[0][0])
        # Entries ending after row (end - limit) hold the newest ``limit`` rows.
        entries = r.xrange(keys.WINDOW, min=f"({max(end - limit, 0)}-0")
        rows = [row for _, fields in entries for row in _entry_rows(fields)][-limit:]
        _window_reads[where] = _WindowRead(limit, entries[-1][0], entries[-1][1][b"r"], rows)
        return list(rows)
