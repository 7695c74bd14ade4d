"""ai_analytics.html: written next to the JSON by a real drain, and rendered by a browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import pytest
from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.workers.report import CHART_TITLES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(tmp_path: Path, *args: str) -> bytes:
    if CHROMIUM is None:
        # CI installs it (.ci/run), so there a missing browser is a failure, not a skip.
        missing = "chromium is not installed: `apt-get install -y chromium` (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    profile.mkdir()
    done = subprocess.run(
        [CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout


def png_colours(path: Path, every: int = 7) -> int:
    """How many distinct colours a sample of the (8-bit RGB/RGBA) PNG's pixels has."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    seen = set()
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + a) & 255
            elif kind == 2:
                row[i] = (row[i] + b) & 255
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % every == 0:
            seen.update(bytes(row[x : x + 3]) for x in range(0, stride, channels * every))
        previous = row
    return len(seen)


def test_drain_writes_a_self_contained_report_that_a_browser_renders(env, r, tmp_path):
    ledger = Path(env["THRONOS_LEDGER"])
    write(SimConfig(rows=3000, seed=11), ledger)
    done = subprocess.run(
        [sys.executable, "-m", "thronos_analytics.cli", "run", "--drain", "--no-demo"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = orjson.loads(done.stdout)
    page = Path(env["THRONOS_DATA_DIR"]) / "ai_analytics.html"
    assert summary["html_path"] == str(page)
    source = page.read_text()
    document = orjson.loads(page.with_suffix(".json").read_bytes())

    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", source)
    assert "<link" not in source and "@import" not in source

    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).decode()
    titles = re.findall(r'<svg class="chart"[^>]*>\s*<title[^>]*>([^<]+)</title>', dom)
    assert titles == list(CHART_TITLES.values())
    # Every persona, provider, use case and warning made it onto the page.
    for cluster in document["profiles"]["clusters"]:
        assert cluster["label"] in dom
    for use_case in document["recommendations"]["model"]["use_cases"]:
        assert f">{use_case}<" in dom
    text = html.unescape(dom)
    for warning in document["warnings"]:
        assert warning["message"] in text
    assert dom.count("<rect") > 20 and "<path" in dom
    some_wallet = next(iter(document["suggestions"]))
    assert some_wallet in dom

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    # A blank or error page has a handful of colours; the charts have many.
    assert png_colours(shot) > 50
