"""Settings: read from the environment once per process, with one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from thronos_analytics.core.settings import Settings, settings, use_settings


@pytest.fixture(autouse=True)
def fresh():
    use_settings(None)
    yield
    use_settings(None)


def test_read_once_per_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("THRONOS_WINDOW_ROWS", "1234")
    first = settings()
    monkeypatch.setenv("THRONOS_WINDOW_ROWS", "99")
    assert settings() is first and first.window_rows == 1234
    use_settings(None)
    assert settings().window_rows == 99


def test_command_line_ledgers_win_without_touching_the_process_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("THRONOS_LEDGER", str(tmp_path / "env.jsonl"))
    named = settings([tmp_path / "cli.jsonl"])
    assert named.ledgers == (tmp_path / "cli.jsonl",)
    assert settings().ledgers == (tmp_path / "env.jsonl",)


def test_empty_is_unset_and_the_broker_defaults_to_redis(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("THRONOS_RATING_SCALE", "")
    monkeypatch.setenv("REDIS_URL", "redis://h:1/0")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    config = Settings.from_env()
    assert config.rating_scale == "auto"
    assert config.broker_url == "redis://h:1/0"
    moved = config.with_stack("redis://other:2/0")
    assert (moved.redis_url, moved.broker_url) == ("redis://other:2/0", "redis://other:2/0")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("THRONOS_WINDOW_ROWS", "lots", "THRONOS_WINDOW_ROWS='lots': input should be a valid"),
        ("THRONOS_BATCH_SIZE", "0", "THRONOS_BATCH_SIZE='0': input should be greater than"),
        ("THRONOS_RATING_SCALE", "stars", "THRONOS_RATING_SCALE='stars': input should be 'auto'"),
        ("THRONOS_CONTAMINATION", "0.01", "is replaced by THRONOS_ANOMALY_LEVEL"),
    ],
)
def test_a_bad_value_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        Settings.from_env()
    message = str(exited.value)
    assert says in message and "\n" not in message


def test_the_command_line_shows_a_bad_setting_in_one_line(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "THRONOS_DATA_DIR": str(tmp_path), "THRONOS_LINGER_MS": "x"}
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "THRONOS_LINGER_MS='x'" in lines[0], done.stderr
