"""Waiting for a condition, and stopping the processes a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true; that.

    Fails after ``timeout`` seconds, naming ``what`` was awaited (a function is called then,
    so it can describe the state at that moment).
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)
    return value


def stop(
    process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> tuple[Any, Any]:
    """Stop one process as ``stop_all`` does; what it wrote to its pipes (stdout, stderr)."""
    return stop_all([process], sig, timeout)[0]


def stop_all(
    processes: Iterable[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 20.0
) -> list[tuple[Any, Any]]:
    """Send each running process ``sig``, and give them ``timeout`` seconds together to exit;
    then SIGKILL whichever is late. A process that leads its own group (started with
    ``start_new_session``) takes its whole group with it: what it left running (a pool
    child) is killed too. Pipes are read meanwhile, so output cannot block an exit; what each
    wrote to them, as ``communicate`` returns it. Safe on a process that has exited.

    ``sig`` goes to the process alone: a Celery worker stops its pool children itself, after
    their running task, which a signal to the group would kill halfway.
    """
    processes = list(processes)
    groups = {p.pid for p in processes if _leads_group(p)}  # before exiting ends the answer
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
    deadline = time.monotonic() + timeout
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            _kill(process, process.pid in groups)
            outputs.append(process.communicate())
    # A group's id stays reserved while any of its members lives, so this hits no stranger.
    for group in groups:
        _kill_group(group)
    return outputs


def _leads_group(process: subprocess.Popen) -> bool:
    if process.returncode is not None:  # reaped: its pid may be another process's now
        return False
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def _kill(process: subprocess.Popen, group: bool) -> None:
    if group:
        _kill_group(process.pid)
    else:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
