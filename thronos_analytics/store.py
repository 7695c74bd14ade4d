"""Reads and writes of the shared state in Redis. Producers and workers both go through here.

The one write that must be exactly-once is :func:`apply_batch`: a Lua script, so Redis runs
it whole or not at all, and a batch delivered twice leaves the state as it was after once.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import redis
from redis import Redis  # re-exported: other modules annotate with store.Redis

from analytics.contract import Rejection, Row
from thronos_analytics import keys, signing
from thronos_analytics.settings import settings


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
local window_max, flags_max, anomalies_max, use_model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- One argument per batch, not per field: packing thousands of arguments costs the client
-- more than decoding one JSON array costs Redis.
local rows, flag_rows = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
local seen, flags, flag_stream, anomalies = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, pending, stats, by_provider = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local model_current, session_wallet = KEYS[9], KEYS[10]
local wallet_sessions, wallet_session_seen = KEYS[11], KEYS[12]
-- KEYS[13..18] per session, KEYS[19..24] per wallet: calls, score_sum, score_n, credits,
-- mix (calls per provider) and uc (calls per use case)

-- The aggregates of the batch's new rows are summed here and written once per session and
-- wallet: a batch from one stretch of the ledger holds many calls of the same sessions.
local function totals() return {order = {}, calls = {}, score_sum = {}, score_n = {},
                                credits = {}, mix_order = {}, mix = {},
                                uc_order = {}, uc = {}} end
local per_session, per_wallet = totals(), totals()

local function tally(order, counts, pair)
  if counts[pair] == nil then
    order[#order + 1] = pair
    counts[pair] = 0
  end
  counts[pair] = counts[pair] + 1
end

local function count(t, who, provider, use_case, score, credits)
  if t.calls[who] == nil then
    t.order[#t.order + 1] = who
    t.calls[who], t.score_sum[who], t.score_n[who], t.credits[who] = 0, 0, 0, 0
  end
  t.calls[who] = t.calls[who] + 1
  if score ~= '' then
    t.score_sum[who] = t.score_sum[who] + tonumber(score)
    t.score_n[who] = t.score_n[who] + 1
  end
  t.credits[who] = t.credits[who] + tonumber(credits)
  tally(t.mix_order, t.mix, who .. '\\t' .. provider)
  if use_case ~= '' then tally(t.uc_order, t.uc, who .. '\\t' .. use_case) end
end

local function float(x)
  return string.format('%.17g', x)  -- tostring keeps only 14 digits
end

local function write(t, first)
  for _, who in ipairs(t.order) do
    redis.call('HINCRBY', KEYS[first], who, t.calls[who])
    if t.score_n[who] > 0 then
      redis.call('HINCRBYFLOAT', KEYS[first + 1], who, float(t.score_sum[who]))
      redis.call('HINCRBY', KEYS[first + 2], who, t.score_n[who])
    end
    redis.call('HINCRBYFLOAT', KEYS[first + 3], who, float(t.credits[who]))
  end
  for _, pair in ipairs(t.mix_order) do
    redis.call('HINCRBY', KEYS[first + 4], pair, t.mix[pair])
  end
  for _, pair in ipairs(t.uc_order) do
    redis.call('HINCRBY', KEYS[first + 5], pair, t.uc[pair])
  end
end

local new = 0
local wallet_of, sessions_in_order, pairs_seen = {}, {}, {}
for _, row in ipairs(rows) do
  local id, sid, wallet, provider, score, credits, wire, use_case =
    row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]
  if redis.call('SADD', seen, id) == 1 then
    new = new + 1
    redis.call('XADD', window, 'MAXLEN', '~', window_max, '*', 'r', wire)
    if sid ~= '' then
      count(per_session, sid, provider, use_case, score, credits)
      if wallet_of[sid] == nil then sessions_in_order[#sessions_in_order + 1] = sid end
      wallet_of[sid] = wallet  -- the last row's wallet wins, as with one HSET per row
    end
    if wallet ~= '' then
      count(per_wallet, wallet, provider, use_case, score, credits)
      local pair = wallet .. '\\t' .. sid
      if sid ~= '' and not pairs_seen[pair] then
        pairs_seen[pair] = true
        if redis.call('HSETNX', wallet_session_seen, pair, 1) == 1 then
          redis.call('HINCRBY', wallet_sessions, wallet, 1)
        end
      end
    end
  end
end
write(per_session, 13)
write(per_wallet, 19)
for _, sid in ipairs(sessions_in_order) do
  redis.call('HSET', session_wallet, sid, wallet_of[sid])
end

if use_model ~= '1' then
  -- No model was used. If one was published meanwhile the caller scores again ('0');
  -- otherwise, or if the published one cannot be loaded ('2'), the rows wait in PENDING,
  -- which the next successful training drains (it publishes, then drains).
  -- (The rows' aggregates above are kept: SEEN already holds them, so a retry skips them.)
  if use_model == '0' and redis.call('EXISTS', model_current) == 1 then return {new, -1} end
  for _, row in ipairs(rows) do
    redis.call('RPUSH', pending, row[7])
  end
  return {new, 0}
end

local scored = 0
for _, f in ipairs(flag_rows) do
  local id, is_anomaly, flag, record, provider = f[1], f[2], f[3], f[4], f[5]
  if redis.call('HSETNX', flags, id, flag) == 1 then
    scored = scored + 1
    redis.call('XADD', flag_stream, 'MAXLEN', '~', flags_max, '*', 'f', flag)
    if is_anomaly == '1' then
      redis.call('HINCRBY', stats, 'anomalies', 1)
      redis.call('HINCRBY', by_provider, provider, 1)
      redis.call('XADD', anomalies, 'MAXLEN', '~', anomalies_max, '*', 'a', record)
    end
  end
end
return {new, scored}
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
]


def apply_batch(
    r: Redis,
    rows: Sequence[Row],
    flags: Sequence[dict[str, Any]] | None,
    park_anyway: bool = False,
) -> tuple[int, int]:
    """Ingest rows and publish their flags; ``flags=None`` parks the rows in PENDING.

    Returns (rows new to the ledger state, flags newly published); -1 flags means a model
    appeared while the batch was being prepared, so the caller should score and retry,
    unless ``park_anyway`` (the published model is unusable).
    """
    row_fields = [
        [
            row.id,
            row.session_id or "",
            row.wallet or "",
            row.provider,
            "" if row.score is None else repr(row.score),
            repr(row.credits_used),
            orjson.dumps(row.to_wire()).decode(),
            row.use_case or "",
        ]
        for row in rows
    ]
    flag_fields = []
    for row, flag in zip(rows, flags or (), strict=False):
        record = {
            "id": row.id,
            "ts": row.ts,
            "wallet": row.wallet,
            "session_id": row.session_id,
            "provider": row.provider,
            "model": row.model,
            "anomaly_score": flag["anomaly_score"],
            "reasons": flag["reasons"],
        }
        flag_fields.append(
            [
                row.id,
                "1" if flag["is_anomaly"] else "0",
                orjson.dumps(flag).decode(),
                orjson.dumps(record).decode() if flag["is_anomaly"] else "",
                row.provider,
            ]
        )
    argv = [
        settings().window_rows,
        keys.FLAG_STREAM_MAXLEN,
        keys.ANOMALIES_MAXLEN,
        "1" if flags is not None else "2" if park_anyway else "0",
        # Lua's cjson reads an empty JSON array as an object; both iterate as empty.
        orjson.dumps(row_fields),
        orjson.dumps(flag_fields),
    ]
    new, scored = _script(r, "apply_batch")(keys=_BATCH_KEYS, args=argv)
    return int(new), int(scored)


@cache
def _scripts() -> dict[str, str]:
    return {"apply_batch": _APPLY_BATCH}


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


def counts(r: Redis) -> dict[str, int]:
    pipe = r.pipeline(transaction=False)
    pipe.scard(keys.SEEN).hlen(keys.FLAGS).hlen(keys.REJECTED).hget(keys.STATS, "anomalies")
    pipe.llen(keys.PENDING)
    seen, scored, rejected, anomalies, pending = pipe.execute()
    return {
        "interactions_seen": seen,
        "interactions_scored": scored,
        "interactions_rejected": rejected,
        "anomalies": int(anomalies or 0),
        "pending": pending,
    }


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
    rows: list[Row]


# Per process and Redis database: the rows of the window read last, and its newest entry.
_window_reads: dict[str, _WindowRead] = {}
_window_lock = threading.Lock()


def window_rows(r: Redis, limit: int) -> list[Row]:
    """The newest ``limit`` rows of the training window, oldest first.

    A refresh reads the window once per model and once more for the export. The stream only
    grows at its end and is trimmed at its start, so when the newest entry read last time is
    still there, the newest rows now are those read then followed by the entries added
    since, and only those are read and parsed. Otherwise (first read, a larger ``limit``,
    more new entries than ``limit``, or a stream that was trimmed past it or recreated) the
    window is read whole.
    """
    if limit <= 0:
        return []
    where = repr(sorted(r.connection_pool.connection_kwargs.items()))
    with _window_lock:
        last = _window_reads.get(where)
        if last is not None and limit <= last.limit:
            pipe = r.pipeline(transaction=False)
            pipe.xrange(keys.WINDOW, min=last.last_id, max=last.last_id)
            pipe.xrange(keys.WINDOW, min=b"(" + last.last_id, count=limit + 1)
            pipe.xlen(keys.WINDOW)
            still_there, added, length = pipe.execute()
            if still_there and len(added) <= limit:
                if added:
                    new_rows = [Row.from_wire(orjson.loads(f[b"r"])) for _, f in added]
                    last.rows = (last.rows + new_rows)[-last.limit :]
                    last.last_id = added[-1][0]
                # A new list (callers may change it), without what was trimmed meanwhile.
                return last.rows[-min(limit, length) :]
        entries = r.xrevrange(keys.WINDOW, count=limit)
        rows = [Row.from_wire(orjson.loads(fields[b"r"])) for _, fields in reversed(entries)]
        if entries:
            _window_reads[where] = _WindowRead(limit, entries[0][0], rows)
        else:
            _window_reads.pop(where, None)
        return list(rows)
