"""The ledger writer with threads recording at once: group commit against one fsync per call.

    python -m benchmarks.ledger_writes [--dir D]    # JSON; also a section of throughput.py

``Ledger`` (``producers/ai_ledger.py``) writes each line at once and lets the lines that
came during an fsync share the next one. The baseline is the writer it replaced: open,
write, fsync and close per call, under one lock. Both append the same rows into a file of
the same directory, alternately, best of ``REPEATS``; every call returns only once its line
is on disk in both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

THREADS = (1, 4, 16)
ROWS = 800
REPEATS = 3


class PerCallLedger:
    """The writer before group commit: one open, write, fsync and close per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.fsyncs = 0

    def append(self, row: dict[str, Any]) -> None:
        line = orjson.dumps(row) + b"\n"
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
                self.fsyncs += 1
            finally:
                os.close(fd)


def timed(make: Callable[[Path], Any], path: Path, threads: int) -> dict[str, float]:
    path.unlink(missing_ok=True)
    ledger = make(path)
    each = ROWS // threads

    def record(t: int) -> None:
        for i in range(each):
            # About a real row's size: hashes, ids, a few meta fields.
            ledger.append({"id": f"{t}-{i}", "provider": "claude", "pad": "x" * 400})

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(record, range(threads)))
    seconds = time.perf_counter() - started
    rows = each * threads
    assert len(path.read_bytes().splitlines()) == rows
    return {"rows_per_s": round(rows / seconds), "fsyncs_per_row": round(ledger.fsyncs / rows, 3)}


def measure(directory: Path) -> list[dict[str, Any]]:
    from thronos_analytics.producers.ai_ledger import Ledger

    out = []
    for threads in THREADS:
        ours, theirs = [], []
        for _ in range(REPEATS):
            ours.append(timed(Ledger, directory / "group.jsonl", threads))
            theirs.append(timed(PerCallLedger, directory / "per_call.jsonl", threads))
        best = max(ours, key=lambda x: x["rows_per_s"])
        base = max(theirs, key=lambda x: x["rows_per_s"])
        out.append(
            {
                "threads": threads,
                "group_commit": best,
                "per_call": base,
                "ratio": round(best["rows_per_s"] / base["rows_per_s"], 2),
            }
        )
    return out


def markdown(results: list[dict[str, Any]]) -> list[str]:
    return [
        "### The ledger writer, threads recording at once",
        "",
        f"`benchmarks/ledger_writes.py`: {ROWS} rows of about 450 bytes split over the"
        " threads, each call returning once its line is on disk; `Ledger` (group commit)"
        " against the writer it replaced (open, write, fsync, close per call), alternately,"
        f" best of {REPEATS}, on the disk the bench's scratch directory is on.",
        "",
        "| threads | group commit rows/s | fsyncs per row | per call rows/s | fsyncs per row"
        " | ratio |",
        "|---|---|---|---|---|---|",
        *(
            f"| {x['threads']} | {x['group_commit']['rows_per_s']:,}"
            f" | {x['group_commit']['fsyncs_per_row']} | {x['per_call']['rows_per_s']:,}"
            f" | {x['per_call']['fsyncs_per_row']} | {x['ratio']}× |"
            for x in results
        ),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a tmp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        results = measure(Path(directory))
    sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
