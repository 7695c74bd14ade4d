"""The ledger contract: parse, validate and normalise one line of any Thronos ledger.

A line is an **interaction** (:class:`Row`) or a **score event** (:class:`ScoreEvent`): an
object with ``interaction_id`` and no ``provider``/``provider_id`` is a score event. Four
writers produce interactions, and one line may be in any of their layouts:

- spec (``ai_ledger.jsonl``): ``ts`` (ISO 8601), ``provider``, ``model``, ``session_id``,
  ``wallet``, ``credits_used``, ``score``, ``meta`` {``use_case``, ``latency_ms``,
  ``output_chars``, ...};
- legacy (``ai_interactions.log``): ``timestamp`` (epoch s), ``model_id``, ``duration`` (s),
  ``latency_ms``, ``error``, ``success``, ``metadata`` {``rating`` | ``user_rating``};
- server (``ai_interactions.jsonl``): ``timestamp`` (epoch ms), ``user_wallet``,
  ``tokens_input``, ``tokens_output``, ``cost_usd``, ``ai_credits_spent``,
  ``feedback.score``, ``eval.auto_score``, ``task_type``, ``user_rating``,
  ``metadata.status``;
- v4 (``ai_interactions_v4.jsonl``): ``provider_id``, ``tokens_in``, ``tokens_out``,
  ``cost_est``, ``created_at`` (epoch ms), ``user_wallet``; its scores and use cases come
  as score events (``ai_scores.jsonl``: ``interaction_id``, ``quality_score``,
  ``domain_label``, ``created_at``), joined downstream by interaction id.

:data:`SOURCES` says, for each field, where each layout keeps it, in order of precedence:
the first source that is present and readable wins. A score is in 0..1 (a boolean verdict
reads as 1 or 0); one outside is dropped. Where a row holds both a score and a
rating, the score wins; ``eval.auto_score`` comes before ``feedback.score`` so that a
server's rows are scored on one scale whether or not a person rated them.

Only ``ts`` and ``provider`` are essential: a line without a readable one, or that is not
a JSON object, is rejected with its reason. Any other field that cannot be read (a wrong
type, a negative duration, a rating on no known scale) is dropped, the interaction is kept,
and the dropped source is named in :attr:`Row.dropped` so it can be counted.

Ratings are read by ``THRONOS_RATING_SCALE``: ``1..5`` (stars, as score
``(stars - 1) / 4``), ``0..1`` (as they are), or ``auto``, which reads a fraction in 0..1
written as a JSON float (``0.8``, ``1.0``) or the integer 0 as 0..1, and any other value
in 1..5 as stars. So ``1.0`` is the best on 0..1 and ``1`` the worst of five stars.

A row's id is its ``id`` (or ``interaction_id``). Without one, the id is
``"h" + sha256(canonical JSON of the line)[:32]``, where the canonical JSON has sorted keys
and no whitespace, so the same line always gets the same id wherever it is read.

Everything downstream works on :class:`Row` and :class:`ScoreEvent`; nothing else reads raw
ledger JSON. They keep only what the analytics use: hashes and raw text (``preview``) stay
in the ledger. Between processes each travels as its fields in order (``to_wire``), a JSON
array, which ``from_wire`` checks field by field without parsing a layout again.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 200
# Bounds on ts: anything outside is a clock or unit error, not an interaction.
MIN_TS = 946_684_800.0  # 2000-01-01
MAX_TS = 4_102_444_800.0  # 2100-01-01
# Epoch numbers above this are milliseconds (1e11 s is the year 5138).
MS_CUTOFF = 1e11

# Where each layout keeps each field, in order of precedence: the first source present and
# readable wins. "meta.x" is ``x`` in the row's ``meta`` object, or else its ``metadata``.
SOURCES: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "timestamp", "created_at"),
    "provider": ("provider", "provider_id"),
    "model": ("model", "model_id"),
    "model_id": ("model_id",),
    "session_id": ("session_id",),
    "wallet": ("wallet", "user_wallet"),
    "use_case": ("meta.use_case", "task_type", "meta.task_type"),
    "score": ("score", "eval.auto_score", "feedback.score"),
    "rating": ("meta.rating", "meta.user_rating", "user_rating"),  # when there is no score
    "credits_used": ("credits_used", "ai_credits_spent"),
    "cost_usd": ("cost_usd", "cost_est"),
    "latency_ms": ("meta.latency_ms", "latency_ms"),
    "duration_s": ("duration",),  # when there is no latency_ms
    "output_chars": ("meta.output_chars", "meta.output_len", "meta.output_length"),
    "output_tokens": ("meta.output_tokens", "tokens_output", "tokens_out"),  # if no chars
    "tokens_in": ("meta.input_tokens", "tokens_input", "tokens_in"),
    "status": ("meta.status", "status", "status_code"),
    "error_code": ("error_code", "meta.error_code"),
}
EVENT_SOURCES: dict[str, tuple[str, ...]] = {
    "ts": ("created_at", "ts", "timestamp"),
    "score": ("quality_score", "score"),
    "use_case": ("domain_label", "use_case", "task_type"),
}
# A status that says the call failed; so does a falsy ``success`` or any ``error``.
FAILED_STATUSES = frozenset(
    {"error", "failed", "failure", "timeout", "timed_out", "cancelled", "rate_limited"}
)


def _paths(sources: dict[str, tuple[str, ...]]) -> dict[str, tuple[tuple[str, ...], ...]]:
    return {name: tuple(tuple(s.split(".", 1)) for s in paths) for name, paths in sources.items()}


_PATHS = _paths(SOURCES)
_EVENT_PATHS = _paths(EVENT_SOURCES)


@functools.lru_cache(maxsize=1024)
def _present_paths(
    keys: tuple[str, ...], meta_keys: tuple[str, ...]
) -> dict[str, tuple[tuple[str, ...], ...]]:
    """``_PATHS`` without the sources a line of these keys (and meta keys) cannot hold. A
    ledger has a few key sets, so each is planned once: most of a line's sources are absent,
    and skipping them halves the cost of reading it."""
    top, inner = set(keys), set(meta_keys)
    return {
        name: tuple(p for p in paths if (p[1] in inner if p[0] == "meta" else p[0] in top))
        for name, paths in _PATHS.items()
    }


class RowError(ValueError):
    """A row that breaks the contract; the message is the one-line reason."""


class Row(NamedTuple):
    """A valid, normalised interaction. Only what the analytics use; no raw text.

    A named tuple rather than a dataclass: a worker builds one per row, and a tuple is three
    times cheaper to make and is already its own wire form. Fields after ``success`` were
    added later and default to None, so a row sent in the older 12-field form still reads.
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
    cost_usd: float | None = None
    tokens_in: float | None = None
    output_unit: str | None = None  # "chars" or "tokens": what output_len counts
    model_id: str | None = None
    dropped: str | None = None  # comma-separated sources that could not be read

    def to_wire(self) -> list[Any]:
        """The fields in order: what travels to workers, parks in PENDING and fills the window."""
        return list(self)

    @classmethod
    def from_wire(cls, data: Any) -> Row:
        """A row sent by :meth:`to_wire`, checked again: a message is input like any other.

        An object is read as a ledger line of any layout (:func:`normalise`).
        """
        if isinstance(data, dict):
            return normalise(data)
        if not isinstance(data, list | tuple):
            raise RowError(f"row is a JSON {type(data).__name__}, not an object or array")
        row = cls.from_state(data)
        error = _wire_error(data)
        if error is not None:
            raise RowError(f"wire row: {error}")
        return row

    @classmethod
    def from_state(cls, data: list[Any] | tuple[Any, ...]) -> Row:
        """A wire row that a worker wrote into the state after :meth:`from_wire` checked it
        (the training window): only its length is checked again. Checking each field cost
        two thirds of reading a 200k-row window."""
        n = len(data)
        if not WIRE_V1 <= n <= len(cls._fields):
            raise RowError(f"wire row has {n} fields, not {WIRE_V1} to {len(cls._fields)}")
        return cls._make(data) if n == len(cls._fields) else cls(*data)


WIRE_V1 = 12  # the fields a row had before cost, tokens, unit, model id and drops


class ScoreEvent(NamedTuple):
    """A score for an interaction, written apart from it, before or after it.

    Of several events for one interaction the newest (``ts``, then ``id``) counts.
    """

    id: str
    interaction_id: str
    ts: float | None
    score: float | None  # 0..1
    use_case: str | None
    dropped: str | None = None

    def to_wire(self) -> list[Any]:
        return list(self)

    @classmethod
    def from_wire(cls, data: Any) -> ScoreEvent:
        if not isinstance(data, list | tuple) or len(data) != len(cls._fields):
            raise RowError(f"score event is not an array of {len(cls._fields)} fields")
        error = _event_error(data)
        if error is not None:
            raise RowError(f"score event: {error} is not valid")
        return cls._make(data)

    def fill(self, row: Row) -> Row:
        """``row`` with this event's score and use case where it has none of its own: a
        score the interaction was written with wins (``store.apply_scores`` does the same)."""
        if (row.score is None and self.score is not None) or (not row.use_case and self.use_case):
            return row._replace(
                score=self.score if row.score is None else row.score,
                use_case=row.use_case or self.use_case,
            )
        return row


def _event_error(data: list[Any] | tuple[Any, ...]) -> str | None:
    """Which field of a wire score event is not as ``normalise_event`` leaves it, or None."""
    for i in (0, 1):
        if type(data[i]) is not str or not 0 < len(data[i]) <= MAX_ID_CHARS:
            return ScoreEvent._fields[i]
    ts, score = data[2], data[3]
    if ts is not None and (type(ts) not in _NUMBER or not MIN_TS <= ts < MAX_TS):
        return "ts"
    if score is not None and (type(score) not in _NUMBER or not 0 <= score <= 1):
        return "score"
    for i in (4, 5):
        if data[i] is not None and (type(data[i]) is not str or len(data[i]) > 2000):
            return ScoreEvent._fields[i]
    return None


Entry = Row | ScoreEvent


@dataclass(frozen=True, slots=True)
class Rejection:
    """A line that was not a valid row: where it was and why."""

    line: int
    reason: str
    raw: str

    def to_json(self, source: str) -> dict[str, Any]:
        # Keep a bounded excerpt: the dead letter is for reading, the ledger keeps the original.
        return {"source": source, "line": self.line, "reason": self.reason, "raw": self.raw[:2048]}


def parse_line(
    line: bytes | str, lineno: int = 0, rating_scale: str = "auto"
) -> Row | ScoreEvent | Rejection:
    """Parse one ledger line. Never raises: a bad line becomes a :class:`Rejection`."""
    raw = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else bytes(line)
    try:
        if len(raw) > MAX_LINE_BYTES:
            raise RowError(f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES} byte limit")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RowError(f"not valid JSON: {exc}") from None
        return parse_object(obj, rating_scale)
    except RowError as exc:
        return Rejection(lineno, str(exc), raw.decode("utf-8", "replace"))


def parse_object(obj: Any, rating_scale: str = "auto") -> Row | ScoreEvent:
    """A decoded line as an interaction or a score event; RowError if it is neither."""
    if not isinstance(obj, dict):
        raise RowError(f"row is a JSON {type(obj).__name__}, not an object")
    if "interaction_id" in obj and "provider" not in obj and "provider_id" not in obj:
        return normalise_event(obj)
    return normalise(obj, rating_scale)


def normalise(obj: Any, rating_scale: str = "auto", strict: bool = False) -> Row:
    """Validate a decoded interaction of any layout and map it onto :class:`Row`.

    ``strict``, for a writer: any unreadable field is a RowError rather than dropped."""
    if not isinstance(obj, dict):
        raise RowError(f"row is a JSON {type(obj).__name__}, not an object")
    kept: list[str] = []
    dropped: Any = None if strict else kept
    meta = _meta(obj, dropped)
    # A line of very many keys is planned for itself: the cache must not keep its keys.
    plan = _present_paths if len(obj) + len(meta) <= 64 else _present_paths.__wrapped__
    paths = plan(tuple(obj), tuple(meta))
    provider = _first(obj, meta, paths["provider"], _present, None)
    if not isinstance(provider, str) or not provider.strip():
        raise RowError("no provider" if provider is None else "provider is not a non-empty string")
    score = _first(obj, meta, paths["score"], _score, dropped)
    if score is None:
        score = _first(obj, meta, paths["rating"], _RATINGS[rating_scale], dropped)
    latency = _first(obj, meta, paths["latency_ms"], _non_negative, dropped)
    if latency is None:
        seconds = _first(obj, meta, paths["duration_s"], _non_negative, dropped)
        latency = None if seconds is None else seconds * 1000.0
    output_len = _first(obj, meta, paths["output_chars"], _non_negative, dropped)
    unit = "chars"
    if output_len is None:
        output_len = _first(obj, meta, paths["output_tokens"], _non_negative, dropped)
        unit = "tokens"
    use_case = _first(obj, meta, paths["use_case"], _label, dropped)
    credits = _first(obj, meta, paths["credits_used"], _non_negative, dropped)
    return Row(
        id=_row_id(obj),
        ts=_timestamp(obj, paths["ts"]),
        provider=provider.strip().lower()[:MAX_ID_CHARS],
        model=_first(obj, meta, paths["model"], _text, dropped),
        session_id=_first(obj, meta, paths["session_id"], _text, dropped),
        wallet=_first(obj, meta, paths["wallet"], _text, dropped),
        credits_used=credits or 0.0,
        score=score,
        latency_ms=latency,
        output_len=output_len,
        use_case=use_case,
        success=_success(obj, meta, paths),
        cost_usd=_first(obj, meta, paths["cost_usd"], _non_negative, dropped),
        tokens_in=_first(obj, meta, paths["tokens_in"], _non_negative, dropped),
        output_unit=None if output_len is None else unit,
        model_id=_first(obj, meta, paths["model_id"], _text, dropped),
        dropped=",".join(dict.fromkeys(kept)) or None,
    )


def normalise_event(obj: dict[str, Any]) -> ScoreEvent:
    """A score event: ``interaction_id`` is essential, the rest is dropped if unreadable."""
    target = obj.get("interaction_id")
    if isinstance(target, bool) or not isinstance(target, str | int) or target == "":
        raise RowError("score event: interaction_id is not a string or integer")
    if len(str(target)) > MAX_ID_CHARS:
        raise RowError(f"score event: interaction_id is over {MAX_ID_CHARS} characters")
    dropped: list[str] = []
    paths = _EVENT_PATHS
    event_id = obj.get("id")
    if isinstance(event_id, bool) or not isinstance(event_id, str | int) or event_id == "":
        event_id = content_id(obj)
    ts = None
    if _first(obj, {}, paths["ts"], _present, None) is not None:
        try:
            ts = _timestamp(obj, paths["ts"])
        except RowError:
            dropped.append("created_at")
    return ScoreEvent(
        id=str(event_id)[:MAX_ID_CHARS],
        interaction_id=str(target),
        ts=ts,
        score=_first(obj, {}, paths["score"], _score, dropped),
        use_case=_first(obj, {}, paths["use_case"], _label, dropped),
        dropped=",".join(dropped) or None,
    )


def content_id(obj: dict[str, Any]) -> str:
    canonical = _dumps(obj, "row", orjson.OPT_SORT_KEYS)
    return "h" + hashlib.sha256(canonical).hexdigest()[:32]


def _dumps(value: Any, what: str, option: int = 0) -> bytes:
    try:
        return orjson.dumps(value, option=option)
    except TypeError as exc:  # integers over 64 bits, non-string keys, NaN from a lax parser
        raise RowError(f"{what} cannot be stored as JSON: {exc}") from None


def _meta(obj: dict[str, Any], dropped: list[str] | None) -> dict[str, Any]:
    """The row's ``meta`` (or ``metadata``) object; an unreadable one is dropped whole.
    It is read only for the fields named in SOURCES, never kept, so its size is bounded
    by the line's."""
    key = "meta" if obj.get("meta") is not None else "metadata"
    meta = obj.get(key)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        if dropped is None:
            raise RowError(f"{key} is a {type(meta).__name__}, not an object")
        dropped.append(key)
        return {}
    return meta


_Read = Callable[[Any, str], Any]


def _first(
    obj: dict[str, Any],
    meta: dict[str, Any],
    paths: tuple[tuple[str, ...], ...],
    read: _Read,
    dropped: list[str] | None,
) -> Any:
    """The first source in ``paths`` present and readable by ``read``; an unreadable one is
    named in ``dropped`` (None: let RowError through)."""
    for path in paths:
        if len(path) == 1:
            value = obj.get(path[0])
        else:
            holder = meta if path[0] == "meta" else obj.get(path[0])
            value = holder.get(path[1]) if type(holder) is dict else None
        if value is None:
            continue
        if dropped is None:
            return read(value, path[-1])
        try:
            return read(value, path[-1])
        except RowError:
            dropped.append(".".join(path))
    return None


def _present(value: Any, name: str) -> Any:
    return value


def _number(value: Any, name: str) -> float:
    if type(value) in _NUMBER and math.isfinite(value):  # the common case, checked first
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"{name} is a {type(value).__name__}, not a number")
    raise RowError(f"{name} is {value}, not a finite number")


def _non_negative(value: Any, name: str) -> float:
    number = _number(value, name)
    if number < 0:
        raise RowError(f"{name} is negative ({number})")
    return number


def _unit_interval(value: Any, name: str) -> float:
    number = _number(value, name)
    if not 0 <= number <= 1:
        raise RowError(f"{name} {number} is outside 0..1")
    return number


def _score(value: Any, name: str) -> float:
    """A score is in 0..1; a boolean is a verdict (correct or not), read as 1 or 0."""
    if type(value) is bool:
        return float(value)
    return _unit_interval(value, name)


def _stars(value: Any, name: str) -> float:
    number = _number(value, name)
    if not 1 <= number <= 5:
        raise RowError(f"{name} {number} is outside 1..5 stars")
    return (number - 1.0) / 4.0  # one star is the worst score, five the best


def _auto_rating(value: Any, name: str) -> float:
    if (type(value) is float and 0 <= value <= 1) or (type(value) is int and value == 0):
        return float(value)
    return _stars(value, name)


_RATINGS: dict[str, _Read] = {"auto": _auto_rating, "0..1": _unit_interval, "1..5": _stars}


def _text(value: Any, name: str) -> str | None:
    if type(value) is str:  # the common case, checked first
        return value[:MAX_ID_CHARS] or None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(f"{name} is a {type(value).__name__}, not a string")
    return str(value)[:MAX_ID_CHARS]


def _label(value: Any, name: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"{name} is a {type(value).__name__}, not a label")
    return str(value).strip().lower()[:MAX_ID_CHARS] or None


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


def _timestamp(obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> float:
    for (key,) in paths:
        value = obj.get(key)
        if value is not None:
            break
    else:
        raise RowError("no ts, timestamp or created_at")
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


def _success(
    obj: dict[str, Any], meta: dict[str, Any], paths: dict[str, tuple[tuple[str, ...], ...]]
) -> bool:
    """False if any source says the call failed: ``error``, ``success``, an error code,
    the status."""
    if obj.get("error"):
        return False
    success = obj.get("success", True)
    if isinstance(success, bool | int) and not success:
        return False
    code = _first(obj, meta, paths["error_code"], _present, None)
    if code not in (None, "", 0, False):
        return False
    status = _first(obj, meta, paths["status"], _present, None)
    if isinstance(status, str):
        return status.strip().lower() not in FAILED_STATUSES
    if type(status) is int:
        return 0 <= status < 400  # an HTTP status; a negative one is a client's error
    return True


# --- the wire form: each field as normalise leaves it --------------------------------------

_TEXT_FIELDS = (0, 2, 3, 4, 5)  # id, provider, model, session_id, wallet
_NUMBER_FIELDS = (6, 7, 8, 9)  # credits_used, score, latency_ms, output_len
_LATER_NUMBERS = (12, 13)  # cost_usd, tokens_in
_UNITS = (None, "chars", "tokens")
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
        if i == 7 and not 0 <= value <= 1:
            return "score is outside 0..1"
    ts = data[1]
    if type(ts) not in _NUMBER or not MIN_TS <= ts < MAX_TS:
        return "ts is not a number in 2000..2100"
    use_case = data[10]
    if use_case is not None and (type(use_case) is not str or len(use_case) > MAX_ID_CHARS):
        return f"use_case is not a string of up to {MAX_ID_CHARS} characters"
    if type(data[11]) is not bool:
        return "success is not a boolean"
    if len(data) == WIRE_V1:
        return None
    for i in _LATER_NUMBERS:
        value = data[i] if i < len(data) else None
        if value is not None and (type(value) not in _NUMBER or not 0 <= value < math.inf):
            return f"{Row._fields[i]} is not a finite non-negative number"
    rest = list(data[14:]) + [None] * (len(Row._fields) - len(data))
    if rest[0] not in _UNITS:
        return "output_unit is not chars or tokens"
    for i, value in zip((15, 16), rest[1:], strict=True):
        if value is not None and (type(value) is not str or not 0 < len(value) <= 2000):
            return f"{Row._fields[i]} is not a string"
    return None
