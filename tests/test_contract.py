"""The row contract: both dialects, every rejection reason, and properties over any input."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thronos_analytics.core.contract import (
    MAX_LINE_BYTES,
    Rejection,
    Row,
    RowError,
    content_id,
    parse_line,
)

SPEC_ROW = {
    "id": "abc",
    "ts": "2026-03-01T12:00:00Z",
    "provider": "Claude",
    "model": "claude-sonnet",
    "prompt_hash": "p" * 64,
    "output_hash": "o" * 64,
    "session_id": "s1",
    "wallet": "w1",
    "credits_used": 2.5,
    "score": 0.9,
    "meta": {"use_case": "Coding", "latency_ms": 1800, "output_chars": 1200},
}


def line(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_spec_row_is_normalised():
    row = parse_line(line(SPEC_ROW), 1)
    assert row == Row(
        id="abc",
        ts=1772366400.0,
        provider="claude",
        model="claude-sonnet",
        session_id="s1",
        wallet="w1",
        credits_used=2.5,
        score=0.9,
        latency_ms=1800.0,
        output_len=1200.0,
        use_case="coding",
        success=True,
        output_unit="chars",
    )


def test_legacy_thronos_row_is_mapped():
    legacy = {
        "interaction_id": 42,
        "timestamp": 1772366400.25,
        "provider": "gpt",
        "model_id": "gpt-4o",
        "metadata": {"rating": 5, "use_case": "research"},
        "duration": 1.5,
        "error": "timeout",
        "tier": "pro",
        "difficulty": 3,
        "block_hash": "00ab",
    }
    row = parse_line(line(legacy), 1)
    assert isinstance(row, Row)
    assert (row.id, row.ts, row.model) == ("42", 1772366400.25, "gpt-4o")
    assert row.score == 1.0  # five stars
    assert row.latency_ms == 1500.0
    assert row.success is False
    assert row.use_case == "research"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1772366400, 1772366400.0),
        (1772366400123, 1772366400.123),
        ("2026-03-01T12:00:00+00:00", 1772366400.0),
        ("2026-03-01T14:00:00+02:00", 1772366400.0),
        ("2026-03-01 12:00:00", 1772366400.0),
        ("1772366400.5", 1772366400.5),
    ],
)
def test_timestamps_in_every_accepted_form(ts, expected):
    row = parse_line(line({**SPEC_ROW, "ts": ts}))
    assert isinstance(row, Row)
    assert row.ts == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (line({**SPEC_ROW, "provider": None}), "no provider"),
        (line({k: v for k, v in SPEC_ROW.items() if k != "provider"}), "no provider"),
        (line({**SPEC_ROW, "provider": ""}), "provider"),
        (line(SPEC_ROW).replace(b'"score":0.9', b'"score":NaN'), "not valid JSON"),
        (line(SPEC_ROW).replace(b'"score":0.9', b'"score":1e400'), "infinity"),
        (b'{"provider": "x", "ts": 1772366400, "pad": "' + b"a" * MAX_LINE_BYTES + b'"}', "bytes"),
        (line({**SPEC_ROW, "ts": None}), "no ts"),
        (line({**SPEC_ROW, "ts": "yesterday"}), "neither ISO 8601 nor epoch"),
        (line({**SPEC_ROW, "ts": 10}), "outside 2000..2100"),
        (line({**SPEC_ROW, "ts": 9e15}), "outside 2000..2100"),
        (line({**SPEC_ROW, "id": {"a": 1}}), "id is a dict"),
        (line({**SPEC_ROW, "provider": 42}), "provider is not a non-empty string"),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(raw, reason):
    result = parse_line(raw, 7)
    assert isinstance(result, Rejection)
    assert result.line == 7
    assert reason in result.reason
    assert "\n" not in result.reason


@pytest.mark.parametrize(
    ("change", "field", "dropped"),
    [
        ({"score": "high"}, "score", "score"),
        ({"score": 7}, "score", "score"),
        ({"score": -0.2, "eval": {"auto_score": 9}}, "score", "score,eval.auto_score"),
        ({"credits_used": -1}, "credits_used", "credits_used"),
        ({"wallet": [1]}, "wallet", "wallet"),
        ({"meta": [1]}, "use_case", "meta"),
        ({"meta": {"use_case": "coding", "latency_ms": -5}}, "latency_ms", "meta.latency_ms"),
        ({"score": None, "meta": {"rating": 9}}, "score", "meta.rating"),
    ],
)
def test_an_unreadable_field_costs_that_field_never_the_row(change, field, dropped):
    row = parse_line(line({**SPEC_ROW, **change}), 7)
    assert isinstance(row, Row), row
    assert row.id == "abc" and row.provider == "claude"
    assert getattr(row, field) in (None, 0.0)
    assert row.dropped == dropped


@pytest.mark.parametrize(
    ("fields", "success"),
    [
        ({}, True),
        ({"error": "boom"}, False),
        ({"error": ""}, True),
        ({"success": False}, False),
        ({"error_code": 429}, False),
        ({"error_code": None, "error": ""}, True),
        ({"status_code": 503}, False),
        ({"status_code": -1}, False),
        ({"status": "timeout"}, False),
        ({"meta": {"status": "ok", "use_case": "coding"}}, True),
        ({"metadata": {"status": "failed"}, "meta": None}, False),  # a null meta: metadata
    ],
)
def test_success_is_false_when_any_source_says_the_call_failed(fields, success):
    row = parse_line(line({**SPEC_ROW, **fields}))
    assert isinstance(row, Row) and row.success is success


def test_a_boolean_verdict_reads_as_a_score():
    assert parse_line(line({**SPEC_ROW, "score": True})).score == 1.0
    event = parse_line(b'{"interaction_id": "x", "quality_score": false}')
    assert event.score == 0.0


def test_derived_id_is_deterministic_and_content_based():
    row = {k: v for k, v in SPEC_ROW.items() if k != "id"}
    first = parse_line(line(row))
    reordered = parse_line(line(dict(reversed(list(row.items())))))
    changed = parse_line(line({**row, "score": 0.8}))
    assert first.id == reordered.id == content_id(row)
    assert first.id != changed.id
    assert first.id.startswith("h") and len(first.id) == 33


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    *SPEC_ROW,
    "timestamp",
    "metadata",
    "latency_ms",
    "duration",
    "model_id",
    "success",
    "error",
    "interaction_id",
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_reject_never_raise(raw):
    result = parse_line(raw, 3)
    assert isinstance(result, Row | Rejection)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=len(FIELDS)))
def test_any_object_with_contract_fields_parses_or_rejects(obj):
    merged = {**SPEC_ROW, **obj}
    try:
        raw = orjson.dumps(merged)
    except TypeError:  # integers over 64 bits cannot even be written as a ledger line
        return
    result = parse_line(raw, 1)
    if isinstance(result, Row):
        assert result.provider and result.provider == result.provider.lower()
        assert result.credits_used >= 0 and math.isfinite(result.credits_used)
        assert result.score is None or math.isfinite(result.score)
        assert 946_684_800 <= result.ts < 4_102_444_800


VALID_ROWS = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=30),
        "ts": st.floats(1e9, 4e9),
        "provider": st.text(min_size=1, max_size=12).filter(lambda s: s.strip()),
        "credits_used": st.floats(0, 1e6),
        "score": st.none() | st.floats(0, 1),
        "session_id": st.none() | st.text(min_size=1, max_size=12),
        "wallet": st.none() | st.text(min_size=1, max_size=12),
        "meta": st.fixed_dictionaries(
            {},
            optional={
                "latency_ms": st.floats(0, 1e7),
                "output_chars": st.integers(0, 10**7),
                "use_case": st.text(min_size=1, max_size=10).filter(lambda s: s.strip()),
            },
        ),
    }
)


@settings(max_examples=300, deadline=None)
@given(VALID_ROWS)
def test_valid_rows_survive_the_wire_round_trip(obj):
    row = parse_line(orjson.dumps(obj))
    assert isinstance(row, Row), row
    assert Row.from_wire(orjson.loads(orjson.dumps(row.to_wire()))) == row
    assert Row.from_wire(obj) == row  # a ledger object is read as one, in either dialect


GOOD_WIRE = ["id-1", 1.8e9, "claude", "m", "s", "w", 1.0, 0.5, 900.0, 80.0, "coding", True]


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (0, "", "id is not a string"),
        (0, 7, "id is not a string"),
        (1, 5.0, "ts is not a number in 2000..2100"),
        (1, True, "ts is not a number"),
        (2, None, "provider is not a string"),
        (4, "x" * 201, "session_id is not a string of 1 to 200"),
        (6, -1.0, "credits_used is negative"),
        (6, None, "credits_used is not a finite number"),
        (7, float("nan"), "score is not a finite number"),
        (7, False, "score is not a finite number"),
        (8, float("inf"), "latency_ms is not a finite number"),
        (9, -3, "output_len is negative"),
        (10, 3, "use_case is not a string"),
        (11, 1, "success is not a boolean"),
    ],
)
def test_wire_rows_are_checked_field_by_field(index, value, reason):
    assert Row.from_wire(GOOD_WIRE).id == "id-1"
    wire = list(GOOD_WIRE)
    wire[index] = value
    with pytest.raises(RowError, match=reason):
        Row.from_wire(wire)


def test_a_wire_row_of_the_older_twelve_fields_still_reads():
    row = Row.from_wire(GOOD_WIRE)
    assert row.cost_usd is None and row.dropped is None
    assert Row.from_wire(row.to_wire()) == row and len(row.to_wire()) == len(Row._fields)


@pytest.mark.parametrize(
    "wire", [GOOD_WIRE[:-1], [*GOOD_WIRE, *[None] * len(Row._fields)], "row", 5, None]
)
def test_wire_rows_of_the_wrong_shape_are_refused(wire):
    with pytest.raises(RowError, match="fields, not 12 to|not an object or array"):
        Row.from_wire(wire)
