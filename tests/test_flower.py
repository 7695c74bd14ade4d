"""Flower, as `thronos-analytics flower` starts it: basic auth, the workers, tasks, a browser."""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from test_report import chromium

from thronos_analytics.analytics.simulate import SimConfig, simulate
from thronos_analytics.core.messages import SCORING
from thronos_analytics.stack import free_port

from processes import stop, wait_for

LOGIN = "test:secret"


def get(url: str, login: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def flower(env, workers) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "thronos_analytics.cli", "flower", "--port", str(port)],
        env={**env, "FLOWER_BASIC_AUTH": LOGIN},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, f"flower exited with {process.returncode}"
        try:
            return get(url + "/healthcheck")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, what="flower's healthcheck", interval=0.2)
        yield url
    finally:
        stop(process)


def test_flower_refuses_to_start_without_a_login(env):
    no_login = {k: v for k, v in env.items() if k != "FLOWER_BASIC_AUTH"}
    for command in (["flower"], ["run", "--flower", "--no-demo"]):
        done = subprocess.run(
            [sys.executable, "-m", "thronos_analytics.cli", *command],
            env=no_login,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert b"FLOWER_BASIC_AUTH" in done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "flower"],
        env={**env, "FLOWER_BASIC_AUTH": "admin"},
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2 and b"user:password" in bad.stderr


def test_flower_lists_workers_and_tasks_behind_basic_auth(env, workers, flower, tmp_path):
    from thronos_analytics.core.messages import send_batch

    workers.start("scoring1", SCORING)
    workers.wait_ready()

    assert get(flower + "/api/workers")[0] == 401
    assert get(flower + "/api/workers", "test:wrong")[0] == 401

    def listed() -> dict:
        status, body = get(flower + "/api/workers?refresh=1", LOGIN)
        assert status == 200, body
        found = orjson.loads(body)
        return found if any(name.startswith("scoring1@") for name in found) else {}

    found = wait_for(listed, what="scoring1 listed", interval=0.2)
    name = next(n for n in found if n.startswith("scoring1@"))
    assert SCORING in {q["name"] for q in found[name]["active_queues"]}

    # Task events: a batch sent to the worker shows up in Flower's task list.
    lines, _ = simulate(SimConfig(rows=50, seed=1, bad_rate=0.0))
    from thronos_analytics.core.contract import Row, parse_line

    rows = [row for row in (parse_line(line, i) for i, line in enumerate(lines, 1))]
    send_batch([row for row in rows if isinstance(row, Row)])

    def task_seen() -> dict:
        body = get(flower + "/api/tasks?taskname=thronos.score_batch", LOGIN)[1]
        tasks = orjson.loads(body)
        return {k: t for k, t in tasks.items() if t.get("state") == "SUCCESS"}

    assert wait_for(task_seen, what="a successful score_batch", interval=0.2)

    # The dashboard renders in a browser, logged in, and shows the worker.
    host = flower.removeprefix("http://")
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"http://{LOGIN}@{host}/")
    assert b"Flower" in dom and name.encode() in dom, dom[-2000:]
