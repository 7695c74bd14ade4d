"""Which shard, day and bucket each interaction's state is kept in, and reads across them.

See ``core/keys.py`` for the layout. A read that knows a row's ``ts`` goes to its day's
bucket; one that knows only an id looks in every day the shard still holds.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
from redis import Redis
from redis.commands.core import Script

from thronos_analytics.core import keys
from thronos_analytics.core.settings import settings

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    prefix: str

    def key(self, template: str, **parts: Any) -> str:
        return self.prefix + template.format(**parts)


@cache
def _shards(n: int) -> tuple[Shard, ...]:
    return tuple(Shard(i, keys.shard_prefix(i, n)) for i in range(n))


def all_shards() -> tuple[Shard, ...]:
    config = settings()
    return _shards(config.cluster_shards if config.redis_cluster else 1)


class Ident(NamedTuple):
    shard: int
    bucket: int
    field: str
    day: int


def ident(interaction_id: str, ts: float | None) -> Ident:
    """Where the state of ``interaction_id`` (written at ``ts``) is kept; day -1: unknown."""
    return _ident(interaction_id, -1 if ts is None else keys.day(ts), len(all_shards()))


def idents_of(rows: Iterable[Any]) -> list[Ident]:
    """:func:`ident` of each row (anything with ``id`` and ``ts``)."""
    return idents_at((row.id, row.ts) for row in rows)


def idents_at(pairs: Iterable[tuple[str, float]]) -> list[Ident]:
    """:func:`ident` of each (id, ts)."""
    n, day = len(all_shards()), keys.day
    return [_ident(interaction_id, day(ts), n) for interaction_id, ts in pairs]


# A worker asks for each row's ident up to four times a batch (its context, its joins, its
# batch, its session pair), and a producer again for each receipt it checks.
@lru_cache(maxsize=1 << 15)
def _ident(interaction_id: str, day: int, n: int) -> Ident:
    return Ident(*keys.ident(interaction_id, n), day)


def session_bucket(session_id: str) -> int:
    """The bucket of a session's aggregate record in each day (keys.SESSION_AGG)."""
    return _bucket(session_id, len(all_shards()))


@lru_cache(maxsize=1 << 16)  # a batch asks once per row, and a session has many rows
def _bucket(session_id: str, n: int) -> int:
    return keys.ident(session_id, n)[1]


def by_shard(items: Iterable[T], shard_of: Callable[[T], int]) -> dict[int, list[T]]:
    groups: dict[int, list[T]] = defaultdict(list)
    for item in items:
        groups[shard_of(item)].append(item)
    return groups


def days_held(r: Redis, shards: Sequence[Shard] | None = None) -> dict[int, list[int]]:
    """Per shard, the days it holds state for, newest first."""
    shards = all_shards() if shards is None else shards
    pipe = r.pipeline(transaction=False)
    for shard in shards:
        pipe.smembers(shard.prefix + keys.DAYS)
    return {
        shard.index: sorted(map(int, held), reverse=True)
        for shard, held in zip(shards, pipe.execute(), strict=True)
    }


def hash_values(
    r: Redis, template: str, idents: Sequence[Ident], days: dict[int, list[int]] | None = None
) -> list[tuple[int, bytes] | None]:
    """Per ident, (day, value) of its field in the ``template`` hash of its day, or of the
    newest day that has it when its day is unknown (-1); None where none has it. ``days``
    (:func:`days_held`) is read when needed and not given."""
    if days is None and any(i.day < 0 for i in idents):
        days = days_held(r)
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for n, i in enumerate(idents):
        for day in [i.day] if i.day >= 0 else (days or {}).get(i.shard, []):
            groups[(i.shard, day, i.bucket)].append(n)
    shards = all_shards()
    # One request per shard: its (day, bucket) groups, and the fields each asks for.
    of_shard: dict[int, list[tuple[int, int, list[int]]]] = defaultdict(list)
    for (shard, day, bucket), members in groups.items():
        of_shard[shard].append((day, bucket, members))
    requests = [
        (
            shards[shard],
            [
                (shards[shard].key(template, day=d, bucket=b), [idents[n].field for n in members])
                for d, b, members in asked
            ],
        )
        for shard, asked in of_shard.items()
    ]
    found: list[tuple[int, bytes] | None] = [None] * len(idents)
    for asked, reply in zip(of_shard.values(), read_fields(r, requests), strict=True):
        for (day, _, members), held in zip(asked, reply, strict=True):
            for n, value in zip(members, held, strict=True):
                if value is not None and (found[n] is None or day > found[n][0]):  # type: ignore[index]
                    found[n] = (day, value)
    return found


def read_fields(
    r: Redis, requests: Sequence[tuple[Shard, Sequence[tuple[str, Sequence[str]]]]]
) -> list[list[list[bytes | None]]]:
    """Per (shard, [(hash, fields)]), the fields' values of each hash (None where it has
    none): one fields.lua call per shard, on a cluster all at once (:func:`in_parallel`)."""
    calls = [
        partial(run_script, r, _FIELDS, [asked[0][0]], [orjson.dumps(asked)])
        for _, asked in requests
        if asked
    ]
    replies = iter(in_parallel(calls))
    return [next(replies) if asked else [] for _, asked in requests]


_FIELDS = (Path(__file__).parent / "fields.lua").read_text()
_registered: dict[str, Script] = {}


def run_script(r: Redis, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """``source`` run by its SHA: loaded into Redis once, again after a restart."""
    script = _registered.get(source)
    if script is None:
        script = _registered[source] = r.register_script(source)
    return script(keys=keys, args=args, client=r)


def in_parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Each call's result, in order; several of them (a cluster's shards) all at once, from
    threads, since redis-py refuses ``EVALSHA`` in a cluster pipeline. Only for calls that
    do not depend on each other's order."""
    if len(calls) <= 1:
        return [call() for call in calls]
    return list(_threads().map(lambda call: call(), calls))


def _threads() -> ThreadPoolExecutor:
    return _threads_of(os.getpid())  # a forked worker child needs threads of its own


@cache
def _threads_of(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="thronos-shards")


def per_shard(r: Redis, read: Callable[[Any, Shard], None]) -> list[Any]:
    """Run ``read(pipe, shard)`` for each shard in one pipeline; the replies, in order."""
    pipe = r.pipeline(transaction=False)
    for shard in all_shards():
        read(pipe, shard)
    return pipe.execute()


def summed(r: Redis, key: str) -> Counter[str]:
    """Shard hash ``key``'s integer fields, added up over the shards."""
    total: Counter[str] = Counter()
    for held in per_shard(r, lambda pipe, s: pipe.hgetall(s.prefix + key)):
        total.update({k.decode(): int(float(v)) for k, v in held.items()})
    return total


def entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry's id as numbers: the shards' streams merge by it, in time order."""
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)
