"""The training window: the newest rows, read incrementally and cached per process."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import orjson
from redis import Redis

from thronos_analytics.core import keys
from thronos_analytics.core.contract import Row
from thronos_analytics.core.store.batch import joined
from thronos_analytics.core.store.shards import Shard, all_shards, hash_values, ident


@dataclass
class _WindowRead:
    limit: int
    last_id: bytes
    last_entry: bytes
    rows: list[Row]


def _where(r: Redis) -> str:
    """Which Redis ``r`` is: its connection's settings, or a cluster's nodes."""
    pool = getattr(r, "connection_pool", None)
    if pool is not None:
        return repr(sorted(pool.connection_kwargs.items()))
    return repr(sorted(node.name for node in r.get_nodes()))  # type: ignore[attr-defined]


# Per process, Redis and shard: the rows of the window read last, and its newest entry.
_window_reads: dict[str, _WindowRead] = {}
_window_lock = threading.Lock()


def _entry_end(entry_id: bytes) -> int:
    """Rows ever added to the window up to this entry's last: its id's first part."""
    return int(entry_id.split(b"-")[0])


def _entry_rows(fields: dict[bytes, bytes]) -> list[Row]:
    return [Row.from_state(wire) for wire in orjson.loads(fields[b"r"])]


def window_rows(r: Redis, limit: int) -> list[Row]:
    """The newest ``limit`` rows of the training window, oldest first, with their score
    events joined: an event that arrived after its row counts from the next read on."""
    shards = all_shards()
    if len(shards) == 1:
        rows = _window_rows_as_written(r, shards[0], limit)
    else:
        # A shard holds about 1/n of the newest rows, give or take a few standard
        # deviations: read that much of each, and keep the newest ``limit`` of them all.
        share = limit / len(shards)
        per_shard = math.ceil(share + 5 * math.sqrt(share)) if limit > 0 else 0
        rows = [row for shard in shards for row in _window_rows_as_written(r, shard, per_shard)]
        rows.sort(key=lambda row: row.ts)
        rows = rows[-limit:] if limit > 0 else []
    open_rows = [row for row in rows if row.score is None or not row.use_case]
    events: dict[str, bytes] = {}
    for i in range(0, len(open_rows), CHECK_CHUNK):
        chunk = open_rows[i : i + CHECK_CHUNK]
        found = hash_values(r, keys.JOIN, [ident(row.id, row.ts) for row in chunk])
        for row, hit in zip(chunk, found, strict=True):
            # A join record: session, wallet, own score and use case, the event's (4), the
            # session's bucket.
            record = orjson.loads(hit[1]) if hit is not None else None
            if record is not None and record[5] is not None:
                events[row.id] = orjson.dumps(record[4:8])
    return joined(rows, events)


CHECK_CHUNK = 10_000  # rows per pipeline of HMGETs


def _window_rows_as_written(r: Redis, shard: Shard, limit: int) -> list[Row]:
    """The newest ``limit`` rows of a shard's training window as the ledger has them.

    A refresh reads the window once per model and once more for the export. The stream only
    grows at its end, and ``apply_batch`` trims its start only past the newest
    ``THRONOS_WINDOW_ROWS`` rows, so when the newest entry read last time is still there
    unchanged, the newest rows now are those read then followed by the entries added since,
    and only those are read and parsed. Otherwise (first read, a larger ``limit``, or a
    stream that was recreated) the window is read whole.
    """
    if limit <= 0:
        return []
    where = _where(r) + shard.prefix
    window = shard.prefix + keys.WINDOW
    with _window_lock:
        last = _window_reads.get(where)
        if last is not None and limit <= last.limit:
            pipe = r.pipeline(transaction=False)
            pipe.xrange(window, min=last.last_id, max=last.last_id)
            pipe.xrange(window, min=b"(" + last.last_id)
            still_there, added = pipe.execute()
            if still_there and still_there[0][1][b"r"] == last.last_entry:
                if added:
                    new_rows = [row for _, fields in added for row in _entry_rows(fields)]
                    last.rows = (last.rows + new_rows)[-last.limit :]
                    last.last_id, last.last_entry = added[-1][0], added[-1][1][b"r"]
                return last.rows[-limit:]  # a new list: callers may change it
        newest = r.xrevrange(window, count=1)
        if not newest:
            _window_reads.pop(where, None)
            return []
        end = _entry_end(newest[0][0])
        # Entries ending after row (end - limit) hold the newest ``limit`` rows.
        entries = r.xrange(window, min=f"({max(end - limit, 0)}-0")
        rows = [row for _, fields in entries for row in _entry_rows(fields)][-limit:]
        _window_reads[where] = _WindowRead(limit, entries[-1][0], entries[-1][1][b"r"], rows)
        return list(rows)
