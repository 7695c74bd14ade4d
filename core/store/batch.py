"""The writes that must be exactly once, each one Lua script per shard that Redis runs
whole or not at all: a batch of rows (``apply_batch``, batch.lua), score events
(``apply_scores``, scores.lua) and the sessions each wallet has had (sessions.lua). A batch
delivered twice leaves the state as it was after once. And the live context a batch is
scored with (``provider_context``)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from redis import Redis

from thronos_analytics.core import aggregates, keys
from thronos_analytics.core.contract import Row, ScoreEvent
from thronos_analytics.core.settings import settings
from thronos_analytics.core.store.records import pack_flag, unpack_aggregate
from thronos_analytics.core.store.shards import (
    Ident,
    Shard,
    all_shards,
    by_shard,
    hash_values,
    ident,
    idents_of,
    in_parallel,
    read_fields,
    run_script,
    session_bucket,
)

_HERE = Path(__file__).parent

# --- the scripts, with core/keys.py's names and templates injected -----------------------

# Key templates as Lua functions of their parts: ix(day, bucket) -> the shard's key.
_TEMPLATES = {
    "ix": keys.IX,
    "join": keys.JOIN,
    "orphans": keys.ORPHANS,
    "events": keys.EVENTS,
    "reasons": keys.REASONS,
    "session_agg": keys.SESSION_AGG,
    "session_seen": keys.SESSION_SEEN,
    "late_set": keys.LATE,
}
_PART = re.compile(r"\{(\w+)\}")


def _lua_function(name: str, template: str) -> str:
    parts = _PART.findall(template)
    pieces = [f"'{text}'" if i % 2 == 0 else text for i, text in enumerate(_PART.split(template))]
    body = " .. ".join(["prefix", *(p for p in pieces if p != "''")])
    return f"local function {name}({', '.join(parts)}) return {body} end\n"


def _lua_key_functions() -> str:
    """The templates' functions, and ``day_keys(day, bucket)`` and ``day_wide_keys(day)``:
    every key that goes with a day (those with ``{day}``), which leaves with it."""
    out = "".join(_lua_function(name, t) for name, t in _TEMPLATES.items())
    parts = {name: set(_PART.findall(t)) for name, t in _TEMPLATES.items()}
    per_bucket = [f"{n}(day, bucket)" for n, p in parts.items() if p == {"day", "bucket"}]
    per_day = [f"{n}(day)" for n, p in parts.items() if p == {"day"}]
    out += f"local function day_keys(day, bucket) return {{{', '.join(per_bucket)}}} end\n"
    out += f"local function day_wide_keys(day) return {{{', '.join(per_day)}}} end\n"
    return out


def _lua_measures() -> str:
    """core/aggregates.py's measures as aggregates.lua needs them, then aggregates.lua."""
    positions = ", ".join(f"{m.name} = {i}" for i, m in enumerate(aggregates.MEASURES, 1))
    per = ", ".join("true" if m.per is not None else "false" for m in aggregates.MEASURES)
    out = f"local MEASURE = {{{positions}}}\nlocal PER = {{{per}}}\n"
    out += f"local N_MEASURES = {len(aggregates.MEASURES)}\n"
    return out + (_HERE / "aggregates.lua").read_text()


def _with_keys(script: str, name: str, layout: Sequence[tuple[str, str]]) -> str:
    """``script`` with ``local <name> = KEYS[<i>]`` for each key of ``layout`` after its line
    "-- KEYS, as <name> names them", then the key templates' functions and aggregates.lua."""
    marker = script.index("\n", script.index(f"-- KEYS, as {name} names them")) + 1
    named = "".join(f"local {n} = KEYS[{i}]\n" for i, (n, _) in enumerate(layout, 1))
    named += "local prefix = ARGV[1]\n"  # every script's first argument
    return script[:marker] + named + _lua_key_functions() + _lua_measures() + script[marker:]


# The shard keys each script declares (all in the shard's slot), with their Lua names.
_BATCH_LAYOUT = [
    ("stats", keys.STATS),
    ("window", keys.WINDOW),
    ("flag_stream", keys.FLAG_STREAM),
    ("anomalies", keys.ANOMALIES),
    ("pending", keys.PENDING),
    ("by_provider", keys.ANOMALIES_BY_PROVIDER),
    ("dropped", keys.DROPPED_FIELDS),
    ("anomaly_model", keys.ANOMALY_MODEL),
    ("clock_key", keys.CLOCK),
    ("days_key", keys.DAYS),
    ("orphan_version", keys.ORPHAN_VERSION),
    ("waiting", keys.WAITING),
    ("wallet_agg", keys.WALLET_AGG),
]
_SCORES_LAYOUT = [
    ("stats", keys.STATS),
    ("clock_key", keys.CLOCK),
    ("days_key", keys.DAYS),
    ("orphan_version", keys.ORPHAN_VERSION),
    ("wallet_agg", keys.WALLET_AGG),
]
_SESSIONS_LAYOUT = [
    ("clock_key", keys.CLOCK),
    ("days_key", keys.DAYS),
    ("wallet_agg", keys.WALLET_AGG),
]


@cache
def _scripts() -> dict[str, str]:
    read = lambda name: (_HERE / f"{name}.lua").read_text()  # noqa: E731
    return {
        "batch": _with_keys(read("batch"), "_BATCH_LAYOUT", _batch_layout()),
        "scores": _with_keys(read("scores"), "_SCORES_LAYOUT", _SCORES_LAYOUT),
        "sessions": _with_keys(read("sessions"), "_SESSIONS_LAYOUT", _SESSIONS_LAYOUT),
    }


def _run(
    r: Redis, name: str, shard: Shard, layout: Sequence[tuple[str, str]], args: list[Any]
) -> Any:
    names = [shard.prefix + key for _, key in layout]
    return run_script(r, _scripts()[name], names, [shard.prefix, *args])


def _run_each(
    r: Redis, name: str, layout: Sequence[tuple[str, str]], calls: Sequence[tuple[Shard, list]]
) -> list[Any]:
    """:func:`_run` for several shards, each on its own (:func:`shards.in_parallel`)."""
    return in_parallel([partial(_run, r, name, shard, layout, args) for shard, args in calls])


def _batch_layout() -> list[tuple[str, str]]:
    """_BATCH_LAYOUT with this minute's counter of scored rows, last."""
    return [*_BATCH_LAYOUT, ("scored_this_minute", keys.scored_in_minute(int(time.time() // 60)))]


# --- score events joined to rows --------------------------------------------------------


class JoinsChanged(Exception):
    """A score event for one of the batch's rows arrived after :func:`read_joins`."""


@dataclass
class Joins:
    """The newest waiting score event of each row that has one, and where it waits."""

    events: dict[str, bytes] = field(default_factory=dict)  # id -> [ts, id, score, uc]
    days: dict[str, int] = field(default_factory=dict)  # id -> the orphan hash's day
    versions: dict[int, bytes] = field(default_factory=dict)  # shard -> orphan version


def read_joins(r: Redis, rows: Sequence[Row]) -> Joins:
    """The score events that came before their rows, as the shards hold them now."""
    shards = all_shards()
    pipe = r.pipeline(transaction=False)
    for shard in shards:
        pipe.get(shard.prefix + keys.ORPHAN_VERSION)
        pipe.hget(shard.prefix + keys.STATS, "orphans")
    replies = pipe.execute()
    joins = Joins(versions={s.index: replies[2 * s.index] or b"" for s in shards})
    waiting = {s.index for s in shards if int(replies[2 * s.index + 1] or 0) > 0}
    if not rows or not waiting:
        return joins
    where = [(row, at) for row in rows if (at := ident(row.id, None)).shard in waiting]
    found = hash_values(r, keys.ORPHANS, [at for _, at in where])
    for (row, _), hit in zip(where, found, strict=True):
        if hit is not None:
            joins.days[row.id], joins.events[row.id] = hit
    return joins


def joined(rows: Sequence[Row], events: dict[str, bytes]) -> list[Row]:
    """``rows`` with their score events applied (:meth:`ScoreEvent.fill`)."""
    if not events:
        return list(rows)
    return [_fill(row, events[row.id]) if row.id in events else row for row in rows]


def _fill(row: Row, stored: bytes) -> Row:
    ts, event_id, score, use_case = orjson.loads(stored)
    return ScoreEvent(event_id, row.id, ts or None, score, use_case).fill(row)


def scores_value(event: ScoreEvent) -> bytes:
    """An event as the state keeps it: what ordering and joining need, [ts, id, score, uc]."""
    return orjson.dumps([event.ts or 0, event.id, event.score, event.use_case])


# --- live context for scoring -----------------------------------------------------------

_MIX = aggregates.NAMES.index("mix")  # calls per provider


def provider_context(
    r: Redis, rows: Sequence[Row], providers: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, its session's and wallet's calls per provider other than the row itself, as
    the state holds them now plus the batch's rows not yet counted: the history a live row
    is scored with (``AnomalyScorer.flag``'s ``context``). As arrays: ``counts[i, 0]`` and
    ``counts[i, 1]`` are row i's session's and wallet's calls per provider of ``providers``,
    and ``given[i]`` says whether the row has a session and a wallet."""
    p_index = {p: j for j, p in enumerate(providers)}
    sessions: dict[str, int] = {}
    wallets: dict[str, int] = {}
    s_of = [
        sessions.setdefault(row.session_id, len(sessions)) if row.session_id else -1 for row in rows
    ]
    w_of = [wallets.setdefault(row.wallet, len(wallets)) if row.wallet else -1 for row in rows]
    p_of = [p_index.get(row.provider, -1) for row in rows]
    at = idents_of(rows)
    seen = [hit is not None for hit in hash_values(r, keys.IX, at)]
    # A session's earlier calls are on its rows' days or the day before: only those are
    # read, in every shard (a session's rows spread over them). Wallets are kept for good.
    session_days: dict[tuple[int, int], set[str]] = defaultdict(set)
    for row, where in zip(rows, at, strict=True):
        if row.session_id:
            bucket = session_bucket(row.session_id)
            session_days[(where.day, bucket)].add(row.session_id)
            session_days[(where.day - 1, bucket)].add(row.session_id)
    # Per group [day (-1: the wallets), bucket, names]: one read per shard.
    groups = [(-1, 0, sorted(wallets))] if wallets else []
    groups += [(day, bucket, sorted(names)) for (day, bucket), names in session_days.items()]
    requests = [
        (shard, [(_context_key(shard, day, bucket), names) for day, bucket, names in groups])
        for shard in all_shards()
    ]
    tables = (np.zeros((len(sessions), len(providers))), np.zeros((len(wallets), len(providers))))
    for found in read_fields(r, requests):
        for (day, _, names), records in zip(groups, found, strict=True):
            table, index = (tables[1], wallets) if day < 0 else (tables[0], sessions)
            for who, record in zip(names, records, strict=True):
                if record is not None:
                    calls = table[index[who]]
                    for p, n in unpack_aggregate(record)[0][_MIX].items():
                        if (j := p_index.get(p)) is not None:
                            calls[j] += n
    new_ids: set[str] = set()
    for i, (row, was_seen) in enumerate(zip(rows, seen, strict=True)):
        if was_seen or row.id in new_ids:
            continue
        new_ids.add(row.id)
        if p_of[i] >= 0:
            if s_of[i] >= 0:
                tables[0][s_of[i], p_of[i]] += 1
            if w_of[i] >= 0:
                tables[1][w_of[i], p_of[i]] += 1
    counts = np.zeros((len(rows), 2, len(providers)))
    given = np.zeros((len(rows), 2), dtype=np.bool_)
    for k, of in enumerate((np.array(s_of, dtype=np.intp), np.array(w_of, dtype=np.intp))):
        given[:, k] = has = of >= 0
        counts[has, k] = tables[k][of[has]]
    # The row itself is counted: take it off.
    own = np.array(p_of, dtype=np.intp)
    mine = np.nonzero(own >= 0)[0]
    counts[mine, :, own[mine]] = np.maximum(counts[mine, :, own[mine]] - 1, 0.0)
    return counts, given


def _context_key(shard: Shard, day: int, bucket: int) -> str:
    """The hash of a context group: the wallets' (day -1), or a day's sessions' bucket."""
    if day < 0:
        return shard.prefix + keys.WALLET_AGG
    return shard.key(keys.SESSION_AGG, day=day, bucket=bucket)


# --- a batch of rows --------------------------------------------------------------------

# Each shard's clock (its newest day) as last heard: a batch assumes it, and the script
# corrects a wrong one. It never passes tomorrow by the wall clock (_ShardBatch.apply).
_clocks: dict[str, int] = {}  # shard prefix -> day
# ARGV before the new rows' id hashes: the prefix, 10 settings, the plan, window, flags.
_FIXED_ARGS = 13


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
    unless ``park_anyway`` (the published model is unusable). Rows older than the
    retention horizon are counted as late (``counts()["interactions_late"]``), once, and
    nothing else.

    Each shard's rows are sent as new (summed here, written with a few calls per shard)
    unless its state holds them; the script names any it does hold and this sends again
    without them. A repeated id within the batch counts once.
    """
    joins = joins or Joins()
    use_model = "1" if flags is not None else "2" if park_anyway else "0"
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.id, i)
    unique = list(first.values())
    idents = dict(zip(unique, idents_of([rows[i] for i in unique]), strict=True))
    shards = all_shards()
    batches = [
        _ShardBatch(shards[shard], rows, flags, members, idents, use_model, joins)
        for shard, members in sorted(by_shard(unique, lambda i: idents[i].shard).items())
    ]
    # Each shard's script is atomic and idempotent on its own: on a cluster they run at once.
    # A shard that found a model published meanwhile wrote nothing; those that did not are
    # told of their rows as old when the caller scores the batch and sends it again.
    applied = in_parallel([partial(batch.apply, r) for batch in batches])
    new = sum(n for n, _ in applied)
    if any(s == -1 for _, s in applied):
        return new, -1
    _count_sessions(r, [rows[i] for i in unique])
    return new, sum(s for _, s in applied)


@dataclass
class _ShardBatch:
    shard: Shard
    rows: Sequence[Row]
    flags: Sequence[dict[str, Any]] | None
    members: list[int]
    idents: dict[int, Ident]
    use_model: str
    joins: Joins

    def apply(self, r: Redis) -> tuple[int, int]:
        config = settings()
        # One row with a clock error must not make every other row late.
        tomorrow = keys.day(time.time()) + 1
        newest = max(min(self.idents[i].day, tomorrow) for i in self.members)
        clock = _clocks.get(self.shard.prefix, newest)
        old: set[int] = set()
        while True:
            cutoff = max(clock, newest) - config.retention_days
            plan, args = self._plan(cutoff, old)
            reply = _run(
                r,
                "batch",
                self.shard,
                _batch_layout(),
                [
                    max(-(-config.window_rows // len(all_shards())), 1),
                    max(keys.FLAG_STREAM_MIN_BATCHES, keys.FLAG_STREAM_FLAGS // len(self.members)),
                    keys.ANOMALIES_MAXLEN,
                    self.use_model,
                    newest,
                    config.retention_days,
                    cutoff,
                    keys.BUCKETS // len(all_shards()),
                    self.joins.versions.get(self.shard.index, b""),
                    *args,
                ],
            )
            if reply[0] == b"clock":
                clock = _clocks[self.shard.prefix] = int(reply[1])
            elif reply[0] == b"clash":
                old |= {plan[int(i)] for i in reply[1]}
            elif reply[0] == b"rejoin":
                raise JoinsChanged
            else:
                _clocks[self.shard.prefix] = max(clock, newest)
                return int(reply[0]), int(reply[1])

    def _plan(self, cutoff: int, old: set[int]) -> tuple[list[int], list[Any]]:
        """The new rows in the order the script reads them, and the script's arguments
        after the fixed ones (ARGV 11 on)."""
        rows, flags, idents = self.rows, self.flags, self.idents
        late = [i for i in self.members if idents[i].day <= cutoff and i not in old]
        gone = set(late)
        fresh = sorted(
            (i for i in self.members if i not in old and i not in gone),
            key=lambda i: (idents[i].day, idents[i].bucket),
        )
        stale = [i for i in self.members if i in old]
        groups: list[list[int]] = []
        for i in fresh:
            d, b = idents[i].day, idents[i].bucket
            if groups and groups[-1][0] == d and groups[-1][1] == b:
                groups[-1][2] += 1
            else:
                groups.append([d, b, 1])
        events = self.joins.events
        fresh_rows = [rows[i] for i in fresh]
        plan: dict[str, Any] = _totals(joined(fresh_rows, events), [idents[i].day for i in fresh])
        plan.update(
            g=groups,
            days=sorted({idents[i].day for i in fresh}),
            no=len(stale),
        )
        jr, oh = [], []
        for i in fresh:
            row, at = rows[i], idents[i]
            event = orjson.loads(events[row.id]) if row.id in events else [None] * 4
            if row.id in events:
                oh.append([self.joins.days[row.id], at.bucket, at.field])
            if row.score is None or row.use_case is None or row.id in events:
                bucket = session_bucket(row.session_id) if row.session_id else 0
                record = [row.session_id, row.wallet, row.score, row.use_case, *event]
                record.append(bucket)  # where scores.lua finds the session's aggregates
                jr.append([at.day, at.bucket, at.field, orjson.dumps(record).decode()])
        plan.update(jr=jr, oh=oh, j=len(oh))
        # Old rows (seen before) and late ones (which their leaving day may still hold)
        # get their flag, or wait in PENDING again, if the shard holds them unflagged.
        # Flag records are binary, which JSON cannot carry: each names its ARGV instead.
        later = stale + late
        first = _FIXED_ARGS + 2 * len(fresh) + 1
        an: list[list[Any]] = []
        olds: list[list[Any]] = []
        lates: list[list[Any]] = []
        for k, i in enumerate(later):
            at = idents[i]
            entry = [at.day, at.bucket, at.field, first + k, False, False]
            if flags is not None:
                entry[4] = orjson.dumps(flags[i])
                if flags[i]["is_anomaly"]:
                    entry[5] = _anomaly(rows[i], flags[i], at)
            (olds if k < len(stale) else lates).append(entry)
        if flags is not None:
            an = [_anomaly(rows[i], flags[i], idents[i]) for i in fresh if flags[i]["is_anomaly"]]
            values: list[Any] = [pack_flag(flags[i]) for i in fresh + later]
            # In the batch's order, as the window: ``flags --last`` prints them so.
            streamed = b"[" + b",".join(orjson.dumps(flags[i]) for i in sorted(fresh)) + b"]"
        else:
            values = [orjson.dumps(rows[i].to_wire()) for i in fresh + later]
            streamed = b""
        plan["late"] = lates
        plan.update(an=an, old=olds)
        return fresh, [
            orjson.dumps(plan, default=bytes.decode),
            # The window keeps rows as the ledger has them; readers join events (window_rows).
            orjson.dumps([rows[i].to_wire() for i in sorted(fresh)]),  # in the batch's order
            streamed,
            *(idents[i].field for i in fresh),
            *values,
        ]


def _anomaly(row: Row, flag: dict[str, Any], at: Ident) -> list[Any]:
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
    return [
        row.provider,
        orjson.dumps(record).decode(),
        at.day,
        at.field,
        orjson.dumps(flag["reasons"]).decode(),
    ]


def _compile_adder() -> Any:
    """``add(row, s, w)``: what ``row`` adds to each measure of core/aggregates.py
    (``Measure.amount``), into its session's and its wallet's delta (store.records' order;
    None for a row without one), written out per measure at import. The generic loop cost
    half of a batch's Python."""
    body = ["def add(row, s, w):"]
    for j, m in enumerate(aggregates.MEASURES):
        has = []
        if m.per is not None:
            body.append(f"    p{j} = row.{m.per}")
            has.append(f'p{j} is not None and p{j} != ""')
        if m.of is not None:
            body.append(f"    v{j} = row.{m.of}")
            has.append(f'v{j} is not None and v{j} != ""')
        amount = "1" if m.of is None or m.integer else f"v{j}"
        indent = "    "
        if has:
            body.append(f"    if {' and '.join(has)}:")
            indent += "    "
        for delta in ("s", "w"):
            body.append(f"{indent}if {delta} is not None:")
            if m.per is not None:
                body.append(f"{indent}    c = {delta}[{j}]")
                body.append(f"{indent}    c[p{j}] = c.get(p{j}, 0) + 1")
            else:
                body.append(f"{indent}    {delta}[{j}] += {amount}")
    namespace: dict[str, Any] = {}
    exec("\n".join(body), namespace)  # noqa: S102 - source built above from MEASURES
    return namespace["add"]


_add = _compile_adder()


def _nothing() -> list[Any]:
    """A delta that adds nothing yet: zero, or an empty map per value, for each measure."""
    return [{} if m.per is not None else 0 for m in aggregates.MEASURES]


def _totals(rows: Sequence[Row], days: Sequence[int]) -> dict[str, Any]:
    """The aggregates of ``rows`` (core/aggregates.py) as the script adds them: a delta
    per session and day (``a``: day, bucket, session, delta and keys.wallet_ref of the
    session's wallet) and
    per wallet (``w``), and the unreadable sources (``d``)."""
    sessions: dict[tuple[int, str], list[Any]] = {}
    wallets: dict[str, list[Any]] = {}
    dropped: dict[str, int] = defaultdict(int)
    for row, day in zip(rows, days, strict=True):
        if row.dropped:
            for source in row.dropped.split(","):
                dropped[source] += 1
        s = w = None
        if row.session_id:
            s = sessions.get((day, row.session_id))
            if s is None:
                s = sessions[(day, row.session_id)] = [*_nothing(), None]
            if row.wallet:
                s[-1] = keys.wallet_ref(row.wallet)  # the last row's wins
        if row.wallet:
            w = wallets.get(row.wallet)
            if w is None:
                w = wallets[row.wallet] = _nothing()
        _add(row, s, w)
    return {
        "a": [[day, session_bucket(sid), sid, delta] for (day, sid), delta in sessions.items()],
        "w": [[wallet, delta] for wallet, delta in wallets.items()],
        "d": list(map(list, dropped.items())),
    }


def _count_sessions(r: Redis, rows: Sequence[Row]) -> None:
    """Count each (wallet, session) once, in the shard of the pair: a session's rows spread
    over shards, so no batch script can tell whether it is new. Idempotent."""
    pairs = {
        (row.wallet, row.session_id): keys.day(row.ts)
        for row in rows
        if row.session_id and row.wallet
    }
    at = {pair: ident(f"{pair[0]}\t{pair[1]}", None) for pair in pairs}
    shards, horizon = all_shards(), settings().retention_days
    calls = []
    for shard, items in by_shard(pairs.items(), lambda p: at[p[0]].shard).items():
        flat = [[pair[0], at[pair].bucket, at[pair].field, day] for pair, day in items]
        calls.append((shards[shard], [horizon, orjson.dumps(flat)]))
    _run_each(r, "sessions", _SESSIONS_LAYOUT, calls)


# --- score events -----------------------------------------------------------------------


def apply_scores(r: Redis, events: Sequence[ScoreEvent]) -> int:
    """Apply score events exactly once each, whether their interactions came before or
    not; returns how many were new."""
    if not events:
        return 0
    shards = all_shards()
    applied = 0
    for shard, group in by_shard(events, lambda e: ident(e.interaction_id, None).shard).items():
        payload = []
        for e in group:
            target, mark = ident(e.interaction_id, None), ident(e.id, e.ts)
            day = keys.UNDATED if e.ts is None else mark.day
            payload.append(
                [
                    target.bucket,
                    target.field,
                    mark.bucket,
                    mark.field,
                    day,
                    scores_value(e).decode(),
                    e.ts or 0,
                    e.id,
                    e.score,
                    e.use_case,
                ]
            )
        args = [settings().retention_days, keys.day(time.time()), orjson.dumps(payload)]
        applied += int(_run(r, "scores", shards[shard], _SCORES_LAYOUT, args))
    return applied
