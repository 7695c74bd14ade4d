"""Producers: the ledger writer, its outbox across a Redis outage, and the tail producer."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from thronos_analytics.core.contract import Rejection, Row
from thronos_analytics.producers.ai_ledger import Ledger, LedgerWriteError, Recorder
from thronos_analytics.producers.tail import Position, TailProducer

from recount import queued_batches


def queued_ids(r) -> list[str]:
    """Ids of the rows in every score_batch message waiting on the scoring queue."""
    return [row_id for batch in queued_batches(r) for row_id in batch]


def test_record_interaction_hashes_text_and_is_on_disk_before_returning(
    r, env, tmp_path, recorders
):
    recorder = recorders(tmp_path / "ledger.jsonl", linger_ms=0)
    row = recorder.record(
        provider="claude",
        model="claude-sonnet",
        prompt="SECRET PROMPT",
        output="SECRET OUTPUT!",
        session_id="s1",
        wallet="w1",
        credits_used=1.5,
        score=0.9,
        meta={"use_case": "coding", "latency_ms": 900},
    )
    written = (tmp_path / "ledger.jsonl").read_bytes()
    assert b"SECRET" not in written
    stored = orjson.loads(written)
    assert stored["id"] == row.id
    assert len(stored["prompt_hash"]) == 64 and stored["meta"]["output_chars"] == 14
    assert recorder.outbox.flush(10)
    assert queued_ids(r) == [row.id]


def test_invalid_interaction_is_refused_and_not_written(env, tmp_path):
    recorder = Recorder(tmp_path / "ledger.jsonl", emit=False)
    with pytest.raises(ValueError, match="credits_used is negative"):
        recorder.record(provider="gpt", credits_used=-2)
    assert not (tmp_path / "ledger.jsonl").exists()


def test_rows_recorded_while_redis_is_down_are_emitted_when_it_returns(
    r, env, tmp_path, redis_server, recorders
):
    recorder = recorders(tmp_path / "ledger.jsonl", batch_size=50, linger_ms=2)
    redis_server.stop()
    try:
        started = time.monotonic()
        rows = [recorder.record(provider="gemini", score=0.5, wallet="w") for _ in range(200)]
        # The caller is never held up by the outage (each call is a local append).
        assert time.monotonic() - started < 10
        assert len((tmp_path / "ledger.jsonl").read_bytes().splitlines()) == 200
        assert not recorder.outbox.flush(0.5)  # nothing could be sent yet
    finally:
        redis_server.start()
    assert recorder.outbox.flush(60)
    assert sorted(queued_ids(r)) == sorted(row.id for row in rows)


def test_ledger_error_names_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions
        locked = Path("/proc/thronos/ledger.jsonl")
    with pytest.raises(LedgerWriteError, match=str(locked)):
        Ledger(locked / "ai_ledger.jsonl" if locked.name == "locked" else locked).append({"a": 1})


def test_threads_appending_at_once_each_get_their_line_once_whole_and_in_order(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    threads, each = 8, 250

    def append(t: int) -> None:
        for i in range(each):
            ledger.append({"id": f"t{t}-{i}", "thread": t, "i": i, "pad": "x" * (i % 300)})

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(append, range(threads)))
    ledger.close()
    rows = [orjson.loads(line) for line in (tmp_path / "ledger.jsonl").read_bytes().splitlines()]
    assert len(rows) == threads * each
    for t in range(threads):  # every line once, each thread's in the order it wrote them
        assert [row["i"] for row in rows if row["thread"] == t] == list(range(each))


def test_a_rotated_ledger_is_followed_and_the_old_file_keeps_its_lines(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append({"id": "a"})
    path.rename(tmp_path / "ledger.jsonl.1")  # what logrotate does
    ledger.append({"id": "b"})
    path.unlink()  # deleted outright: the next line starts a new file
    ledger.append({"id": "c"})
    assert (tmp_path / "ledger.jsonl.1").read_bytes() == b'{"id":"a"}\n'
    assert path.read_bytes() == b'{"id":"c"}\n'


class Collected:
    """What the tail producer handed on, in order."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.rejections: list[Rejection] = []

    def send(self, rows):
        self.rows += rows

    def reject(self, rejections):
        self.rejections += rejections

    @property
    def ids(self) -> list[str]:
        return [row.id for row in self.rows]


def ledger_line(i: int) -> bytes:
    return orjson.dumps({"id": f"r{i}", "ts": 1772366400 + i, "provider": "claude"}) + b"\n"


def tail_of(ledger: Path, out: Collected) -> TailProducer:
    return TailProducer(ledger, out.send, out.reject, batch_size=3)


def test_tail_waits_for_a_partial_line_and_resumes_from_its_checkpoint(tmp_path):
    ledger = tmp_path / "ai_ledger.jsonl"
    out = Collected()
    ledger.write_bytes(ledger_line(1) + ledger_line(2) + b"not json\n" + ledger_line(3)[:10])
    tail = tail_of(ledger, out)
    tail.step()
    assert out.ids == ["r1", "r2"]
    assert [(rej.line, rej.reason[:14]) for rej in out.rejections] == [(3, "not valid JSON")]
    with ledger.open("ab") as f:
        f.write(ledger_line(3)[10:] + ledger_line(4))
    tail.step()
    assert out.ids == ["r1", "r2", "r3", "r4"]

    # A new producer (a restart) starts at the checkpoint: nothing skipped, nothing repeated.
    with ledger.open("ab") as f:
        f.write(ledger_line(5))
    again = Collected()
    tail_of(ledger, again).step()
    assert again.ids == ["r5"] and again.rows[0] == parse_row(5)
    assert Position.load(tail.checkpoint).line == 6


def parse_row(i: int) -> Row:
    from thronos_analytics.core.contract import parse_line

    row = parse_line(ledger_line(i).strip())
    assert isinstance(row, Row)
    return row


def test_tail_survives_truncation_and_rotation(tmp_path):
    ledger = tmp_path / "ai_ledger.jsonl"
    out = Collected()
    ledger.write_bytes(ledger_line(1) + ledger_line(2))
    tail = tail_of(ledger, out)
    tail.step()

    ledger.write_bytes(ledger_line(3))  # truncated and rewritten, shorter than before
    tail.step()
    assert out.ids == ["r1", "r2", "r3"]

    with ledger.open("ab") as f:
        f.write(ledger_line(4))
    ledger.rename(tmp_path / "ai_ledger.jsonl.1")  # rotated: the old file got one more row
    ledger.write_bytes(ledger_line(5))
    for _ in range(3):
        tail.step()
    assert out.ids == ["r1", "r2", "r3", "r4", "r5"]
