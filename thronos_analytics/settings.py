"""Every setting comes from the environment, and is read here only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number; unset it or give a number") from None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    ledger: Path
    redis_url: str | None
    broker_url: str | None
    contamination: float | None
    min_train_rows: int
    window_rows: int
    batch_size: int
    linger_ms: float
    retrain_seconds: float
    visibility_timeout: float

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = Path(os.environ.get("THRONOS_DATA_DIR") or "data")
        redis_url = os.environ.get("REDIS_URL") or None
        return cls(
            data_dir=data_dir,
            ledger=Path(os.environ.get("THRONOS_LEDGER") or data_dir / "ai_ledger.jsonl"),
            redis_url=redis_url,
            broker_url=os.environ.get("CELERY_BROKER_URL") or redis_url,
            # Share of rows flagged: the IsolationForest threshold is this quantile of the
            # training window's scores.
            # "auto": a fixed threshold on the detector's own scale instead of a quantile.
            contamination=None
            if os.environ.get("THRONOS_CONTAMINATION") == "auto"
            else _float("THRONOS_CONTAMINATION", 0.01),
            min_train_rows=int(_float("THRONOS_MIN_TRAIN_ROWS", 1000)),
            window_rows=int(_float("THRONOS_WINDOW_ROWS", 200_000)),
            batch_size=int(_float("THRONOS_BATCH_SIZE", 500)),
            linger_ms=_float("THRONOS_LINGER_MS", 5.0),
            retrain_seconds=_float("THRONOS_RETRAIN_SECONDS", 300.0),
            # A message taken by a worker that died unseen is redelivered after this long.
            visibility_timeout=_float("THRONOS_VISIBILITY_TIMEOUT", 300.0),
        )

    @property
    def analytics_json(self) -> Path:
        return self.data_dir / "ai_analytics.json"

    @property
    def rejected_file(self) -> Path:
        return self.ledger.with_name(self.ledger.stem + ".rejected.jsonl")


def settings() -> Settings:
    return Settings.from_env()
