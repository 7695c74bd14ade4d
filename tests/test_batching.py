"""Micro-batching loses no row and sends none twice: the Outbox and the tail producer, into
a real private Redis and, end to end, through a real scoring worker to one flag per row.

Correctness only: no assertion here depends on how fast the machine is, except that a lone
row must go out long before a linger of a minute would have let it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import redis

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.core import keys, store
from thronos_analytics.core.contract import Row, parse_line
from thronos_analytics.core.messages import RECEIPT_ROWS, SCORING, TRAINING, send_batch
from thronos_analytics.core.store.shards import all_shards
from thronos_analytics.producers import receipts as receipts_module
from thronos_analytics.producers.backfill import backfill
from thronos_analytics.producers.emit import Outbox
from thronos_analytics.producers.receipts import Receipts
from thronos_analytics.producers.tail import TailProducer

from processes import wait_for
from recount import assert_published_once, ledger_rows, queued_batches


def simulated_lines(tmp_path: Path, n: int, seed: int) -> list[bytes]:
    ledger = tmp_path / f"sim-{seed}.jsonl"
    write(SimConfig(rows=n, seed=seed, drop=False), ledger)
    return ledger.read_bytes().splitlines()


def simulated_rows(tmp_path: Path, n: int, seed: int) -> list[Row]:
    parsed = [parse_line(line) for line in simulated_lines(tmp_path, n, seed)]
    return [row for row in parsed if isinstance(row, Row)]


class Recording:
    """A send function that hands each batch on (to ``send_batch``), then records it: a
    recorded batch is already on the queue."""

    def __init__(
        self, forward: Callable[[Sequence[Row]], None] = send_batch, fail_every: int = 0
    ) -> None:
        self.forward = forward
        self.batches: list[list[str]] = []
        self.calls = 0
        self.fail_every = fail_every
        self.lock = threading.Lock()

    def __call__(self, rows: Sequence[Row]) -> None:
        with self.lock:
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                raise ConnectionError("broker hiccup (simulated)")
        self.forward(rows)
        if rows:  # the tail may hand on none, only to move its checkpoint
            with self.lock:
                self.batches.append([row.id for row in rows])


def put_from_threads(outbox: Outbox, rows: list[Row], threads: int) -> None:
    def worker(part: list[Row]) -> None:
        for i, row in enumerate(part):
            outbox.put(row)
            if i % 50 == 0:
                time.sleep(0.001)  # let batches of many sizes form

    pool = [threading.Thread(target=worker, args=(rows[k::threads],)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def test_outbox_sends_every_row_once_in_batches_of_at_most_batch_size(r, env, tmp_path):
    rows = simulated_rows(tmp_path, 3000, seed=21)
    send = Recording(fail_every=7)  # every 7th send fails: the batch must be sent again
    outbox = Outbox(send, batch_size=16, linger_ms=2)
    put_from_threads(outbox, rows, threads=4)
    assert outbox.close(60)

    queued = queued_batches(r)
    assert queued == send.batches  # what the Outbox sent is what reached the broker
    ids = Counter(i for batch in queued for i in batch)
    assert set(ids) == {row.id for row in rows}
    assert max(ids.values()) == 1, "a row was sent twice"
    assert max(map(len, queued)) <= 16
    assert len(queued) > 3000 / 16 and outbox.dropped == 0


def test_a_lone_row_goes_out_at_once_as_a_batch_of_one(r, env, tmp_path):
    row = simulated_rows(tmp_path, 5, seed=22)[0]
    send = Recording()
    # A linger of a minute: if the lone row waited for it, flush would time out.
    outbox = Outbox(send, batch_size=500, linger_ms=60_000)
    outbox.put(row)
    assert outbox.flush(10)
    assert send.batches == [[row.id]]
    assert queued_batches(r) == [[row.id]]
    outbox.close(0)


def test_a_row_alone_after_a_quiet_linger_window_also_goes_alone(r, env, tmp_path):
    first, second = simulated_rows(tmp_path, 5, seed=23)[:2]
    send = Recording()
    outbox = Outbox(send, batch_size=500, linger_ms=50)
    outbox.put(first)
    assert outbox.flush(10)
    time.sleep(0.2)  # longer than the linger: the outbox is idle again
    outbox.put(second)
    assert outbox.flush(10)
    assert send.batches == [[first.id], [second.id]]
    outbox.close(0)


def append_lines(ledger: Path, lines: list[bytes], chunks: int) -> None:
    size = -(-len(lines) // chunks)
    for start in range(0, len(lines), size):
        with ledger.open("ab") as f:
            f.write(b"".join(line + b"\n" for line in lines[start : start + size]))
        time.sleep(0.005)  # paces the writes: the tail meets the ledger in many states


@contextmanager
def tailing(
    tmp_path: Path,
    batch_size: int,
    linger_ms: float,
    send: Callable[[Sequence[Row]], None] = send_batch,
    confirm_with: redis.Redis | None = None,
) -> Iterator[tuple[Path, Recording]]:
    """An empty ledger followed by a running tail producer, stopped on exit."""
    ledger = tmp_path / "ai_ledger.jsonl"
    ledger.touch()
    recording = Recording(send)
    tail = TailProducer(
        ledger,
        recording,
        lambda _: None,
        batch_size,
        linger_ms=linger_ms,
        confirm_with=confirm_with,
    )
    threading.Thread(target=tail.run, daemon=True).start()
    try:
        yield ledger, recording
    finally:
        tail.stop.set()


def test_tail_sends_every_line_once_in_small_batches(r, env, tmp_path):
    lines = simulated_lines(tmp_path, 2000, seed=24)
    with tailing(tmp_path, batch_size=25, linger_ms=1) as (ledger, send):
        append_lines(ledger, lines, chunks=40)
        wait_for(lambda: sum(map(len, send.batches)) >= len(lines), what="every line sent")
    queued = queued_batches(r)
    assert queued == send.batches
    ids = [i for batch in queued for i in batch]
    assert ids == [parse_line(line).id for line in lines]  # all, once, in ledger order
    assert max(map(len, queued)) <= 25


def test_tail_sends_a_lone_line_as_a_batch_of_one(r, env, tmp_path):
    with tailing(tmp_path, batch_size=500, linger_ms=1) as (ledger, send):
        line = orjson.dumps({"id": "lone", "ts": 1772366400, "provider": "claude"})
        append_lines(ledger, [line], chunks=1)
        wait_for(lambda: send.batches, timeout=10, what="the lone line sent")
    assert send.batches == [["lone"]]


@pytest.fixture
def scoring_with_model(r, env, workers, tmp_path):
    """A scoring worker and a published anomaly model, trained on 1,500 rows.

    The rows wait in PENDING until the worker, seeing enough of them, has the training
    worker fit the first model, which then drains them to scoring.
    """
    workers.start("scoring1", SCORING)
    workers.start("training", TRAINING)
    try:
        workers.wait_ready()
    except redis.ConnectionError:
        # This process's broker connection went stale when an earlier test (in
        # test_producers.py) restarted Redis; the second ping reconnects.
        workers.wait_ready()
    seed_rows = simulated_rows(tmp_path, 1500, seed=25)
    send_batch(seed_rows)
    wait_for_flags(r, len(seed_rows))
    assert store.counts(r)["interactions_scored"] == len(seed_rows)
    assert_published_once(r, seed_rows)
    return seed_rows


def wait_for_flags(r, n: int, timeout: float = 120) -> None:
    def flagged() -> int:
        return store.counts(r)["interactions_scored"]

    wait_for(lambda: flagged() >= n, timeout, lambda: f"{n} flags, {flagged()} so far")


def assert_each_flagged_once(r, seed_rows: list[Row], rows: list[Row]) -> None:
    every = [*seed_rows, *rows]
    counted = store.counts(r)
    assert counted["interactions_seen"] == counted["interactions_scored"] == len(every)
    # Every row has its flag, each published once.
    assert_published_once(r, every)
    calls = sum(store.aggregate_values(r, "session")["calls"].values())
    assert calls == sum(1 for row in every if row.session_id)
    assert counted["pending"] == 0


def test_rows_through_the_outbox_are_scored_exactly_once(r, scoring_with_model, tmp_path):
    rows = simulated_rows(tmp_path, 2500, seed=26)
    send = Recording(fail_every=11)
    outbox = Outbox(send, batch_size=9, linger_ms=3)
    put_from_threads(outbox, rows, threads=3)
    # A batch delivered twice (a producer resending after a timeout) changes nothing.
    send_batch(rows[:9])
    assert outbox.close(60)
    wait_for_flags(r, len(scoring_with_model) + len(rows))
    assert_each_flagged_once(r, scoring_with_model, rows)


def test_rows_through_the_tail_producer_are_scored_exactly_once(r, scoring_with_model, tmp_path):
    lines = simulated_lines(tmp_path, 2500, seed=27)
    rows = [row for row in map(parse_line, lines) if isinstance(row, Row)]
    with tailing(tmp_path, batch_size=40, linger_ms=2) as (ledger, send):
        append_lines(ledger, lines, chunks=60)
        wait_for_flags(r, len(scoring_with_model) + len(rows))
    assert_each_flagged_once(r, scoring_with_model, rows)
    assert max(map(len, send.batches)) <= 40


def test_window_reads_only_what_was_added_and_still_equals_a_full_read(
    r, env, tmp_path, monkeypatch
):
    monkeypatch.setenv("THRONOS_WINDOW_ROWS", "500")
    rows = simulated_rows(tmp_path, 900, seed=28)

    def add(part: list[Row]) -> None:
        for start in range(0, len(part), 70):  # batches, as workers write them
            store.apply_batch(r, part[start : start + 70], None)

    def full_read(limit: int) -> list[Row]:
        store.window._window_reads.clear()
        return store.window_rows(r, limit)

    add(rows[:300])
    assert store.window_rows(r, 500) == rows[:300]
    add(rows[300:450])
    assert store.window_rows(r, 500) == full_read(500) == rows[:450]
    assert store.window_rows(r, 100) == rows[350:450]
    add(rows[450:900])  # past THRONOS_WINDOW_ROWS: the stream drops its oldest batches
    assert store.window_rows(r, 500) == full_read(500) == rows[400:900]
    held = full_read(10_000)  # all the stream holds: the entries with the newest 500 rows
    assert 500 <= len(held) < 500 + 70 and held == rows[900 - len(held) : 900]
    assert full_read(500) == rows[400:900]
    add(rows[:900])  # seen already: the window gets nothing twice
    assert store.window_rows(r, 500) == rows[400:900]
    r.flushall()  # recreated: nothing read before may come back
    add(rows[:10])
    assert store.window_rows(r, 500) == rows[:10]
    for shard in all_shards():  # the stream alone is lost: the rows read before go with it
        r.delete(shard.prefix + keys.WINDOW)
    assert store.window_rows(r, 500) == []


def test_tail_sends_again_the_rows_a_redis_outage_lost(r, scoring_with_model, tmp_path):
    lines = simulated_lines(tmp_path, 300, seed=29)
    rows = [row for row in map(parse_line, lines) if isinstance(row, Row)]
    calls: list[int] = []

    def lossy(batch: Sequence[Row]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            return  # taken, then lost: what kombu does to a message fetched as Redis stops
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        send_batch(batch)

    with tailing(tmp_path, 100, linger_ms=1, send=lossy, confirm_with=r) as (ledger, _):
        append_lines(ledger, lines[:100], chunks=1)
        wait_for(lambda: calls, timeout=10, what="the first batch taken")
        append_lines(ledger, lines[100:], chunks=1)
        wait_for_flags(r, len(scoring_with_model) + len(rows))
    assert_each_flagged_once(r, scoring_with_model, rows)


def test_the_outbox_sends_again_the_rows_the_broker_lost(r, scoring_with_model, tmp_path):
    rows = simulated_rows(tmp_path, 300, seed=33)
    calls: list[int] = []

    def lossy(batch: Sequence[Row]) -> str | None:
        calls.append(len(batch))
        if len(calls) == 1:
            return None  # taken, then lost: what kombu does to a message fetched as Redis stops
        if len(calls) == 2:
            raise ConnectionError("Redis went away")
        return send_batch(batch)

    outbox = Outbox(lossy, batch_size=100, linger_ms=1, confirm_with=r)
    try:
        for row in rows[:100]:
            outbox.put(row)
        assert outbox.flush(10)
        for row in rows[100:]:
            outbox.put(row)
        assert outbox.flush(30)
        wait_for_flags(r, len(scoring_with_model) + len(rows))
        assert_each_flagged_once(r, scoring_with_model, rows)
        wait_for(lambda: outbox.unconfirmed == 0, timeout=10, what="every receipt confirmed")
    finally:
        outbox.close(0)


def test_a_backlog_is_not_sent_again_but_a_batch_lost_from_an_empty_queue_is(
    r, env, tmp_path, monkeypatch
):
    monkeypatch.setattr(receipts_module, "RESEND_AFTER_S", 0.0)
    rows = simulated_rows(tmp_path, 200, seed=30)
    receipts = Receipts(r, send_batch)
    for part in (rows[:120], rows[120:]):
        send_batch(part)
        receipts.add(part)
    receipts.check()  # overdue, but still queued: no worker has taken them yet
    assert queued_batches(r) == [[row.id for row in rows[:120]], [row.id for row in rows[120:]]]
    r.delete(SCORING)  # a worker took both and died before kombu recorded them
    time.sleep(receipts_module.CHECK_EVERY_S)  # check() runs at most once in this long
    receipts.check()
    assert sorted(map(len, queued_batches(r))) == [80, 120]
    assert receipts.waiting == len(rows)


def test_backfill_ends_only_when_every_row_arrived_even_a_lost_batch(
    r, scoring_with_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(receipts_module, "RESEND_AFTER_S", 0.5)
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b"".join(line + b"\n" for line in simulated_lines(tmp_path, 1000, 31)))
    calls: list[int] = []

    def lossy(batch: Sequence[Row]) -> None:
        calls.append(len(batch))
        if len(calls) != 2:  # the second is taken, then lost
            send_batch(batch)

    replay = backfill(ledger, lossy, lambda _: None, batch_size=300, confirm_with=r, timeout=60)
    rows = ledger_rows(ledger)
    assert replay.ids == {row.id: row.ts for row in rows}
    assert store.unseen(r, rows) == []  # Redis has every row once backfill returns
    assert len(calls) == 5 and calls[4] == calls[1]  # four batches, then the lost one again
    wait_for_flags(r, len(scoring_with_model) + len(rows))
    assert_each_flagged_once(r, scoring_with_model, rows)


def test_backfill_takes_a_receipt_for_a_big_batch_and_looks_up_the_rows_of_a_lost_one(
    r, scoring_with_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(receipts_module, "RESEND_AFTER_S", 0.5)
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b"".join(line + b"\n" for line in simulated_lines(tmp_path, 3000, 32)))
    sent: list[tuple[int, str | None]] = []

    def lossy(batch: Sequence[Row]) -> str | None:
        # The second is published, then lost: it has an id, and no worker will see it.
        message = f"lost-{len(sent)}" if len(sent) == 1 else send_batch(batch)
        sent.append((len(batch), message))
        return message

    replay = backfill(
        ledger, lossy, lambda _: None, batch_size=RECEIPT_ROWS, confirm_with=r, timeout=60
    )
    rows = ledger_rows(ledger)
    assert replay.ids == {row.id: row.ts for row in rows}
    assert store.unseen(r, rows) == []
    assert [n for n, _ in sent] == [RECEIPT_ROWS] * 3 + [RECEIPT_ROWS]  # the lost one again
    assert store.received(r, [m for _, m in sent]) == [True, False, True, True]
    wait_for_flags(r, len(scoring_with_model) + len(rows))
    assert_each_flagged_once(r, scoring_with_model, rows)


def test_rows_applied_by_a_worker_that_died_before_its_receipt_are_looked_up(
    r, env, tmp_path, monkeypatch
):
    monkeypatch.setattr(receipts_module, "RECEIPT_WAIT_S", 0.3)
    rows = simulated_rows(tmp_path, RECEIPT_ROWS, seed=33)
    sent: list[int] = []
    receipts = Receipts(r, lambda batch: sent.append(len(batch)))
    receipts.add(rows, "applied-without-a-receipt")
    store.apply_batch(r, rows, None)  # the worker's script ran; its receipt never came
    receipts.check(every=0)
    assert receipts.waiting == len(rows)  # its rows are in: its receipt is awaited a moment
    time.sleep(0.3)
    receipts.check(every=0)
    assert receipts.waiting == 0 and sent == []  # looked up, found, not sent again


def tail_once(ledger: Path, r) -> list[str]:
    """Start a tail producer on ``ledger`` (its checkpoint as left), let it catch up, stop;
    the ids it sent."""
    send = Recording()
    tail = TailProducer(ledger, send, lambda _: None, 100, linger_ms=1, confirm_with=r)
    for _ in range(100):
        if not tail.step():
            break
    return [i for batch in send.batches for i in batch]


def test_a_redis_that_lost_its_state_has_the_ledger_read_again_from_the_top(r, env, tmp_path):
    lines = simulated_lines(tmp_path, 300, seed=28)
    ledger = tmp_path / "ai_ledger.jsonl"
    append_lines(ledger, lines, chunks=1)
    ids = [parse_line(line).id for line in lines]
    assert tail_once(ledger, r) == ids
    assert tail_once(ledger, r) == []  # same Redis: the checkpoint holds
    r.flushall()  # as when Redis restarts on data it cannot read
    assert tail_once(ledger, r) == ids
    # A checkpoint written before states were recorded: no row counted tells the same.
    checkpoint = ledger.with_name(ledger.name + ".checkpoint")
    old = orjson.loads(checkpoint.read_bytes())
    checkpoint.write_bytes(orjson.dumps({k: v for k, v in old.items() if k != "state"}))
    r.flushall()
    r.set(keys.STATE_ID, "whatever")
    assert tail_once(ledger, r) == ids
