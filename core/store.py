"""Reads and writes of the shared state in Redis. Producers and workers both go through here.

The one write that must be exactly-once is :func:`apply_batch`: a Lua script, so Redis runs
it whole or not at all, and a batch delivered twice leaves the state as it was after once.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import redis
from redis import Redis  # re-exported: other modules annotate with store.Redis
from thronos_analytics.core import keys, signing
from thronos_analytics.core.contract import Rejection, Row, ScoreEvent
from thronos_analytics.core.settings import settings


@cache
def connect(url: str | None = None) -> Redis:
    """One client per process and URL; redis-py makes its pool safe across fork."""
    url = url or settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set; `thronos-analytics run` starts a Redis for you")
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=2, health_check_interval=30
    )


_APPLY_BATCH = """
-- ARGV: 1 window_max, 2 flag stream max entries, 3 anomalies max, 4 use_model ('1' scored,
-- '0' no model when prepared, '2' park even though a model is published: it is unusable),
-- 5 n_new, 6 n_old, 7 the new rows' aggregates (JSON, see _totals), 8 their window entry
-- (JSON array of wire rows), 9 their flags (JSON array), 10 their anomalies (JSON), 11 the
-- old rows (JSON), 12 the score events the caller joined to new rows (JSON object id ->
-- SCORES value), 13 the new rows' JOIN_ROWS records (JSON array of [id, record]), then the
-- n_new ids, then per-row values: the n_new flags when scoring, or the wire rows of all
-- n_new + n_old rows when parking.
local window_max, flags_max, anomalies_max = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local use_model, n_new, n_old = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local IDS = 14
local VALUES = IDS + n_new
-- unpack() puts its values on Lua's C stack, which holds 8,000.
local CHUNK = 1000
local seen, flags, flag_stream, anomalies = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, pending, stats, by_provider = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local model_current, session_wallet = KEYS[9], KEYS[10]
local wallet_sessions, wallet_session_seen = KEYS[11], KEYS[12]
-- KEYS[13..24]: the per-session, then the per-wallet, measures (keys.AGG_MEASURES)
local scores, join_rows, dropped = KEYS[25], KEYS[26], KEYS[27]
local scored_this_minute = KEYS[#KEYS]

if use_model == '0' and redis.call('EXISTS', model_current) == 1 then
  return {0, -1}  -- a model was published meanwhile: the caller scores and calls again
end

-- The caller sends as new the rows it believes SEEN lacks, with their aggregates summed.
-- If SEEN holds any of them (a redelivery), nothing is written and the caller is told
-- which, so it can move them to the old rows and sum again.
local clash = {}
for i = 0, n_new - 1, CHUNK do
  local last = math.min(i + CHUNK, n_new) - 1
  local member = redis.call('SMISMEMBER', seen, unpack(ARGV, IDS + i, IDS + last))
  for j = 1, #member do
    if member[j] == 1 then clash[#clash + 1] = i + j - 1 end
  end
end
if #clash > 0 then return {'clash', clash} end

-- The aggregates count each new row's score event as the caller read it; if one arrived
-- since, the caller joins again.
local joined = cjson.decode(ARGV[12])
if n_new > 0 and redis.call('HLEN', scores) > 0 then
  for i = 0, n_new - 1, CHUNK do
    local last = math.min(i + CHUNK, n_new) - 1
    local now = redis.call('HMGET', scores, unpack(ARGV, IDS + i, IDS + last))
    for j = 1, #now do
      if (now[j] or false) ~= (joined[ARGV[IDS + i + j - 1]] or false) then return {'rejoin', 0} end
    end
  end
end

for i = 0, n_new - 1, CHUNK do
  redis.call('SADD', seen, unpack(ARGV, IDS + i, IDS + math.min(i + CHUNK, n_new) - 1))
end
if n_new > 0 then
  -- The batch's aggregates, summed by the caller: one call per session or wallet and measure.
  local totals = cjson.decode(ARGV[7])
  for _, t in ipairs(totals.i) do redis.call('HINCRBY', KEYS[t[1]], t[2], t[3]) end
  for _, t in ipairs(totals.f) do redis.call('HINCRBYFLOAT', KEYS[t[1]], t[2], t[3]) end
  for _, t in ipairs(totals.sw) do redis.call('HSET', session_wallet, t[1], t[2]) end
  for _, t in ipairs(totals.p) do
    if redis.call('HSETNX', wallet_session_seen, t[2], 1) == 1 then
      redis.call('HINCRBY', wallet_sessions, t[1], 1)
    end
  end
  for _, t in ipairs(totals.d) do redis.call('HINCRBY', dropped, t[1], t[2]) end
  for _, t in ipairs(cjson.decode(ARGV[13])) do redis.call('HSET', join_rows, t[1], t[2]) end
  if totals.j > 0 then redis.call('HINCRBY', stats, 'score_events_joined', totals.j) end
  local top = redis.call('XREVRANGE', window, '+', '-', 'COUNT', 1)
  local total = n_new
  if #top > 0 then total = total + tonumber(string.match(top[1][1], '^%d+')) end
  -- Keep every entry that holds one of the newest window_max rows.
  redis.call('XADD', window, 'MINID', string.format('%d', math.max(total - window_max + 1, 0)),
             string.format('%d-0', total), 'r', ARGV[8])
end

if use_model ~= '1' then
  -- No usable model: all rows, old ones too, wait in PENDING for the next training to drain.
  local n = n_new + n_old
  for i = 0, n - 1, CHUNK do
    redis.call('RPUSH', pending, unpack(ARGV, VALUES + i, VALUES + math.min(i + CHUNK, n) - 1))
  end
  return {n_new, 0}
end

local function count_anomaly(provider, record)
  redis.call('HINCRBY', stats, 'anomalies', 1)
  redis.call('HINCRBY', by_provider, provider, 1)
  redis.call('XADD', anomalies, 'MAXLEN', '~', anomalies_max, '*', 'a', record)
end

-- New rows have no flag yet: flags are only written here, after SADD.
for i = 0, n_new - 1, CHUNK do
  local fields = {}
  for j = i, math.min(i + CHUNK, n_new) - 1 do
    fields[#fields + 1] = ARGV[IDS + j]
    fields[#fields + 1] = ARGV[VALUES + j]
  end
  redis.call('HSET', flags, unpack(fields))
end
if n_new > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', n_new, 'f', ARGV[9])
  for _, a in ipairs(cjson.decode(ARGV[10])) do count_anomaly(a[1], a[2]) end
end

-- Old rows were seen before; those without a flag yet get theirs now, once.
local scored, late = n_new, {}
if n_old > 0 then
  for _, o in ipairs(cjson.decode(ARGV[11])) do
    local id, flag, provider, record = o[1], o[2], o[3], o[4]
    if redis.call('HSETNX', flags, id, flag) == 1 then
      scored = scored + 1
      late[#late + 1] = flag
      if record ~= '' then count_anomaly(provider, record) end
    end
  end
end
if #late > 0 then
  redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'n', #late,
             'f', '[' .. table.concat(late, ',') .. ']')
end
if scored > 0 then
  redis.call('HINCRBY', stats, 'scored', scored)  -- equals HLEN flags unless one was sent twice
  redis.call('INCRBY', scored_this_minute, scored)
  redis.call('EXPIRE', scored_this_minute, 300)
end
return {n_new, scored}
"""

_BATCH_KEYS = [
    keys.SEEN,
    keys.FLAGS,
    keys.FLAG_STREAM,
    keys.ANOMALIES,
    keys.WINDOW,
    keys.PENDING,
    keys.STATS,
    keys.ANOMALIES_BY_PROVIDER,
    keys.model_current("anomaly"),
    keys.SESSION_WALLET,
    keys.WALLET_SESSIONS,
    keys.WALLET_SESSION_SEEN,
    *(keys.agg("session", m) for m in keys.AGG_MEASURES),
    *(keys.agg("wallet", m) for m in keys.AGG_MEASURES),
    keys.SCORES,
    keys.JOIN_ROWS,
    keys.DROPPED_FIELDS,
]
# Lua's 1-based KEYS index of the first per-session and per-wallet measure; _totals names
# the hashes it increments by these.
_SESSION_KEY = _BATCH_KEYS.index(keys.agg("session", keys.AGG_MEASURES[0])) + 1
_WALLET_KEY = _BATCH_KEYS.index(keys.agg("wallet", keys.AGG_MEASURES[0])) + 1


class JoinsChanged(Exception):
    """A score event for one of the batch's rows arrived after :func:`read_joins`."""


Joins = dict[str, bytes]  # interaction id -> its newest score event, as SCORES holds it


def read_joins(r: Redis, rows: Sequence[Row]) -> Joins:
    """The newest score event of each of ``rows`` that has one."""
    if not rows or not r.hlen(keys.SCORES):
        return {}
    ids = [row.id for row in rows]
    return {i: v for i, v in zip(ids, r.hmget(keys.SCORES, ids), strict=True) if v is not None}


def joined(rows: Sequence[Row], joins: Joins) -> list[Row]:
    """``rows`` with their score events applied (:meth:`ScoreEvent.fill`)."""
    if not joins:
        return list(rows)
    return [_fill(row, joins[row.id]) if row.id in joins else row for row in rows]


def _fill(row: Row, stored: bytes) -> Row:
    ts, event_id, score, use_case = orjson.loads(stored)
    return ScoreEvent(event_id, row.id, ts or None, score, use_case).fill(row)


def provider_context(
    r: Redis, rows: Sequence[Row], providers: Sequence[str]
) -> list[dict[str, dict[str, float]]]:
    """Per row, its session's and wallet's calls per provider other than the row itself, as
    the state holds them now plus the batch's rows not yet counted: the history a live row
    is scored with (``AnomalyDetector.flag``'s ``context``)."""
    scopes = (("session", "session_id"), ("wallet", "wallet"))
    whos = {
        scope: sorted({getattr(row, attr) for row in rows} - {None, ""}) for scope, attr in scopes
    }
    pipe = r.pipeline(transaction=False)
    pipe.smismember(keys.SEEN, [row.id for row in rows])
    for scope, _ in scopes:
        fields = [f"{who}\t{p}" for who in whos[scope] for p in providers]
        pipe.hmget(keys.agg(scope, "mix"), fields) if fields else pipe.echo("")
    seen, *mixes = pipe.execute()
    counts: dict[str, dict[str, dict[str, float]]] = {}
    for (scope, _), mix in zip(scopes, mixes, strict=True):
        held = counts[scope] = {}
        values = iter(mix or [])
        for who in whos[scope]:
            held[who] = {p: float(next(values) or 0) for p in providers}
    new_ids: set[str] = set()
    for row, was_seen in zip(rows, seen, strict=True):
        if was_seen or row.id in new_ids:
            continue
        new_ids.add(row.id)
        for scope, attr in scopes:
            who = getattr(row, attr)
            if who and row.provider in counts[scope].get(who, {}):
                counts[scope][who][row.provider] += 1
    context = []
    for row in rows:
        entry: dict[str, dict[str, float]] = {}
        for scope, attr in scopes:
            who = getattr(row, attr)
            if who:
                others = dict(counts[scope][who])
                if row.provider in others:  # the row itself is counted: take it off
                    others[row.provider] = max(others[row.provider] - 1, 0.0)
                entry[scope] = others
        context.append(entry)
    return context


def apply_batch(
    r: Redis,
    rows: Sequence[Row],
    flags: Sequence[dict[str, Any]] | None,
    park_anyway: bool = False,
    joins: Joins | None = None,
) -> tuple[int, int]:
    """Ingest rows and publish their flags; ``flags=None`` parks the rows in PENDING.

    ``rows`` are as the ledger has them; ``joins`` (from :func:`read_joins`) are their
    score events, which the aggregates count. If an event arrived since they were read,
    this raises :class:`JoinsChanged`, and the caller reads them and flags again.

    Returns (rows new to the ledger state, flags newly published); -1 flags means a model
    appeared while the batch was being prepared, so the caller should score and retry,
    unless ``park_anyway`` (the published model is unusable).

    Rows are sent as new (summed here, written with a few calls per batch) unless SEEN
    holds them; the script reports any it does hold and this sends again without them.
    A repeated id within the batch counts once.
    """
    joins = joins or {}
    use_model = "1" if flags is not None else "2" if park_anyway else "0"
    flag_json = [orjson.dumps(flag) for flag in flags] if flags is not None else []
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.id, i)
    new = list(first.values())
    while True:
        reply = _script(r, "apply_batch")(
            # Last: this minute's counter of scored rows.
            keys=[*_BATCH_KEYS, keys.scored_in_minute(int(time.time() // 60))],
            args=_batch_args(rows, flags, flag_json, new, use_model, joins),
        )
        if reply[0] == b"rejoin":
            raise JoinsChanged
        if reply[0] != b"clash":
            return int(reply[0]), int(reply[1])
        seen = {new[int(i)] for i in reply[1]}
        new = [i for i in new if i not in seen]


def _batch_args(
    rows: Sequence[Row],
    flags: Sequence[dict[str, Any]] | None,
    flag_json: list[bytes],
    new: list[int],
    use_model: str,
    joins: Joins,
) -> list[Any]:
    is_new = set(new)
    old = [i for i in range(len(rows)) if i not in is_new]
    fresh = [rows[i] for i in new]
    fresh_joins = {row.id: joins[row.id] for row in fresh if row.id in joins}
    anomalies, old_rows = [], []
    if flags is not None:
        for i in new:
            if flags[i]["is_anomaly"]:
                anomalies.append([rows[i].provider, _anomaly_record(rows[i], flags[i])])
        for i in old:
            record = _anomaly_record(rows[i], flags[i]) if flags[i]["is_anomaly"] else b""
            old_rows.append([rows[i].id, flag_json[i], rows[i].provider, record])
        values = [flag_json[i] for i in new]
    else:
        values = [orjson.dumps(rows[i].to_wire()) for i in new + old]
    return [
        settings().window_rows,
        keys.FLAG_STREAM_MAXLEN,
        keys.ANOMALIES_MAXLEN,
        use_model,
        len(new),
        len(old),
        orjson.dumps(_totals(joined(fresh, fresh_joins), len(fresh_joins))),
        # The window keeps rows as the ledger has them; readers join events (window_rows).
        orjson.dumps([row.to_wire() for row in fresh]),
        b"[" + b",".join(flag_json[i] for i in new) + b"]" if flags is not None else b"",
        # Lua's cjson reads an empty JSON array as an object; both iterate as empty.
        orjson.dumps(anomalies, default=bytes.decode),
        orjson.dumps(old_rows, default=bytes.decode),
        orjson.dumps(fresh_joins, default=bytes.decode),
        orjson.dumps(_join_records(fresh)),
        *(row.id for row in fresh),
        *values,
    ]


def _join_records(rows: Sequence[Row]) -> list[list[Any]]:
    """JOIN_ROWS entries for rows an event could still change: without score or use case."""
    return [
        [row.id, orjson.dumps([row.session_id, row.wallet, row.score, row.use_case]).decode()]
        for row in rows
        if row.score is None or row.use_case is None
    ]


def _anomaly_record(row: Row, flag: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": row.id,
            "ts": row.ts,
            "wallet": row.wallet,
            "session_id": row.session_id,
            "provider": row.provider,
            "model": row.model,
            "anomaly_score": flag["anomaly_score"],
            "reasons": flag["reasons"],
        }
    )


def _totals(rows: Sequence[Row], n_joined: int = 0) -> dict[str, Any]:
    """The aggregates of ``rows``: increments per (KEYS index, field), each session's
    wallet, the (wallet, session) pairs, the unreadable sources and the joined events."""
    sums: dict[tuple[int, str], list] = {}  # calls, score sum, scores, credits
    counts: dict[tuple[int, str], int] = {}  # calls per provider and per use case
    session_wallet: dict[str, str] = {}
    pairs: dict[str, str] = {}
    dropped: dict[str, int] = {}
    for row in rows:
        if row.dropped:
            for source in row.dropped.split(","):
                dropped[source] = dropped.get(source, 0) + 1
        for first, who in ((_SESSION_KEY, row.session_id), (_WALLET_KEY, row.wallet)):
            if not who:
                continue
            total = sums.get((first, who))
            if total is None:
                total = sums[first, who] = [0, 0.0, 0, 0.0]
            total[0] += 1
            if row.score is not None:
                total[1] += row.score
                total[2] += 1
            total[3] += row.credits_used
            mix = (first + 4, f"{who}\t{row.provider}")
            counts[mix] = counts.get(mix, 0) + 1
            if row.use_case:
                uc = (first + 5, f"{who}\t{row.use_case}")
                counts[uc] = counts.get(uc, 0) + 1
        if row.session_id:
            session_wallet[row.session_id] = row.wallet or ""  # the last row's wallet wins
            if row.wallet:
                pairs[f"{row.wallet}\t{row.session_id}"] = row.wallet
    ints = [[k, field, n] for (k, field), n in counts.items()]
    floats = []
    for (k, who), (calls, score_sum, scores, credits) in sums.items():
        ints.append([k, who, calls])
        if scores:
            ints.append([k + 2, who, scores])
            floats.append([k + 1, who, repr(score_sum)])
        floats.append([k + 3, who, repr(credits)])
    return {
        "i": ints,
        "f": floats,
        "sw": [[sid, wallet] for sid, wallet in session_wallet.items()],
        "p": [[wallet, pair] for pair, wallet in pairs.items()],
        "d": [[source, n] for source, n in dropped.items()],
        "j": n_joined,
    }


_APPLY_SCORES = """
-- ARGV: a JSON array of score events [id, interaction id, SCORES value, ts, score, use case].
-- An event counts once (SADD). Of an interaction's events the newest (ts, then id) stands;
-- if the interaction was seen, its aggregates move from the old standing score and use
-- case to the new, where it has none of its own (as ScoreEvent.fill).
local events, scores, join_rows, seen, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local s_sum, s_n, s_uc, w_sum, w_n, w_uc = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local null = cjson.null
local function value(x) if x == null then return nil end return x end

local function move(sum, n, uc, who, old_score, new_score, old_uc, new_uc)
  if who == nil or who == '' then return end
  if old_score ~= new_score then
    if old_score ~= nil then
      redis.call('HINCRBYFLOAT', sum, who, -old_score)
      redis.call('HINCRBY', n, who, -1)
    end
    if new_score ~= nil then
      redis.call('HINCRBYFLOAT', sum, who, new_score)
      redis.call('HINCRBY', n, who, 1)
    end
  end
  if old_uc ~= new_uc then
    if old_uc ~= nil and redis.call('HINCRBY', uc, who .. '\t' .. old_uc, -1) <= 0 then
      redis.call('HDEL', uc, who .. '\t' .. old_uc)
    end
    if new_uc ~= nil then redis.call('HINCRBY', uc, who .. '\t' .. new_uc, 1) end
  end
end

local applied = 0
for _, e in ipairs(cjson.decode(ARGV[1])) do
  local id, target, stored = e[1], e[2], e[3]
  local ts, score, uc = value(e[4]) or 0, value(e[5]), value(e[6])
  if redis.call('SADD', events, id) == 1 then
    applied = applied + 1
    local current = redis.call('HGET', scores, target)
    local before = nil
    if current then before = cjson.decode(current) end
    local newer = before == nil or ts > before[1] or (ts == before[1] and id > before[2])
    if newer then
      redis.call('HSET', scores, target, stored)
      local record = redis.call('HGET', join_rows, target)
      if record then
        local row = cjson.decode(record)
        local session, wallet = value(row[1]), value(row[2])
        local own_score, own_uc = value(row[3]), value(row[4])
        local old_score, old_uc = own_score, own_uc
        if before ~= nil then
          if old_score == nil then old_score = value(before[3]) end
          if old_uc == nil then old_uc = value(before[4]) end
        end
        local new_score, new_uc = own_score, own_uc
        if new_score == nil then new_score = score end
        if new_uc == nil then new_uc = uc end
        move(s_sum, s_n, s_uc, session, old_score, new_score, old_uc, new_uc)
        move(w_sum, w_n, w_uc, wallet, old_score, new_score, old_uc, new_uc)
      end
      if before == nil and (record or redis.call('SISMEMBER', seen, target) == 1) then
        redis.call('HINCRBY', stats, 'score_events_joined', 1)
      end
    end
  end
end
if applied > 0 then redis.call('HINCRBY', stats, 'score_events', applied) end
local repeated = #cjson.decode(ARGV[1]) - applied
if repeated > 0 then redis.call('HINCRBY', stats, 'score_events_repeated', repeated) end
return applied
"""

_SCORES_KEYS = [
    keys.SCORE_EVENTS,
    keys.SCORES,
    keys.JOIN_ROWS,
    keys.SEEN,
    keys.STATS,
    *(keys.agg(scope, m) for scope in keys.AGG_SCOPES for m in ("score_sum", "score_n", "uc")),
]


def scores_value(event: ScoreEvent) -> bytes:
    """An event as SCORES holds it: what ordering and joining need, JSON [ts, id, score, uc]."""
    return orjson.dumps([event.ts or 0, event.id, event.score, event.use_case])


def apply_scores(r: Redis, events: Sequence[ScoreEvent]) -> int:
    """Apply score events exactly once each, whether their interactions came before or
    not; returns how many were new."""
    if not events:
        return 0
    payload = [
        [e.id, e.interaction_id, scores_value(e).decode(), e.ts, e.score, e.use_case]
        for e in events
    ]
    return int(_script(r, "apply_scores")(keys=_SCORES_KEYS, args=[orjson.dumps(payload)]))


@cache
def _scripts() -> dict[str, str]:
    return {"apply_batch": _APPLY_BATCH, "apply_scores": _APPLY_SCORES}


def _script(r: Redis, name: str) -> Any:
    # register_script caches the SHA and falls back to EVAL after a Redis restart.
    return r.register_script(_scripts()[name])


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


def publish_model(r: Redis, name: str, blob: bytes, info: dict[str, Any]) -> str:
    """Store a model version and make it current. Versions are UTC timestamps, sortable."""
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    info = {**info, "version": version}
    pipe = r.pipeline(transaction=True)
    pipe.set(keys.model_blob(name, version), signing.sign(blob))
    pipe.hset(keys.model_versions(name), version, orjson.dumps(info))
    pipe.set(keys.model_current(name), version)
    pipe.delete(keys.model_failure(name))
    pipe.execute()
    return version


def current_model(r: Redis, name: str) -> tuple[str, bytes] | None:
    """The published version and its verified payload; ModelIntegrityError if tampered."""
    version = r.get(keys.model_current(name))
    if version is None:
        return None
    return model_version(r, name, version.decode())


def model_version(r: Redis, name: str, version: str) -> tuple[str, bytes] | None:
    blob = r.get(keys.model_blob(name, version))
    if blob is None:
        return None
    return version, signing.verify(blob, f"{name} model {version}")


def model_info(r: Redis, name: str) -> dict[str, Any] | None:
    version = r.get(keys.model_current(name))
    if version is None:
        return None
    raw = r.hget(keys.model_versions(name), version)
    return orjson.loads(raw) if raw else None


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
