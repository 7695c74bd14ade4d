"""The per-session and per-wallet aggregates: which measures there are, and what a row adds.

The store counts them in Redis as rows arrive (``store.apply_batch``, one hash per scope and
measure), training reads them back as frames, and ``analytics.profiles.aggregates_from_rows``
computes the same frames from rows; all three follow this definition.

A measure either counts rows (those that have ``of``, if it names a field) or sums the
field ``of`` over the rows that have it. With ``per``, it is kept per value of that field as
well, keyed ``"<id>\\t<value>"`` in Redis and as columns ``<name>_<value>`` in a frame.
"Has" means the value is neither None nor empty.

>>> from thronos_analytics.core.contract import Row
>>> row = Row("1", 1.8e9, "claude", None, "s1", "w1", 2.0, 0.8, 900.0, 300.0, "coding", True)
>>> [(m.name, m.field(who="s1", row=row), m.amount(row)) for m in MEASURES]
... # doctest: +NORMALIZE_WHITESPACE
[('calls', 's1', 1), ('score_sum', 's1', 0.8), ('score_n', 's1', 1), ('credits', 's1', 2.0),
 ('mix', 's1\\tclaude', 1), ('uc', 's1\\tcoding', 1)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from thronos_analytics.core.contract import Row


@dataclass(frozen=True)
class Measure:
    name: str
    kind: Literal["count", "sum"]
    of: str | None = None  # the Row field summed, or that a counted row must have
    per: str | None = None  # the Row field it is kept per value of

    @property
    def integer(self) -> bool:
        """Counts are integers in Redis (HINCRBY); sums are floats (HINCRBYFLOAT)."""
        return self.kind == "count"

    def amount(self, row: Row) -> float | int | None:
        """What ``row`` adds to this measure; None when it adds nothing."""
        # Inline, not has(): the store calls this for every row and measure.
        if self.per is not None and getattr(row, self.per) in (None, ""):
            return None
        if self.of is None:
            return 1
        value = getattr(row, self.of)
        if value is None or value == "":
            return None
        return 1 if self.kind == "count" else value

    def field(self, who: str, row: Row) -> str:
        """The field of the scope's hash that ``row`` adds to, for session or wallet ``who``."""
        return who if self.per is None else f"{who}\t{getattr(row, self.per)}"


def has(value: object) -> bool:
    return value is not None and value != ""


MEASURES = (
    Measure("calls", "count"),
    Measure("score_sum", "sum", of="score"),
    Measure("score_n", "count", of="score"),
    Measure("credits", "sum", of="credits_used"),
    Measure("mix", "count", per="provider"),  # calls per provider
    Measure("uc", "count", per="use_case"),  # calls per use case
)
NAMES = tuple(m.name for m in MEASURES)
PAIRS = tuple(m.name for m in MEASURES if m.per is not None)
# Each scope and the Row field naming a row's session or wallet.
SCOPES = (("session", "session_id"), ("wallet", "wallet"))
