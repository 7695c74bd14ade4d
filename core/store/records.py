"""The compact records a shard keeps per interaction for the retention horizon.

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
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

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
