"""Reads and writes of the shared state in Redis. Producers and workers both go through here.

The one write that must be exactly-once is :func:`apply_batch`: a Lua script, so Redis runs
it whole or not at all, and a batch delivered twice leaves the state as it was after once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
import redis
from redis import Redis  # re-exported: other modules annotate with store.Redis

from analytics.contract import Rejection, Row
from thronos_analytics import keys
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
local n_rows, n_flags = tonumber(ARGV[1]), tonumber(ARGV[2])
local window_max, flags_max, anomalies_max = ARGV[3], ARGV[4], ARGV[5]
local seen, flags, flag_stream, anomalies = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, pending, stats, by_provider = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local model_current, session_wallet = KEYS[9], KEYS[10]
local wallet_sessions, wallet_session_seen = KEYS[11], KEYS[12]
-- KEYS[13..17] per session, KEYS[18..22] per wallet: calls, score_sum, score_n, credits, mix

local function count(first, who, provider, score, credits)
  redis.call('HINCRBY', KEYS[first], who, 1)
  if score ~= '' then
    redis.call('HINCRBYFLOAT', KEYS[first + 1], who, score)
    redis.call('HINCRBY', KEYS[first + 2], who, 1)
  end
  redis.call('HINCRBYFLOAT', KEYS[first + 3], who, credits)
  redis.call('HINCRBY', KEYS[first + 4], who .. '\\t' .. provider, 1)
end

local new = 0
local at = 6
for i = 1, n_rows do
  local id, sid, wallet, provider, score, credits, wire =
    ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6], ARGV[at + 7]
  at = at + 7
  if redis.call('SADD', seen, id) == 1 then
    new = new + 1
    redis.call('XADD', window, 'MAXLEN', '~', window_max, '*', 'r', wire)
    if sid ~= '' then
      count(13, sid, provider, score, credits)
      redis.call('HSET', session_wallet, sid, wallet)
    end
    if wallet ~= '' then
      count(18, wallet, provider, score, credits)
      local pair = wallet .. '\\t' .. sid
      if sid ~= '' and redis.call('HSETNX', wallet_session_seen, pair, 1) == 1 then
        redis.call('HINCRBY', wallet_sessions, wallet, 1)
      end
    end
  end
end

if ARGV[6] ~= '1' then
  -- No model was used. If one was published meanwhile the caller scores again; otherwise
  -- the rows wait in PENDING, which the first training drains (it publishes, then drains).
  if redis.call('EXISTS', model_current) == 1 then return {new, -1} end
  at = 6
  for i = 1, n_rows do
    redis.call('RPUSH', pending, ARGV[at + 7])
    at = at + 7
  end
  return {new, 0}
end

local scored = 0
for i = 1, n_flags do
  local id, is_anomaly, flag, record, provider =
    ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
  at = at + 5
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
    r: Redis, rows: Sequence[Row], flags: Sequence[dict[str, Any]] | None
) -> tuple[int, int]:
    """Ingest rows and publish their flags; ``flags=None`` parks the rows in PENDING.

    Returns (rows new to the ledger state, flags newly published); -1 flags means a model
    appeared while the batch was being prepared, so the caller should score and retry.
    """
    argv: list[Any] = [
        len(rows),
        len(flags or ()),
        settings().window_rows,
        keys.FLAG_STREAM_MAXLEN,
        keys.ANOMALIES_MAXLEN,
        "1" if flags is not None else "0",
    ]
    for row in rows:
        argv += [
            row.id,
            row.session_id or "",
            row.wallet or "",
            row.provider,
            "" if row.score is None else repr(row.score),
            repr(row.credits_used),
            orjson.dumps(row.to_wire()),
        ]
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
        argv += [
            row.id,
            "1" if flag["is_anomaly"] else "0",
            orjson.dumps(flag),
            orjson.dumps(record) if flag["is_anomaly"] else "",
            row.provider,
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
    """Count rejections once each (keyed by source, line and content) and stream them."""
    entries = {}
    for rej in rejections:
        digest = hashlib.sha1(rej.raw.encode("utf-8", "replace")).hexdigest()[:12]
        entries[f"{source}:{rej.line}:{digest}"] = orjson.dumps(rej.to_json(source))
    if r is None or not entries:
        return 0
    pipe = r.pipeline(transaction=False)
    for key, value in entries.items():
        pipe.hsetnx(keys.REJECTED, key, value)
    added = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for (_, value), new in zip(entries.items(), added, strict=True):
        if new:
            pipe.xadd(keys.REJECTED_STREAM, {"r": value}, maxlen=keys.REJECTED_STREAM_MAXLEN)
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
    pipe.set(keys.model_blob(name, version), blob)
    pipe.hset(keys.model_versions(name), version, orjson.dumps(info))
    pipe.set(keys.model_current(name), version)
    pipe.delete(keys.model_failure(name))
    pipe.execute()
    return version


def current_model(r: Redis, name: str) -> tuple[str, bytes] | None:
    version = r.get(keys.model_current(name))
    if version is None:
        return None
    blob = r.get(keys.model_blob(name, version.decode()))
    return (version.decode(), blob) if blob is not None else None


def model_info(r: Redis, name: str) -> dict[str, Any] | None:
    version = r.get(keys.model_current(name))
    if version is None:
        return None
    raw = r.hget(keys.model_versions(name), version)
    return orjson.loads(raw) if raw else None


def window_rows(r: Redis, limit: int) -> list[Row]:
    """The newest ``limit`` rows of the training window, oldest first."""
    entries = r.xrevrange(keys.WINDOW, count=limit)
    rows = [Row.from_wire(orjson.loads(fields[b"r"])) for _, fields in reversed(entries)]
    return rows
