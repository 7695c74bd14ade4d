"""What Redis has counted of the ledgers: ids seen, flags, rejected lines, counts."""

from __future__ import annotations

import hashlib
import time
import uuid
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from thronos_analytics.core import aggregates, keys
from thronos_analytics.core.contract import Entry, Rejection, Row, ScoreEvent
from thronos_analytics.core.settings import settings
from thronos_analytics.core.store.records import unpack_aggregate, unpack_flag
from thronos_analytics.core.store.shards import (
    Ident,
    all_shards,
    days_held,
    entry_order,
    hash_values,
    ident,
    idents_at,
    idents_of,
    per_shard,
    run_script,
    summed,
)

# Upper bounds, in seconds, of the ledger-write-to-flag lag histogram.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0)


def _seen(r: Redis, idents: Sequence[Ident]) -> list[bool]:
    """Whether each ident's row is counted: in its day's ``ix`` hash, or late."""
    return _or_late(r, idents, [hit is not None for hit in hash_values(r, keys.IX, idents)])


def _or_late(r: Redis, idents: Sequence[Ident], seen: list[bool], mark: str = "") -> list[bool]:
    """``seen``, with those not seen looked up in their shard's ``late`` set."""
    missing = [n for n, held in enumerate(seen) if not held]
    if not missing:
        return seen
    shards = all_shards()
    pipe = r.pipeline(transaction=False)
    for n in missing:
        i = idents[n]
        pipe.sismember(shards[i.shard].key(keys.LATE, bucket=i.bucket), mark + i.field)
    for n, late in zip(missing, pipe.execute(), strict=True):
        seen[n] = bool(late)
    return seen


def unseen(r: Redis, entries: Sequence[Entry]) -> list[Entry]:
    """The entries Redis has not counted: rows by their ``ix`` field (or as late), score
    events by their mark."""
    rows = [e for e in entries if type(e) is Row]
    events = [e for e in entries if isinstance(e, ScoreEvent)]
    missing: list[Entry] = [
        row for row, seen in zip(rows, _seen(r, idents_of(rows)), strict=True) if not seen
    ]
    if events:
        shards = all_shards()
        marks = [(ident(e.interaction_id, None).shard, ident(e.id, e.ts)) for e in events]
        pipe = r.pipeline(transaction=False)
        for shard, mark in marks:
            day = keys.UNDATED if mark.day < 0 else mark.day
            pipe.sismember(shards[shard].key(keys.EVENTS, day=day, bucket=mark.bucket), mark.field)
        held = pipe.execute()
        # A late event's mark went with its day; it is counted in its target's late set.
        targets = [mark._replace(shard=shard) for shard, mark in marks]
        held = _or_late(r, targets, [bool(h) for h in held], "e")
        missing += [e for e, present in zip(events, held, strict=True) if not present]
    return missing


def was_seen(r: Redis, interaction_id: str) -> bool:
    return _seen(r, [ident(interaction_id, None)])[0]


def flag_of(r: Redis, interaction_id: str) -> bytes | None:
    """The interaction's flag as JSON, or None while it has none."""
    flag = flags_of(r, [(interaction_id, None)]).get(interaction_id)
    return None if flag is None else orjson.dumps(flag)


def flags_of(r: Redis, rows: Sequence[tuple[str, float | None]]) -> dict[str, dict[str, Any]]:
    """The flags of those of ``rows`` (id, ts) that have one, by id, with their reasons; a
    ts of None is looked for in every day held."""
    idents = [ident(i, ts) for i, ts in rows]
    hits = hash_values(r, keys.IX, idents)
    flagged = [
        (row, at, hit) for row, at, hit in zip(rows, idents, hits, strict=True) if hit and hit[1]
    ]
    shards = all_shards()
    pipe = r.pipeline(transaction=False)
    for _, at, (day, _) in flagged:
        pipe.hget(shards[at.shard].key(keys.REASONS, day=day), at.field)
    reasons = pipe.execute() if flagged else []
    return {
        row[0]: unpack_flag(row[0], hit[1], orjson.loads(why) if why else None)
        for (row, _, hit), why in zip(flagged, reasons, strict=True)
    }


def worker_rows(r: Redis) -> dict[str, int]:
    """Rows each worker handled (deliveries, so a redelivered batch counts again)."""
    return {k.decode(): int(v) for k, v in r.hgetall(keys.WORKER_ROWS).items()}


def count_worker_stall(r: Redis, worker: str) -> None:
    """A worker exits because its consumer stalled (workers/watchdog.py)."""
    r.hincrby(keys.WORKER_STALLS, worker, 1)


def worker_stalls(r: Redis) -> dict[str, int]:
    """Times each worker exited because its consumer stalled."""
    return {k.decode(): int(v) for k, v in r.hgetall(keys.WORKER_STALLS).items()}


def unflagged(r: Redis, rows: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The (id, ts) of ``rows`` that wait for a flag: held without one, or not held and
    neither late (a late row is counted as such and gets none) nor past the horizon (its
    flag has left with its day)."""
    idents = idents_at(rows)
    clocks = per_shard(r, lambda pipe, s: pipe.get(s.prefix + keys.CLOCK))
    horizon = settings().retention_days
    gone = [int(c) - horizon if c is not None else -1 for c in clocks]
    flagged = [
        bool(hit[1]) if hit is not None else at.day <= gone[at.shard]
        for at, hit in zip(idents, hash_values(r, keys.IX, idents), strict=True)
    ]
    done = _or_late(r, idents, flagged)
    return [row for row, d in zip(rows, done, strict=True) if not d]


def _cursor(ids: Sequence[bytes]) -> bytes:
    return b",".join(ids)


def latest_flags(r: Redis, last: int) -> tuple[list[dict[str, Any]], bytes]:
    """The ``last`` newest flags, oldest first, and the cursor to follow from."""
    # Each entry holds a batch of flags: read back until ``last`` flags are in hand.
    entries = per_shard(r, lambda pipe, s: pipe.xrevrange(s.prefix + keys.FLAG_STREAM, count=last))
    batches = sorted(
        ((entry_order(entry_id), fields) for held in entries for entry_id, fields in held),
        key=lambda e: e[0],
    )
    recent: list[dict[str, Any]] = []
    for _, fields in reversed(batches):
        recent[:0] = orjson.loads(fields[b"f"])
        if len(recent) >= last:
            break
    cursor = _cursor([held[0][0] if held else b"0-0" for held in entries])
    return (recent[-last:] if last else []), cursor


def flags_after(
    r: Redis, cursor: bytes, block_ms: int = 1000
) -> tuple[list[dict[str, Any]], bytes]:
    """The flags published after ``cursor`` (waiting up to ``block_ms``), and the new cursor."""
    shards = all_shards()
    ids = cursor.split(b",") if cursor != b"$" else [b"$"] * len(shards)
    if len(shards) == 1:  # one stream: Redis waits for it
        replies = [
            r.xread({shards[0].prefix + keys.FLAG_STREAM: ids[0]}, block=block_ms, count=100)
        ]
    else:  # one stream per slot: XREAD cannot wait on them together, so poll
        deadline = time.monotonic() + block_ms / 1000
        while True:
            replies = per_shard(
                r,
                lambda pipe, s: pipe.xread({s.prefix + keys.FLAG_STREAM: ids[s.index]}, count=100),
            )
            if any(replies) or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    flags: list[tuple[tuple[int, int], list[dict[str, Any]]]] = []
    for n, reply in enumerate(replies):
        for _, batch in reply or []:
            for entry_id, fields in batch:
                flags.append((entry_order(entry_id), orjson.loads(fields[b"f"])))
                ids[n] = entry_id
    flags.sort(key=lambda f: f[0])
    return [flag for _, batch in flags for flag in batch], _cursor(ids)


def latest_rejections(r: Redis, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` rejected lines, newest first, each with its ledger, line and reason."""
    entries = r.xrevrange(keys.REJECTED_STREAM, count=count)
    return [orjson.loads(fields[b"r"]) for _, fields in entries]


def record_rejections(r: Redis | None, source: str, rejections: Iterable[Rejection]) -> int:
    """Count rejections once each (keyed by source, line and content) and stream them: how
    many were new.

    A rejection is known for the retention horizon (rejections.lua), by day, and keeps only
    its reason there; the raw excerpt goes to the capped stream and the dead-letter file.
    """
    entries = {}
    for rej in rejections:
        digest = hashlib.sha1(rej.raw.encode("utf-8", "replace")).hexdigest()[:12]
        entries[f"{source}:{rej.line}:{digest}"] = rej
    if r is None or not entries:
        return 0
    horizon = settings().retention_days
    today = keys.day(time.time())
    looked_in = [keys.rejected_on(day) for day in range(today, today - horizon - 1, -1)]
    args: list[Any] = [(horizon + 1) * 86400, keys.REJECTED_STREAM_MAXLEN]
    for key, rej in entries.items():
        args += [key, orjson.dumps({"reason": rej.reason}), orjson.dumps(rej.to_json(source))]
    names = [keys.REJECTED_COUNT, keys.REJECTED_STREAM, *looked_in, keys.REJECTED_BEFORE_DAYS]
    return int(run_script(r, _REJECTIONS, names, args))


_REJECTIONS = (Path(__file__).parent / "rejections.lua").read_text()


def check_layout(r: Redis) -> None:
    """Record this process's layout in a new state, and refuse a state written with
    another one: its keys would be misread. Every command that writes calls this first."""
    layout = f"v{keys.LAYOUT_VERSION} shards={len(all_shards())} buckets={keys.BUCKETS}"
    r.set(keys.LAYOUT, layout, nx=True)
    held = (r.get(keys.LAYOUT) or b"").decode()
    if held != layout:
        raise RuntimeError(
            f"this Redis holds state written with {held}, and this process uses {layout}:"
            " set THRONOS_REDIS_CLUSTER and THRONOS_CLUSTER_SHARDS as they were, or start"
            " from an empty state"
            " (ops/RUNBOOK.md, Upgrade)"
        )


def state_id(r: Redis) -> str:
    """This Redis state's name, made on first use: a new one means the state was lost.
    Its layout is checked first (:func:`check_layout`)."""
    check_layout(r)
    r.set(keys.STATE_ID, uuid.uuid4().hex, nx=True)
    return (r.get(keys.STATE_ID) or b"").decode()


def _stats(r: Redis) -> tuple[Counter[str], int]:
    """The shards' counters added up, and the rows waiting in their PENDING lists."""
    pending = per_shard(r, lambda pipe, s: pipe.llen(s.prefix + keys.PENDING))
    return summed(r, keys.STATS), sum(pending)


def seen_any(r: Redis) -> bool:
    stats, _ = _stats(r)
    return bool(stats["seen"] or stats["late"])


def _rejected(r: Redis) -> int:
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.REJECTED_COUNT)
    pipe.hlen(keys.REJECTED_BEFORE_DAYS)
    count, before_days = pipe.execute()
    return int(count or 0) + int(before_days)


def counts(r: Redis) -> dict[str, int]:
    stats, pending = _stats(r)
    return {
        "interactions_seen": stats["seen"],
        "interactions_scored": stats["scored"],
        "interactions_rejected": _rejected(r),
        # Rows older than the retention horizon when they came: counted, not analysed.
        "interactions_late": stats["late"],
        "anomalies": stats["anomalies"],
        "pending": pending,
        "score_events": stats["score_events"],
        # Interactions that events named: found, or not (yet) in any ledger read.
        "score_events_joined": stats["score_events_joined"],
        "score_events_orphaned": stats["orphans"],
        "score_events_expired": stats["orphans_expired"],
        "score_events_late": stats["late_events"],
        "score_events_repeated": stats["score_events_repeated"],
    }


def dropped_fields(r: Redis) -> dict[str, int]:
    """Per ledger source (e.g. ``meta.rating``): rows in which it could not be read."""
    return dict(summed(r, keys.DROPPED_FIELDS))


# PENDING leaves in messages of a size that splits a shard's backlog into at least
# PENDING_SPREAD of them, so up to that many scoring workers share it, between these bounds:
# large messages cost each row less (a 200k-row backlog scored in 19 s with 5,000-row
# messages, 28 s with 500-row ones).
PENDING_SPREAD = 8
PENDING_CHUNK = (500, 5000)


def drain_pending(r: Redis, send: Callable[[list[Any]], None]) -> int:
    """Send the rows that waited for the first model, oldest first; how many there were.

    A chunk is sent before it is trimmed: a crash in between sends it twice, which
    scoring ignores, rather than never.
    """
    sent = 0
    low, high = PENDING_CHUNK
    for shard in all_shards():
        pending = shard.prefix + keys.PENDING
        chunk = min(max(int(r.llen(pending)) // PENDING_SPREAD, low), high)
        while rows := r.lrange(pending, 0, chunk - 1):
            send([orjson.loads(item) for item in rows])
            r.ltrim(pending, len(rows), -1)
            sent += len(rows)
    return sent


def anomalies(r: Redis) -> list[dict[str, Any]]:
    """The flagged rows kept for the export (capped streams), oldest first."""
    held = per_shard(r, lambda pipe, s: pipe.xrange(s.prefix + keys.ANOMALIES))
    entries = sorted(
        ((entry_order(i), f) for stream in held for i, f in stream), key=lambda e: e[0]
    )
    return [orjson.loads(fields[b"a"]) for _, fields in entries[-keys.ANOMALIES_MAXLEN :]]


def count_worker_rows(r: Redis, worker: str, n: int, receipt: str | None = None) -> None:
    """Count the rows a worker handled; with ``receipt``, the id of the message they came
    in, record that every one of them was applied (:func:`received`)."""
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(keys.WORKER_ROWS, worker, n)
    if receipt is not None:
        pipe.set(keys.receipt(receipt), 1, ex=keys.RECEIPT_TTL_S)
    pipe.execute()


def received(r: Redis, messages: Sequence[str | None]) -> list[bool]:
    """Whether a worker applied each message whole, by its receipt; False for None and for
    a receipt that expired or was never written (the rows may still be there: unseen())."""
    asked = [m for m in messages if m is not None]
    held = iter(r.mget([keys.receipt(m) for m in asked]) if asked else [])
    return [m is not None and next(held) is not None for m in messages]


def first_in(r: Redis, name: str, seconds: float) -> bool:
    """True for the first caller of ``name`` in each ``seconds``; False for the others."""
    return bool(r.set(keys.lock(name), 1, nx=True, ex=max(1, round(seconds))))


def aggregate_values(r: Redis, scope: str) -> dict[str, dict[str, float]]:
    """One scope's aggregates, added up over shards (and for sessions over the days held):
    measure -> {field: value} (core/aggregates.py, where pair measures are keyed
    ``"<who>\t<value>"``), plus ``sessions`` (per wallet) or ``wallet`` (per session)."""
    shards = all_shards()
    read = "hgetall" if scope == "wallet" else "hkeys"  # sessions need only the names
    wallet_records = per_shard(r, lambda pipe, s: getattr(pipe, read)(s.prefix + keys.WALLET_AGG))
    if scope == "wallet":
        records = wallet_records
    else:
        pipe = r.pipeline(transaction=False)
        for shard, days in zip(shards, days_held(r).values(), strict=True):
            for d in reversed(days):  # oldest first: a session's newest day names its wallet
                for b in range(keys.BUCKETS // len(shards)):
                    pipe.hgetall(shard.key(keys.SESSION_AGG, day=d, bucket=b))
        records = pipe.execute()
    # Sessions name their wallet by keys.wallet_ref.
    wallets = (
        {keys.wallet_ref(w.decode()): w.decode() for held in wallet_records for w in held}
        if scope == "session"
        else {}
    )
    values: dict[str, Any] = {m.name: defaultdict(float) for m in aggregates.MEASURES}
    values["sessions" if scope == "wallet" else "wallet"] = (
        defaultdict(int) if scope == "wallet" else {}
    )
    for held in records:
        for who_bytes, record in held.items():
            who = who_bytes.decode()
            measures, extra = unpack_aggregate(record)
            for m, value in zip(aggregates.MEASURES, measures, strict=True):
                if m.per is None:
                    values[m.name][who] += value
                else:
                    for v, count in value.items():
                        values[m.name][f"{who}\t{v}"] += count
            if extra is None:
                continue
            if scope == "wallet":
                values["sessions"][who] += extra
            elif extra in wallets:
                values["wallet"][who] = wallets[extra]
    return {name: dict(held) for name, held in values.items()}


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


def last_export(r: Redis) -> dict[str, str]:
    """The last export's summary as :func:`record_export` keeps it (strings)."""
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.EXPORT).items()}


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
