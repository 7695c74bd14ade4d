"""Logging for every process: JSON lines for machines, rich text for a person at a terminal.

When stderr is a terminal, log records are shown by rich's handler; otherwise each record
is one JSON object per line (``ts``, ``level``, ``logger``, ``msg`` and, where they apply,
``task``, ``task_id``, ``interaction_id``, ``model_version``), which ``docker compose logs``,
journald and any log shipper can parse. ``THRONOS_LOG_FORMAT=json|text`` overrides the
choice.

Context comes from three places, later ones winning: the task that is running (set by the
Celery ``task_prerun`` signal), :func:`bind` around a block of code, and a call's own
``extra={"interaction_id": ...}``.

Importing this module connects it to Celery's signals, so a Celery process that imports it
(``workers/celery_app.py`` does) logs the same way as the command line.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

from thronos_analytics.core.settings import settings

# The context fields a line may carry, in the order they are written.
FIELDS = ("task", "task_id", "interaction_id", "model_version")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "thronos_log_context", default=None
)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. ``interaction_id=...``) to every line logged inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record, unless the call's ``extra`` set it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class ContextText(logging.Formatter):
    """For rich's handler: the message, then the context fields that are set."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        context = [f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None)]
        return f"{message}  [dim]{' '.join(context)}[/]" if context else message


def wants_json(stream: IO[str]) -> bool:
    forced = settings().log_format
    if forced:
        return forced == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def handler_for(stream: IO[str] | None = None) -> logging.Handler:
    stream = stream or sys.stderr
    handler: logging.Handler
    if wants_json(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=stream),
            show_path=False,
            markup=True,
            rich_tracebacks=True,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(ContextText())
    handler.addFilter(ContextFilter())
    handler.set_name("thronos")
    return handler


def setup(level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Make the root logger ours: one handler, JSON or rich. Safe to call twice."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "thronos"]
    # Celery's own handlers would print each line a second time in another format.
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.stdout):
            root.removeHandler(h)
    root.addHandler(handler_for(stream))
    root.setLevel(level)


# Celery: the worker and beat call ``setup_logging``; a receiver replaces Celery's own setup.
_started: contextvars.ContextVar[float] = contextvars.ContextVar("thronos_task_started", default=0)
_task_tokens: dict[str, contextvars.Token] = {}
log = logging.getLogger("thronos.tasks")


def _on_setup_logging(loglevel: int | None = None, **_: Any) -> None:
    setup(loglevel or logging.INFO)
    # Celery's task logger does not propagate by default; ours is the root's handler.
    logging.getLogger("celery.task").propagate = True


def _on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    context = {**(_context.get() or {}), "task": getattr(task, "name", None), "task_id": task_id}
    if task_id:
        _task_tokens[task_id] = _context.set(context)
    _started.set(time.perf_counter())


def _on_task_postrun(
    task_id: str | None = None,
    task: Any = None,
    retval: Any = None,
    state: str | None = "",
    **_: Any,
) -> None:
    state = state or ""  # celery sends None for a task that raised
    extra: dict[str, Any] = {
        "state": state,
        "duration_s": round(time.perf_counter() - _started.get(), 4),
    }
    if isinstance(retval, dict):
        version = retval.get("model_version") or retval.get("version")
        if version:
            extra["model_version"] = version
        for key in ("rows", "scored", "model", "n_samples"):
            if key in retval:
                extra[key] = retval[key]
    log.info("task %s %s", getattr(task, "name", "?"), state.lower() or "done", extra=extra)
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        with contextlib.suppress(ValueError):
            _context.reset(token)


def connect_celery_signals() -> None:
    from celery.signals import setup_logging, task_postrun, task_prerun

    setup_logging.connect(_on_setup_logging, weak=False, dispatch_uid="thronos.logs")
    task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="thronos.logs")
    task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="thronos.logs")


connect_celery_signals()
