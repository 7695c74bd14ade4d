"""Bad input, generated: the contract, the tail producer and the workers never crash, reject
every bad line with a reason, score every good line once, and give the same result twice.
"""

from __future__ import annotations

import math
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from thronos_analytics.core import store
from thronos_analytics.core.contract import Rejection, Row, ScoreEvent, parse_line
from thronos_analytics.core.messages import SCORING, TRAINING, send_batch
from thronos_analytics.producers.dead_letter import DeadLetter
from thronos_analytics.producers.tail import TailProducer

from processes import wait_for

NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 1e308, -1e308, 2**63, 1e-320])
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)
FIELDS = [
    "id",
    "ts",
    "timestamp",
    "provider",
    "model",
    "session_id",
    "wallet",
    "credits_used",
    "score",
    "meta",
    "metadata",
    "latency_ms",
    "duration",
    "success",
    "error",
    "interaction_id",
]


def deeply_nested(depth: int) -> bytes:
    """A row whose meta nests ``depth`` objects, written directly: encoders would recurse."""
    meta = b'{"a":' * depth + b"{}" + b"}" * depth
    return b'{"provider": "x", "ts": 1772366400, "meta": ' + meta + b"}"


def dumps_lax(obj: object) -> bytes:
    """JSON as a lax writer would produce it: NaN and Infinity tokens, huge integers."""
    import json

    return json.dumps(obj, default=str).encode()


BAD_LINES = st.one_of(
    st.binary(max_size=200),  # random bytes, invalid UTF-8
    st.builds(lambda b: b[: max(1, len(b) // 2)], st.just(b'{"provider": "claude", "ts": 1')),
    st.builds(dumps_lax, st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=8)),
    st.builds(deeply_nested, st.integers(100, 3000)),
    st.builds(lambda ts: dumps_lax({"provider": "x", "ts": ts}), NUMBERS | TEXT),
    st.just(b'{"provider": "a", "provider": "b", "ts": 1772366400, "score": "0.5"}'),
)


def good_line(tag: str, i: int, provider: str, score: float) -> bytes:
    return orjson.dumps(
        {
            "id": f"{tag}-{i}-\u00e9\u4e2d",
            "ts": 1772366400 + i,
            "provider": provider,
            "session_id": f"s{i % 3}",
            "wallet": "w\u2603",
            "credits_used": 1.5,
            "score": score,
            "meta": {"use_case": "coding", "latency_ms": 900, "output_chars": 1000},
        }
    )


GOOD = st.tuples(st.sampled_from(["claude", "gpt", "Gemini"]), st.floats(0, 1))


@settings(max_examples=300, deadline=None)
@given(BAD_LINES)
@example(b'{"provider": "x", "ts": 1772366400, "meta": {"pad": "' + b"a" * (10 << 20) + b'"}}')
@example(b"\xff\xfe{}")
def test_contract_never_raises_and_explains_every_rejection(line):
    result = parse_line(line, 42)
    if isinstance(result, Rejection):
        assert result.line == 42 and result.reason and "\n" not in result.reason
        assert len(result.to_json("f")["raw"]) <= 2048
    elif isinstance(result, ScoreEvent):
        assert result.interaction_id and (result.score is None or 0 <= result.score <= 1)
    else:
        assert isinstance(result, Row)
        assert math.isfinite(result.ts) and result.credits_used >= 0


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(st.one_of(BAD_LINES, GOOD), min_size=1, max_size=40))
def test_tail_and_workers_survive_any_mix_and_are_idempotent(trained_pipeline, tmp_path, lines):
    r = trained_pipeline
    tag = uuid.uuid4().hex[:8]
    content, good_ids, bad = [], {}, 0
    for i, item in enumerate(lines):
        raw = good_line(tag, i, *item) if isinstance(item, tuple) else item.replace(b"\n", b" ")
        parsed = parse_line(raw, i + 1)
        if not raw.strip():
            continue
        if isinstance(parsed, Row):
            good_ids[parsed.id] = parsed.ts
        elif isinstance(parsed, Rejection):
            bad += 1
        content.append(raw)
    ledger = tmp_path / f"{tag}.jsonl"
    ledger.write_bytes(b"\n".join(content) + b"\n")
    rejected_before = store.counts(r)["interactions_rejected"]

    for _ in range(2):  # the same file fed twice
        dead_letter = DeadLetter(tmp_path / f"{tag}.rejected.jsonl", ledger.name, r)
        tail = TailProducer(
            ledger,
            send_batch,
            dead_letter.record,
            batch_size=7,
            checkpoint=tmp_path / f"{tag}.{_}.checkpoint",
        )
        tail.step()
        wait_for(
            lambda: not store.unflagged(r, list(good_ids.items())),
            timeout=60,
            what="good rows scored",
        )
        assert store.counts(r)["interactions_rejected"] - rejected_before == bad
    dead = (tmp_path / f"{tag}.rejected.jsonl").read_bytes().splitlines() if bad else []
    assert all(orjson.loads(line)["reason"] for line in dead)


def test_workers_reject_malformed_messages_and_score_the_rest(trained_pipeline):
    r = trained_pipeline
    good = orjson.loads(good_line("msg", 1, "claude", 0.9))
    payload = [
        good,
        "text",
        5,
        None,
        [1],
        {"provider": ""},
        {**good, "id": {"x": 1}},
        {**good, "ts": "never"},
        {**good, "id": "msg-dropped", "credits_used": -3},  # costs its credits, not the row
    ]
    before = store.counts(r)["interactions_rejected"]
    send_batch_raw(payload)
    wait_for(lambda: store.flag_of(r, good["id"]), what="the good row scored")
    wait_for(lambda: store.flag_of(r, "msg-dropped"), what="the row without credits scored")
    wait_for(
        lambda: store.counts(r)["interactions_rejected"] - before == len(payload) - 2,
        what="rejections",
    )
    assert store.dropped_fields(r)["credits_used"] == 1
    reasons = [rejection["reason"] for rejection in store.latest_rejections(r, len(payload))]
    assert any("not an object" in reason for reason in reasons)


def send_batch_raw(payload: list) -> None:
    """Publish a message the way a buggy or hostile producer could: unvalidated."""
    from thronos_analytics.workers.celery_app import app

    app.send_task("thronos.score_batch", args=[payload])


@pytest.fixture
def trained_pipeline(env, r, workers, tmp_path_factory):
    """Real workers with a model already trained, shared by the examples of one test."""
    from thronos_analytics.analytics.simulate import SimConfig, write
    from thronos_analytics.workers.tasks import retrain_anomaly

    from recount import ledger_rows

    worker_env = {"THRONOS_MIN_TRAIN_ROWS": str(10**9)}
    workers.start("scoring1", SCORING, extra_env=worker_env)
    workers.start("training", TRAINING, extra_env=worker_env)
    workers.wait_ready()
    ledger = tmp_path_factory.mktemp("seed") / "ledger.jsonl"
    write(SimConfig(rows=1500, seed=21), ledger)
    send_batch(ledger_rows(ledger))
    wait_for(lambda: store.counts(r)["interactions_seen"] == 1500, what="seed rows")
    assert "version" in retrain_anomaly.delay(force=True).get(timeout=120)
    wait_for(lambda: store.counts(r)["interactions_scored"] == 1500, what="seed rows scored")
    return r
