"""The helpers every other test waits and stops with: they fail, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from processes import stop, stop_all, wait_for

# Ignores SIGTERM, starts a child that outlives it, prints that child's pid, then waits.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie is gone too: it waits only to be reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_wait_for_returns_the_value_and_fails_naming_what_it_awaited():
    assert wait_for(lambda: 3, what="three") == 3
    calls: list[int] = []

    def never() -> None:
        calls.append(1)

    # The description is made at the timeout: it sees every call made until then.
    with pytest.raises(AssertionError, match=r"0.2 s waiting for nothing, after [1-9] calls"):
        wait_for(never, 0.2, lambda: f"nothing, after {len(calls)} calls", 0.05)


def test_stop_kills_a_process_that_ignores_the_signal_and_what_it_left_in_its_group():
    process = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    out, err = stop(process, timeout=1)
    assert process.returncode == -signal.SIGKILL
    assert out == b"" and err is None
    wait_for(lambda: gone(child), 10, f"the child {child} killed with its group")


def test_stop_all_stops_gracefully_and_is_safe_on_exited_processes():
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    running = subprocess.Popen(sleeper, start_new_session=True)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    assert stop_all([running, exited], timeout=20) == [(None, None), (None, None)]
    assert running.returncode == -signal.SIGTERM and exited.returncode == 0
