"""What Redis has counted of the ledgers: ids seen, flags, rejected lines, counts."""

from __future__ import annotations

import hashlib
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from redis import Redis

from thronos_analytics.core import aggregates, keys
from thronos_analytics.core.contract import Entry, Rejection, Row

# Upper bounds, in seconds, of the ledger-write-to-flag lag histogram.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0)



def unseen(r: Redis, entries: Sequence[Entry]) -> list[Entry]:
    """The entries Redis has not counted: rows by ``thronos:seen``, score events by theirs."""
    rows = [e for e in entries if type(e) is Row]
    events = [e for e in entries if type(e) is not Row]
    missing: list[Entry] = []
    for group, key in ((rows, keys.SEEN), (events, keys.SCORE_EVENTS)):
        if group:
            seen = r.smismember(key, [e.id for e in group])
            missing += [e for e, present in zip(group, seen, strict=True) if not present]
    return missing


def was_seen(r: Redis, interaction_id: str) -> bool:
    return bool(r.sismember(keys.SEEN, interaction_id))


def flag_of(r: Redis, interaction_id: str) -> bytes | None:
    """The interaction's flag as JSON, or None while it has none."""
    flag = r.hget(keys.FLAGS, interaction_id)
    return None if flag is None else bytes(flag)


def unflagged(r: Redis, ids: Sequence[str]) -> list[str]:
    """The ids of ``ids`` that have no flag yet."""
    present = r.hmget(keys.FLAGS, ids) if ids else []
    return [i for i, flag in zip(ids, present, strict=True) if flag is None]


def latest_flags(r: Redis, last: int) -> tuple[list[dict[str, Any]], bytes]:
    """The ``last`` newest flags, oldest first, and the cursor to follow from."""
    # Each entry holds a batch of flags: read back until ``last`` flags are in hand.
    recent: list[dict[str, Any]] = []
    entries = r.xrevrange(keys.FLAG_STREAM, count=last)
    for _, fields in entries:
        recent[:0] = orjson.loads(fields[b"f"])
        if len(recent) >= last:
            break
    cursor = entries[0][0] if entries else b"$"
    return (recent[-last:] if last else []), cursor


def flags_after(
    r: Redis, cursor: bytes, block_ms: int = 1000
) -> tuple[list[dict[str, Any]], bytes]:
    """The flags published after ``cursor`` (waiting up to ``block_ms``), and the new cursor."""
    flags: list[dict[str, Any]] = []
    for _, batch in r.xread({keys.FLAG_STREAM: cursor}, block=block_ms, count=100) or []:
        for entry_id, fields in batch:
            flags += orjson.loads(fields[b"f"])
            cursor = entry_id
    return flags, cursor


def latest_rejections(r: Redis, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` rejected lines, newest first, each with its ledger, line and reason."""
    entries = r.xrevrange(keys.REJECTED_STREAM, count=count)
    return [orjson.loads(fields[b"r"]) for _, fields in entries]


def record_rejections(r: Redis | None, source: str, rejections: Iterable[Rejection]) -> int:
    """Count rejections once each (keyed by source, line and content) and stream them.

    The hash, which never shrinks, keeps only the reason; the raw excerpt goes to the
    capped stream and the dead-letter file.
    """
    entries = {}
    for rej in rejections:
        digest = hashlib.sha1(rej.raw.encode("utf-8", "replace")).hexdigest()[:12]
        entries[f"{source}:{rej.line}:{digest}"] = rej
    if r is None or not entries:
        return 0
    pipe = r.pipeline(transaction=False)
    for key, rej in entries.items():
        pipe.hsetnx(keys.REJECTED, key, orjson.dumps({"reason": rej.reason}))
    added = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for rej, new in zip(entries.values(), added, strict=True):
        if new:
            record = orjson.dumps(rej.to_json(source))
            pipe.xadd(keys.REJECTED_STREAM, {"r": record}, maxlen=keys.REJECTED_STREAM_MAXLEN)
    pipe.execute()
    return sum(map(bool, added))


def state_id(r: Redis) -> str:
    """This Redis state's name, made on first use: a new one means the state was lost."""
    r.set(keys.STATE_ID, uuid.uuid4().hex, nx=True)
    return (r.get(keys.STATE_ID) or b"").decode()


def seen_any(r: Redis) -> bool:
    return bool(r.scard(keys.SEEN))


def counts(r: Redis) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    pipe.scard(keys.SEEN).hlen(keys.FLAGS).hlen(keys.REJECTED).hget(keys.STATS, "anomalies")
    pipe.llen(keys.PENDING)
    pipe.scard(keys.SCORE_EVENTS).hlen(keys.SCORES).hget(keys.STATS, "score_events_joined")
    seen, scored, rejected, anomalies, pending, events, targets, joined = pipe.execute()
    return {
        "interactions_seen": seen,
        "interactions_scored": scored,
        "interactions_rejected": rejected,
        "anomalies": int(anomalies or 0),
        "pending": pending,
        "score_events": events,
        # Interactions that events named: found, or not (yet) in any ledger read.
        "score_events_joined": int(joined or 0),
        "score_events_orphaned": targets - int(joined or 0),
    }


def dropped_fields(r: Redis) -> dict[str, int]:
    """Per ledger source (e.g. ``meta.rating``): rows in which it could not be read."""
    return {k.decode(): int(v) for k, v in r.hgetall(keys.DROPPED_FIELDS).items()}




def drain_pending(r: Redis, send: Callable[[list[Any]], None], chunk: int = 500) -> int:
    """Send the rows that waited for the first model, oldest first; how many there were.

    A chunk is sent before it is trimmed: a crash in between sends it twice, which
    scoring ignores, rather than never.
    """
    sent = 0
    while rows := r.lrange(keys.PENDING, 0, chunk - 1):
        send([orjson.loads(item) for item in rows])
        r.ltrim(keys.PENDING, len(rows), -1)
        sent += len(rows)
    return sent


def anomalies(r: Redis) -> list[dict[str, Any]]:
    """The flagged rows kept for the export (a capped stream), oldest first."""
    return [orjson.loads(fields[b"a"]) for _, fields in r.xrange(keys.ANOMALIES)]


def count_worker_rows(r: Redis, worker: str, n: int) -> None:
    r.hincrby(keys.WORKER_ROWS, worker, n)


def first_in(r: Redis, name: str, seconds: float) -> bool:
    """True for the first caller of ``name`` in each ``seconds``; False for the others."""
    return bool(r.set(keys.lock(name), 1, nx=True, ex=max(1, round(seconds))))


def aggregate_values(r: Redis, scope: str) -> dict[str, dict[str, float]]:
    """One scope's aggregates as Redis holds them: measure -> {field: value}
    (core/aggregates.py), plus ``sessions`` (per wallet) or ``wallet`` (per session)."""
    pipe = r.pipeline(transaction=False)
    for m in aggregates.MEASURES:
        pipe.hgetall(keys.agg(scope, m.name))
    pipe.hgetall(keys.WALLET_SESSIONS if scope == "wallet" else keys.SESSION_WALLET)
    *measures, links = pipe.execute()
    values: dict[str, Any] = {
        m.name: {k.decode(): float(v) for k, v in held.items()}
        for m, held in zip(aggregates.MEASURES, measures, strict=True)
    }
    if scope == "wallet":
        values["sessions"] = {k.decode(): int(v) for k, v in links.items()}
    else:
        values["wallet"] = {k.decode(): v.decode() for k, v in links.items()}
    return values


def reported(r: Redis, key: str) -> dict[str, dict[str, Any]]:
    """The warnings or incidents kept in hash ``key``, by their own key."""
    return {k.decode(): orjson.loads(v) for k, v in r.hgetall(key).items()}


def replace_reported(r: Redis, key: str, items: list[dict[str, Any]]) -> None:
    """Make hash ``key`` hold exactly ``items``, by their ``key``, in one transaction."""
    pipe = r.pipeline()
    gone = set(reported(r, key)) - {i["key"] for i in items}
    if gone:
        pipe.hdel(key, *gone)
    if items:
        pipe.hset(key, mapping={i["key"]: orjson.dumps(i) for i in items})
    pipe.execute()


def record_export(r: Redis, summary: dict[str, Any], warning: str | None) -> None:
    """The last export's summary, which ``status`` shows, with its state warning if any."""
    pipe = r.pipeline()
    pipe.hset(keys.EXPORT, mapping={k: str(v) for k, v in summary.items()})
    if warning:
        pipe.hset(keys.EXPORT, "state_warning", warning)
    else:
        pipe.hdel(keys.EXPORT, "state_warning")
    pipe.execute()


def record_lag(r: Redis, lags: Sequence[float]) -> None:
    """Count each lag in its bucket (``le`` label) plus the running sum."""
    if not lags:
        return
    # One HINCRBY per bucket, not per row: a scoring batch holds up to thousands of rows.
    buckets = Counter(
        str(LAG_BUCKETS[i]) if i < len(LAG_BUCKETS) else "+Inf"
        for i in (bisect_left(LAG_BUCKETS, lag) for lag in lags)
    )
    pipe = r.pipeline(transaction=False)
    for bucket, n in buckets.items():
        pipe.hincrby(keys.LAG_HISTOGRAM, bucket, n)
    pipe.hincrbyfloat(keys.LAG_HISTOGRAM, "sum", float(sum(lags)))
    pipe.execute()
