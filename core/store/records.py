"""The compact records a shard keeps: per interaction for the retention horizon, and per
session (and day) and wallet.

A flag is 13 bytes in its ``ix`` hash: the anomaly score (float32), the flag bit and the
model version (microseconds since the epoch, which is what the version's timestamp
says). Redis keeps a hash of such values under 64 bytes in a listpack. Reasons exist
only for anomalies and live beside them (``keys.REASONS``), as does the full record in
the capped anomaly stream.

>>> flag = {"id": "a", "anomaly_score": 0.5, "is_anomaly": True,
...         "model_version": "20261202T031500.123456", "reasons": ["slow"]}
>>> unpack_flag("a", pack_flag(flag), ["slow"]) == flag
True
>>> len(pack_flag(flag))
13

An aggregate record holds every measure of core/aggregates.py for one session (and day)
or wallet, in their order: a number, or for a measure kept per value a map of value to
count; then, for a session, its wallet (``keys.wallet_ref``), and for a wallet, the
sessions it has had (counted in the shard of each (wallet, session) pair). The scripts add to it
(aggregates.lua, with cmsgpack). A session's day is one field of about 50 bytes rather
than one per measure, provider and use case, and Redis keeps a bucket of such fields in a
listpack.

>>> import msgpack
>>> unpack_aggregate(msgpack.packb([3, 2.5, 3, 1.5, {"claude": 3}, [], 2**51]))
([3, 2.5, 3, 1.5, {'claude': 3}, {}], 2251799813685248)
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgpack

from thronos_analytics.core import aggregates

_FLAG = struct.Struct("<fBq")
VERSION_FORMAT = "%Y%m%dT%H%M%S.%f"


@lru_cache(maxsize=64)  # a batch's flags share one version
def _version_number(version: str) -> int:
    moment = datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


@lru_cache(maxsize=64)
def _version_name(number: int) -> str:
    return datetime.fromtimestamp(number / 1_000_000, UTC).strftime(VERSION_FORMAT)


def pack_flag(flag: dict[str, Any]) -> bytes:
    return _FLAG.pack(
        flag["anomaly_score"], bool(flag["is_anomaly"]), _version_number(flag["model_version"])
    )


def unpack_flag(interaction_id: str, record: bytes, reasons: list[str] | None) -> dict[str, Any]:
    """The flag an ``ix`` record holds, as scoring made it (its score to 4 places)."""
    score, is_anomaly, version = _FLAG.unpack(record)
    return {
        "id": interaction_id,
        "anomaly_score": round(score, 4),
        "is_anomaly": bool(is_anomaly),
        "model_version": _version_name(version),
        "reasons": reasons or [],
    }


_N = len(aggregates.MEASURES)


def unpack_aggregate(record: bytes) -> tuple[list[Any], int | None]:
    """(the measures' values, then the session's wallet_ref or the wallet's sessions, or
    None) of an aggregate record."""
    held = msgpack.unpackb(record, strict_map_key=False)
    # Lua cannot tell an empty map from an empty array: cmsgpack writes [].
    values = [v if v != [] else {} for v in held[:_N]]
    return values, held[_N] if len(held) > _N else None
