"""Rejected lines: appended to ``<ledger>.rejected.jsonl`` and counted once in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from analytics.contract import Rejection
from thronos_analytics import store


class DeadLetter:
    def __init__(self, path: Path, source: str, r: store.Redis | None) -> None:
        self.path = Path(path)
        self.source = source
        self.redis = r

    def record(self, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.writelines(orjson.dumps(rej.to_json(self.source)) + b"\n" for rej in rejections)
        store.record_rejections(self.redis, self.source, rejections)
