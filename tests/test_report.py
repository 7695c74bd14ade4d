"""ai_analytics.html: rendered from a document (escaping, tables, missing bars), and written
next to the JSON by a real drain and rendered by a browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from thronos_analytics.analytics.simulate import SimConfig, write
from thronos_analytics.workers.charts import CHART_TITLES
from thronos_analytics.workers.report import render, score_trend

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


DAY = 86400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
EVIL = "<script>alert(1)</script>"


def a_document() -> dict:
    """A small export: two providers, one named to break out of the HTML, a provider with no
    scored calls in one use case and too few in another, a warning, incidents and anomalies."""
    cell = {"score": 0.8, "expected_score": 0.78, "n": 120, "n_eff": 60.0}
    return {
        "generated_at": T0 + 10 * DAY,
        "models": {"anomaly": {"version": "v1", "trained_at": T0, "n_samples": 500}},
        "stats": {"interactions_scored": 500, "interactions_rejected": 3, "anomalies": 2},
        "profiles": {
            "wallets": {"THRw1": {"label": "Coder", "cluster": 0, "sessions": 3}},
            "sessions": {},
            "clusters": [
                {
                    "cluster": 0,
                    "label": "Coder",
                    "size": 40,
                    "description": "codes a lot",
                    "centroid": {"mix_gpt": 0.9, "mix_claude": 0.1},
                },
            ],
        },
        "anomalies": [
            {
                "id": "a1",
                "ts": T0 + DAY,
                "wallet": "THRw1",
                "session_id": "s1",
                "provider": EVIL,
                "model": "m",
                "anomaly_score": 3.2,
                "reasons": ["output length 90,000, 20x the median"],
            },
            {
                "id": "a2",
                "ts": T0 + 2 * DAY,
                "wallet": None,
                "session_id": None,
                "provider": "gpt",
                "model": None,
                "anomaly_score": 2.4,
                "reasons": ["latency 40 s", "credits 900"],
            },
        ],
        "recommendations": {
            "global": {"chat": [{"provider": "gpt"}], "coding": [{"provider": EVIL}]},
            "wallets": {},
            "model": {
                "min_effective_calls": 20.0,
                "use_cases": {
                    "chat": {"gpt": cell, EVIL: {**cell, "n": 3, "n_eff": 3.0}},
                    "coding": {EVIL: cell},  # gpt: no scored calls here
                },
            },
        },
        "warnings": [
            {
                "provider": "gpt",
                "use_case": "chat",
                "since_ts": T0 + 5 * DAY,
                "now": 0.5,
                "before": 0.8,
                "n_since": 90,
                "message": "gpt quality dropped on chat: 0.50 vs 0.80",
            },
        ],
        "incidents": [
            {
                "key": "k1",
                "kind": "latency_regression",
                "provider": EVIL,
                "model": "m",
                "since_ts": T0 + 8 * DAY,
                "until_ts": None,
                "active": True,
                "evidence": {
                    "measure": "p90 latency",
                    "observed": 9.0,
                    "baseline": 2.0,
                    "ratio": 4.5,
                    "calls": 80,
                    "statistic": 30.0,
                    "threshold": 12.0,
                },
                "message": "latency of m up 4.5x",
            },
            {
                "key": "k2",
                "kind": "call_burst",
                "wallet": "THRw1",
                "since_ts": T0 + DAY,
                "until_ts": T0 + 2 * DAY,
                "active": False,
                "evidence": {},
                "message": "burst ended",
            },
        ],
        "suggestions": {"THRw1": [{"text": "Use gpt for coding"}]},
    }


def a_trend() -> dict:
    rows = [
        SimpleNamespace(ts=T0 + i * 3600.0, provider=p, use_case="chat", score=0.8)
        for i in range(240)
        for p in ("gpt", EVIL)
    ]
    return score_trend(rows)


def chart(page: str, key: str) -> str:
    found = re.search(rf'<svg class="chart" id="chart-{key}".*?</svg>', page, re.S)
    assert found, f"no {key} chart"
    return found.group(0)


def test_names_from_the_ledger_are_escaped_everywhere():
    page = render(a_document(), a_trend())
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the page's own filter script
    # In the charts too, which matplotlib wrote.
    assert "&lt;script&gt;" in chart(page, "expected") and "&lt;script&gt;" in chart(
        page, "quality"
    )


def test_the_page_is_one_self_contained_file_with_named_charts():
    page = render(a_document(), a_trend())
    titles = re.findall(r'<svg class="chart"[^>]*>\s*<title[^>]*>([^<]+)</title>', page)
    assert titles == list(CHART_TITLES.values())
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<metadata" not in page
    ids = Counter(re.findall(r'\sid="([^"]+)"', page))
    assert [i for i, n in ids.items() if n > 1] == []  # four SVGs, one page: no id twice


def test_a_missing_bar_says_why():
    svg = chart(render(a_document(), a_trend()), "expected")
    assert "no scored calls" in svg  # gpt in coding
    assert "too few calls (3)" in svg  # the escaped provider in chat


def test_tables_of_flagged_interactions_incidents_warnings_and_rejected_lines():
    rejected = [{"ledger": "ai_ledger.jsonl", "line": 7, "reason": "not valid JSON", "raw": "{x"}]
    page = html.unescape(render(a_document(), a_trend(), rejected=rejected))
    flagged = page[page.index('id="flagged-table"') :]
    assert "output length 90,000, 20x the median" in flagged
    assert "latency 40 s" in flagged and "credits 900" in flagged
    assert flagged.index(">gpt<") < flagged.index(EVIL)  # newest first
    incidents = page[page.index('id="incidents"') : page.index("</section>")]
    assert "latency regression" in incidents and "p90 latency 9.0 vs a baseline of 2.0" in incidents
    assert "1 more ended earlier" in incidents and "burst ended" in incidents
    warnings = page[page.index('id="quality-warnings"') :]
    assert "gpt quality dropped on chat" in warnings and "0.50 vs 0.80 over 90 calls" in warnings
    table = page[page.index('id="rejected-table"') :]
    assert "ai_ledger.jsonl" in table and ">7<" in table and "not valid JSON" in table
    assert "Showing 1 of 3" in page
    assert 'id="suggestions-filter"' in page  # the wallet table's filter


def test_without_rejected_lines_the_page_says_where_they_are():
    page = html.unescape(render(a_document(), a_trend()))
    assert "3 lines were rejected" in page and "<ledger>.rejected.jsonl" in page
    # The dead-letter file's own entries, which name the ledger "source", are taken as is.
    entry = {"source": "b.jsonl", "line": 2, "reason": "no provider", "raw": "{}"}
    assert "b.jsonl" in render(a_document(), a_trend(), rejected=[entry])


def test_an_empty_export_says_why_each_chart_is_missing():
    page = render({"stats": {}})
    assert '<svg class="chart"' not in page
    for why in (
        "No personas yet",
        "No anomalies flagged",
        "No recommender model yet",
        "No scored rows",
        "No active incidents",
        "No active quality warnings",
        "No rejected lines",
    ):
        assert why in page, why


def test_sections_are_the_partials_given_in_order():
    only = render(
        a_document(), a_trend(), sections=["sections/quality.html.j2", "sections/profiles.html.j2"]
    )
    assert re.findall(r'<svg class="chart" id="chart-(\w+)"', only) == ["quality", "personas"]
    assert 'id="incidents"' not in only and 'id="flagged-table"' not in only


def test_score_trend_buckets_the_mean_score_per_provider_and_use_case():
    trend = a_trend()
    assert trend["bucket_s"] == 12 * 3600  # ten days in at most 30 buckets
    assert sorted(trend["providers"]) == sorted(["gpt", EVIL])
    start, mean, calls = trend["pairs"]["gpt|chat"][0]
    assert (start, mean, calls) == (T0, 0.8, 12)


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
    # Marks drawn, each with its tooltip.
    marks = re.findall(
        r'<g id="(?:personas|anomalies|expected|quality)-(?:bar|line)-[\d-]+"><title>', dom
    )
    assert len(marks) > 20 and "<path" in dom
    some_wallet = next(iter(document["suggestions"]))
    assert some_wallet in dom

    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
    # A blank or error page has a handful of colours; the charts have many.
    assert png_colours(shot) > 50
