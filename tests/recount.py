"""The ground truth a test compares Redis with: the ledger itself, recounted in Python."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from thronos_analytics.core import store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.core.messages import SCORING


def ledger_rows(ledger: Path) -> list[Row]:
    parsed = [parse_line(line, i) for i, line in enumerate(ledger.read_bytes().splitlines(), 1)]
    return [row for row in parsed if isinstance(row, Row)]


def recount(rows: list[Row], scope: str) -> dict[str, tuple[int, float, float]]:
    """Per session or wallet: calls, credits and score sum, counting each id once."""
    out: dict[str, list[float]] = {}
    seen: set[str] = set()
    for row in rows:
        who = row.session_id if scope == "session" else row.wallet
        if who is None or row.id in seen:
            continue
        seen.add(row.id)
        calls, credits, score_sum = out.setdefault(who, [0, 0.0, 0.0])
        out[who] = [calls + 1, credits + row.credits_used, score_sum + (row.score or 0.0)]
    return {k: (int(v[0]), v[1], v[2]) for k, v in out.items()}


def stored(r, scope: str) -> dict[str, tuple[int, float, float]]:
    held = store.aggregate_values(r, scope)
    calls, credits, scores = held["calls"], held["credits"], held["score_sum"]
    return {k: (int(v), credits[k], scores.get(k, 0.0)) for k, v in calls.items()}


def assert_aggregates_match_ledger(r, rows: list[Row]) -> None:
    for scope in ("session", "wallet"):
        expected, actual = recount(rows, scope), stored(r, scope)
        assert expected.keys() == actual.keys(), scope
        for key, (calls, credits, score_sum) in expected.items():
            assert actual[key][0] == calls, (scope, key)
            assert actual[key][1:] == pytest.approx((credits, score_sum), rel=1e-9, abs=1e-9)


def assert_published_once(r, rows: list[Row]) -> None:
    """Each row's flag was published once: every one has a flag, the script counted each
    when it was new, and the flag stream (capped: its newest batches) holds no id twice."""
    ids = {row.id: row.ts for row in rows}
    counts = store.counts(r)
    assert counts["interactions_scored"] == len(ids), counts
    assert store.flags_of(r, list(ids.items())).keys() == ids.keys()
    streamed = [flag["id"] for flag in store.latest_flags(r, 10 * len(ids) + 10)[0]]
    assert len(streamed) == len(set(streamed))


def queued_batches(r) -> list[list[str]]:
    """The ids of each score_batch message waiting on the scoring queue, oldest first."""
    batches = []
    for message in reversed(r.lrange(SCORING, 0, -1)):  # kombu LPUSHes: the oldest is last
        body = orjson.loads(base64.b64decode(orjson.loads(message)["body"]))
        batches.append([Row.from_wire(row).id for row in body[0][0]])
    return batches


def redis_contents(r) -> bytes:
    """Every key and value in Redis, concatenated, for searching."""
    parts = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        parts.append(key)
        if kind == b"string":
            parts.append(r.get(key))
        elif kind == b"hash":
            parts += [b"%s=%s" % item for item in r.hgetall(key).items()]
        elif kind in (b"list", b"set", b"zset"):
            parts += (
                r.lrange(key, 0, -1)
                if kind == b"list"
                else list(r.smembers(key))
                if kind == b"set"
                else r.zrange(key, 0, -1)
            )
        elif kind == b"stream":
            parts += [b"".join(b"".join(kv) for kv in f.items()) for _, f in r.xrange(key)]
    return b"\n".join(parts)
