"""The two writes that must be exactly once, each one Lua script that Redis runs whole or
not at all: a batch of rows (``apply_batch``, batch.lua) and score events (``apply_scores``,
scores.lua). A batch delivered twice leaves the state as it was after once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from thronos_analytics.core import aggregates, keys
from thronos_analytics.core.contract import Row, ScoreEvent
from thronos_analytics.core.settings import settings

_APPLY_BATCH = (Path(__file__).parent / "batch.lua").read_text()



def _with_keys(script: str, name: str, layout: Sequence[tuple[str | None, str]]) -> str:
    """``script`` with ``local <name> = KEYS[<i>]`` for each key of ``layout`` it names,
    after its line "-- KEYS, as <name> names them": positions follow the layout."""
    marker = script.index("\n", script.index(f"-- KEYS, as {name} names them")) + 1
    named = "".join(f"local {n} = KEYS[{i}]\n" for i, (n, _) in enumerate(layout, 1) if n)
    return script[:marker] + named + script[marker:]


_MEASURES = aggregates.MEASURES
# The script's KEYS, with the names its Lua gives them. The aggregates' hashes, one per scope
# and measure of core/aggregates.py, are unnamed: _totals addresses them by index (_AGG_KEY).
_BATCH_LAYOUT: list[tuple[str | None, str]] = [
    ("seen", keys.SEEN),
    ("flags", keys.FLAGS),
    ("flag_stream", keys.FLAG_STREAM),
    ("anomalies", keys.ANOMALIES),
    ("window", keys.WINDOW),
    ("pending", keys.PENDING),
    ("stats", keys.STATS),
    ("by_provider", keys.ANOMALIES_BY_PROVIDER),
    ("model_current", keys.model_current("anomaly")),
    ("session_wallet", keys.SESSION_WALLET),
    ("wallet_sessions", keys.WALLET_SESSIONS),
    ("wallet_session_seen", keys.WALLET_SESSION_SEEN),
    *((None, keys.agg(scope, m.name)) for scope, _ in aggregates.SCOPES for m in _MEASURES),
    ("scores", keys.SCORES),
    ("join_rows", keys.JOIN_ROWS),
    ("dropped", keys.DROPPED_FIELDS),
]
_BATCH_KEYS = [key for _, key in _BATCH_LAYOUT]
# Per scope, its Row field and Lua's 1-based KEYS index of its hash of each measure.
_SCOPE_KEYS = [
    (attr, [_BATCH_KEYS.index(keys.agg(scope, m.name)) + 1 for m in _MEASURES])
    for scope, attr in aggregates.SCOPES
]
_MEASURE_PLAN = [(m, m.integer, m.per) for m in _MEASURES]


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
    """The aggregates of ``rows`` (core/aggregates.py): increments per (KEYS index, field),
    each session's wallet, the (wallet, session) pairs, the unreadable sources and the
    joined events."""
    counts: dict[tuple[int, str], int | float] = {}  # counts: ints, as HINCRBY needs
    sums: dict[tuple[int, str], float] = {}
    session_wallet: dict[str, str] = {}
    pairs: dict[str, str] = {}
    dropped: dict[str, int] = {}
    for row in rows:
        if row.dropped:
            for source in row.dropped.split(","):
                dropped[source] = dropped.get(source, 0) + 1
        # What the row adds to each measure, and the suffix of its field ("\t<value>").
        adds = [
            (i, integer, "" if per is None else "\t" + getattr(row, per), amount)
            for i, (m, integer, per) in enumerate(_MEASURE_PLAN)
            if (amount := m.amount(row)) is not None
        ]
        for attr, index in _SCOPE_KEYS:
            who = getattr(row, attr)
            if not who:
                continue
            for i, integer, suffix, amount in adds:
                key = (index[i], who + suffix)
                if integer:
                    counts[key] = counts.get(key, 0) + amount
                else:
                    sums[key] = sums.get(key, 0.0) + amount
        if row.session_id:
            session_wallet[row.session_id] = row.wallet or ""  # the last row's wallet wins
            if row.wallet:
                pairs[f"{row.wallet}\t{row.session_id}"] = row.wallet
    return {
        "i": [[k, field, n] for (k, field), n in counts.items()],
        "f": [[k, field, repr(total)] for (k, field), total in sums.items()],
        "sw": [[sid, wallet] for sid, wallet in session_wallet.items()],
        "p": [[wallet, pair] for pair, wallet in pairs.items()],
        "d": [[source, n] for source, n in dropped.items()],
        "j": n_joined,
    }


_APPLY_SCORES = (Path(__file__).parent / "scores.lua").read_text()

# An event moves its interaction's score between the score's sum and count, and its use
# case between the calls per use case: <s|w>_sum, _n and _uc in the script, per scope.
_SCORES_LAYOUT: list[tuple[str | None, str]] = [
    ("events", keys.SCORE_EVENTS),
    ("scores", keys.SCORES),
    ("join_rows", keys.JOIN_ROWS),
    ("seen", keys.SEEN),
    ("stats", keys.STATS),
    *(
        (f"{scope[0]}_{short}", keys.agg(scope, measure))
        for scope, _ in aggregates.SCOPES
        for short, measure in (("sum", "score_sum"), ("n", "score_n"), ("uc", "uc"))
    ),
]
_SCORES_KEYS = [key for _, key in _SCORES_LAYOUT]


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
    return {
        "apply_batch": _with_keys(_APPLY_BATCH, "_BATCH_LAYOUT", _BATCH_LAYOUT),
        "apply_scores": _with_keys(_APPLY_SCORES, "_SCORES_LAYOUT", _SCORES_LAYOUT),
    }


def _script(r: Redis, name: str) -> Any:
    # register_script caches the SHA and falls back to EVAL after a Redis restart.
    return r.register_script(_scripts()[name])


