"""The ledger row contract: parse, validate and normalise one line of ``ai_ledger.jsonl``.

Two dialects are accepted. The spec's row::

    {"ts", "provider", "model", "prompt_hash", "output_hash", "session_id",
     "wallet", "credits_used", "score", "meta"}

and the one existing Thronos servers write, which says ``timestamp`` (epoch seconds),
``metadata``, ``model_id``, a top-level ``latency_ms`` or ``duration`` (seconds),
``success``/``error``, and may carry a user rating in ``metadata.rating`` or
``metadata.user_rating`` (1 to 5 stars, read as score ``(stars - 1) / 4``) instead of
``score``.

A row's id is its ``id`` (or ``interaction_id``). Without one, the id is
``"h" + sha256(canonical JSON of the row)[:32]``, where the canonical JSON has sorted
keys and no whitespace, so the same row always gets the same id wherever it is read.

Everything downstream works on :class:`Row`; nothing else reads raw ledger JSON. A row keeps
only what the analytics use: the prompt and output hashes stay in the ledger. Between
processes a row travels as its fields in order (:meth:`Row.to_wire`), a JSON array, which
:meth:`Row.from_wire` checks field by field without parsing a dialect again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

MAX_LINE_BYTES = 1 << 20
MAX_META_BYTES = 64 << 10
MAX_ID_CHARS = 200
# Bounds on ts: anything outside is a clock or unit error, not an interaction.
MIN_TS = 946_684_800.0  # 2000-01-01
MAX_TS = 4_102_444_800.0  # 2100-01-01
# Epoch numbers above this are milliseconds (1e11 s is the year 5138).
MS_CUTOFF = 1e11

OUTPUT_LENGTH_KEYS = ("output_chars", "output_len", "output_length", "output_tokens")
LATENCY_MS_KEYS = ("latency_ms",)


class RowError(ValueError):
    """A row that breaks the contract; the message is the one-line reason."""


class Row(NamedTuple):
    """A valid, normalised interaction. Only what the analytics use; no raw text.

    A named tuple rather than a dataclass: a worker builds one per row, and a tuple is three
    times cheaper to make and is already its own wire form.
    """

    id: str
    ts: float
    provider: str
    model: str | None
    session_id: str | None
    wallet: str | None
    credits_used: float
    score: float | None
    latency_ms: float | None
    output_len: float | None
    use_case: str | None
    success: bool

    def to_wire(self) -> list[Any]:
        """The fields in order: what travels to workers, parks in PENDING and fills the window."""
        return list(self)

    @classmethod
    def from_wire(cls, data: Any) -> Row:
        """A row sent by :meth:`to_wire`, checked again: a message is input like any other.

        An object is read as a ledger row of either dialect (:func:`normalise`).
        """
        if isinstance(data, dict):
            return normalise(data)
        n = len(cls._fields)
        if not isinstance(data, list | tuple):
            raise RowError(f"row is a JSON {type(data).__name__}, not an object or array")
        if len(data) != n:
            raise RowError(f"wire row has {len(data)} fields, not {n}")
        error = _wire_error(data)
        if error is not None:
            raise RowError(f"wire row: {error}")
        return cls._make(data)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line that was not a valid row: where it was and why."""

    line: int
    reason: str
    raw: str

    def to_json(self, source: str) -> dict[str, Any]:
        # Keep a bounded excerpt: the dead letter is for reading, the ledger keeps the original.
        return {"source": source, "line": self.line, "reason": self.reason, "raw": self.raw[:2048]}


def parse_line(line: bytes | str, lineno: int = 0) -> Row | Rejection:
    """Parse one ledger line. Never raises: a bad line becomes a :class:`Rejection`."""
    raw = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else bytes(line)
    try:
        if len(raw) > MAX_LINE_BYTES:
            raise RowError(f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} byte limit")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RowError(f"not valid JSON: {exc}") from None
        return normalise(obj)
    except RowError as exc:
        return Rejection(lineno, str(exc), raw.decode("utf-8", "replace"))


def normalise(obj: Any) -> Row:
    """Validate a decoded row and map either dialect onto :class:`Row`."""
    if not isinstance(obj, dict):
        raise RowError(f"row is a JSON {type(obj).__name__}, not an object")
    meta = obj.get("meta", obj.get("metadata"))
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RowError(f"meta is a {type(meta).__name__}, not an object")
    meta_size = len(_dumps(meta, "meta"))
    if meta_size > MAX_META_BYTES:
        raise RowError(f"meta is {meta_size} bytes, over the {MAX_META_BYTES} byte limit")

    provider = obj.get("provider")
    if not isinstance(provider, str) or not provider.strip():
        raise RowError("no provider" if provider is None else "provider is not a non-empty string")

    score = _number(obj, "score")
    if score is None:
        score = _rating(meta)
    credits = _number(obj, "credits_used")
    if credits is not None and credits < 0:
        raise RowError(f"credits_used is negative ({credits})")
    latency = _latency_ms(obj, meta)
    output_len = _first_number(meta, OUTPUT_LENGTH_KEYS, "meta.")
    if output_len is not None and output_len < 0:
        raise RowError(f"output length is negative ({output_len})")
    use_case = meta.get("use_case")

    return Row(
        id=_row_id(obj),
        ts=_timestamp(obj),
        provider=provider.strip().lower()[:MAX_ID_CHARS],
        model=_text(obj, "model") or _text(obj, "model_id"),
        session_id=_text(obj, "session_id"),
        wallet=_text(obj, "wallet"),
        credits_used=credits or 0.0,
        score=score,
        latency_ms=latency,
        output_len=output_len,
        use_case=str(use_case).strip().lower()[:MAX_ID_CHARS] if use_case else None,
        success=_success(obj),
    )


def content_id(obj: dict[str, Any]) -> str:
    canonical = _dumps(obj, "row", orjson.OPT_SORT_KEYS)
    return "h" + hashlib.sha256(canonical).hexdigest()[:32]


def _dumps(value: Any, what: str, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except TypeError as exc:  # integers over 64 bits, non-string keys, NaN from a lax parser
        raise RowError(f"{what} cannot be stored as JSON: {exc}") from None


def _row_id(obj: dict[str, Any]) -> str:
    for key in ("id", "interaction_id"):
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise RowError(f"{key} is a {type(value).__name__}, not a string or integer")
        value = str(value)
        if not value or len(value) > MAX_ID_CHARS:
            raise RowError(f"{key} must have 1 to {MAX_ID_CHARS} characters")
        return value
    return content_id(obj)


def _timestamp(obj: dict[str, Any]) -> float:
    key = "ts" if "ts" in obj else "timestamp"
    value = obj.get(key)
    if value is None:
        raise RowError("no ts or timestamp")
    if isinstance(value, str):
        value = _parse_time_text(key, value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(f"{key} is not a finite number or ISO 8601 string")
    ts = float(value) / 1000.0 if abs(value) > MS_CUTOFF else float(value)
    if not MIN_TS <= ts < MAX_TS:
        raise RowError(f"{key} {value} is outside 2000..2100")
    return ts


def _parse_time_text(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RowError(f"{key} {text[:40]!r} is neither ISO 8601 nor epoch") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _number(obj: dict[str, Any], key: str, prefix: str = "") -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) in _NUMBER and math.isfinite(value):  # the common case, checked first
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"{prefix}{key} is a {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise RowError(f"{prefix}{key} is {value}, not a finite number")
    return float(value)


def _first_number(obj: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> float | None:
    for key in keys:
        value = _number(obj, key, prefix)
        if value is not None:
            return value
    return None


def _rating(meta: dict[str, Any]) -> float | None:
    rating = _first_number(meta, ("rating", "user_rating"), "meta.")
    if rating is None:
        return None
    if not 1 <= rating <= 5:
        raise RowError(f"meta rating {rating} is outside 1..5 stars")
    # One star is the worst score, five the best.
    return (rating - 1.0) / 4.0


def _latency_ms(obj: dict[str, Any], meta: dict[str, Any]) -> float | None:
    latency = _first_number(meta, LATENCY_MS_KEYS, "meta.")
    if latency is None:
        latency = _number(obj, "latency_ms")
    if latency is None:
        seconds = _number(obj, "duration")
        latency = None if seconds is None else seconds * 1000.0
    if latency is not None and latency < 0:
        raise RowError(f"latency is negative ({latency} ms)")
    return latency


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if type(value) is str:  # the common case, checked first
        return value[:MAX_ID_CHARS] or None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(f"{key} is a {type(value).__name__}, not a string")
    return str(value)[:MAX_ID_CHARS]


def _success(obj: dict[str, Any]) -> bool:
    if obj.get("error"):
        return False
    success = obj.get("success", True)
    return bool(success) if isinstance(success, bool | int) else True


# --- the wire form: each field as normalise leaves it --------------------------------------

_TEXT_FIELDS = (0, 2, 3, 4, 5)  # id, provider, model, session_id, wallet
_NUMBER_FIELDS = (6, 7, 8, 9)  # credits_used, score, latency_ms, output_len
_NUMBER = (float, int)  # exact types: a bool is an int, and no bool is a number here


def _wire_error(data: list[Any] | tuple[Any, ...]) -> str | None:
    """Why ``data`` is not a wire row, or None. Straight-line: it runs once per row."""
    for i in _TEXT_FIELDS:
        value = data[i]
        if value is None and i > 2:
            continue
        if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
            return f"{Row._fields[i]} is not a string of 1 to {MAX_ID_CHARS} characters"
    for i in _NUMBER_FIELDS:
        value = data[i]
        if value is None and i > 6:
            continue
        if type(value) not in _NUMBER or not math.isfinite(value):
            return f"{Row._fields[i]} is not a finite number"
        if value < 0 and i != 7:
            return f"{Row._fields[i]} is negative"
    ts = data[1]
    if type(ts) not in _NUMBER or not MIN_TS <= ts < MAX_TS:
        return "ts is not a number in 2000..2100"
    use_case = data[10]
    if use_case is not None and (type(use_case) is not str or len(use_case) > MAX_ID_CHARS):
        return f"use_case is not a string of up to {MAX_ID_CHARS} characters"
    if type(data[11]) is not bool:
        return "success is not a boolean"
    return None
