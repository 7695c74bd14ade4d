"""``ai_analytics.html``: the export as a page a person reads, written next to the JSON.

The page is one self-contained file: inline CSS, inline SVG charts drawn here, and a few
lines of inline JavaScript to filter the wallet table, so it opens offline, from a mail
attachment or a file share, with no CDN. It is built from the analytics document (the
dict written to ``ai_analytics.json``) plus, for the quality trend, the mean score per
provider over time (:func:`score_trend`), which the document does not carry.

Each chart is an ``<svg role="img">`` whose ``<title>`` names it, with labelled axes and
units, sized to fit a screen.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")
WIDTH = 900  # every chart's viewBox width; CSS scales it to the page
MARGIN = {"left": 70, "right": 150, "top": 20, "bottom": 50}
# Bucket widths tried for time axes, smallest first; the first giving <= MAX_BUCKETS wins.
BUCKETS_S = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 60
TREND_BUCKETS = 30  # fewer, wider buckets: a mean score over a few calls is mostly noise
MIN_TREND_CALLS = 5  # a bucket with fewer calls is too noisy to plot a mean for
CHART_TITLES = {
    "personas": "Personas: sessions per persona",
    "anomalies": "Anomaly timeline by provider",
    "expected": "Expected score per provider for each use case",
    "quality": "Quality trend per provider",
}


def bucket_seconds(span_s: float, most: int = MAX_BUCKETS) -> int:
    for size in BUCKETS_S:
        if span_s / size <= most:
            return size
    return BUCKETS_S[-1]


def _bucket_label(size: int) -> str:
    return {3600: "hour", 86400: "day", 7 * 86400: "week"}.get(
        size, f"{size // 3600} h" if size < 86400 else f"{size // 86400} days"
    )


def score_trend(rows: Iterable[Any]) -> dict[str, Any]:
    """Mean score per provider, and per provider and use case, in time buckets.

    ``rows`` are :class:`analytics.contract.Row` (anything with ``ts``, ``provider``,
    ``use_case`` and ``score``); rows without a score are left out. Each series is a list
    of ``[bucket_start_ts, mean_score, calls]``.
    """
    scored = [(r.ts, r.provider, r.use_case, r.score) for r in rows if r.score is not None]
    if not scored:
        return {"bucket_s": 86400, "providers": {}, "pairs": {}}
    size = bucket_seconds(max(t for t, *_ in scored) - min(t for t, *_ in scored), TREND_BUCKETS)
    sums: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0])
    for ts, provider, use_case, score in scored:
        start = math.floor(ts / size) * size
        for key in (provider, f"{provider}|{use_case}"):
            cell = sums[(key, start)]
            cell[0] += score
            cell[1] += 1
    series: dict[str, list[list[float]]] = defaultdict(list)
    for (key, start), (total, n) in sorted(sums.items(), key=lambda kv: kv[0][1]):
        series[key].append([start, round(total / n, 4), int(n)])
    return {
        "bucket_s": size,
        "providers": {k: v for k, v in sorted(series.items()) if "|" not in k},
        "pairs": {k: v for k, v in sorted(series.items()) if "|" in k},
    }


# --- drawing -----------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= step * m)
    # Ticks cover [low, high], so no point falls outside the axes.
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int(round((last - first) / step)) + 1)]


def _time_ticks(t0: float, t1: float, count: int = 6) -> list[tuple[float, str]]:
    span = max(t1 - t0, 1.0)
    fmt = "%b %d" if span > 3 * 86400 else "%b %d %H:%M"
    step = span / count
    return [
        (t, datetime.fromtimestamp(t, UTC).strftime(fmt))
        for t in (t0 + i * step for i in range(count + 1))
    ]


def _text(x: float, y: float, text: str, anchor: str = "start", css: str = "tl") -> str:
    return f'<text class="{css}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{_e(text)}</text>'


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(names))}


def _svg(key: str, height: int, body: list[str], description: str) -> str:
    title = CHART_TITLES[key]
    return (
        f'<svg class="chart" id="chart-{key}" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'aria-labelledby="title-{key} desc-{key}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="title-{key}">{_e(title)}</title><desc id="desc-{key}">{_e(description)}</desc>'
        + "".join(body)
        + "</svg>"
    )


class Axes:
    """A plot area: maps data to pixels and draws labelled axes."""

    def __init__(self, height: int, x: tuple[float, float], y: tuple[float, float]) -> None:
        self.height = height
        self.x0, self.x1 = MARGIN["left"], WIDTH - MARGIN["right"]
        self.y0, self.y1 = height - MARGIN["bottom"], MARGIN["top"]
        self.xlim, self.ylim = x, y

    def px(self, x: float) -> float:
        lo, hi = self.xlim
        return self.x0 + (x - lo) / ((hi - lo) or 1) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        lo, hi = self.ylim
        return self.y0 - (y - lo) / ((hi - lo) or 1) * (self.y0 - self.y1)

    def frame(
        self,
        xlabel: str,
        ylabel: str,
        xticks: Iterable[tuple[float, str]] = (),
        yticks: Iterable[tuple[float, str]] = (),
    ) -> list[str]:
        out = [
            f'<line class="axis" x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}"/>',
            f'<line class="axis" x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}"/>',
        ]
        for value, label in xticks:
            x = self.px(value)
            out.append(
                f'<line class="tick" x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y0 + 5}"/>'
            )
            out.append(_text(x, self.y0 + 18, label, anchor="middle"))
        for value, label in yticks:
            y = self.py(value)
            out.append(
                f'<line class="grid" x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}"/>'
            )
            out.append(_text(self.x0 - 6, y + 4, label, anchor="end"))
        mid_x = (self.x0 + self.x1) / 2
        mid_y = (self.y0 + self.y1) / 2
        out.append(_text(mid_x, self.height - 8, xlabel, anchor="middle", css="al"))
        out.append(
            f'<text class="al" transform="translate(16 {mid_y:.0f}) rotate(-90)" '
            f'text-anchor="middle">{_e(ylabel)}</text>'
        )
        return out

    def legend(self, colors: dict[str, str], dashed: Iterable[str] = ()) -> list[str]:
        out = []
        for i, (name, color) in enumerate(colors.items()):
            y = self.y1 + 6 + i * 20
            dash = ' stroke-dasharray="6 4"' if name in set(dashed) else ""
            out.append(
                f'<line x1="{self.x1 + 14}" y1="{y}" x2="{self.x1 + 38}" y2="{y}" '
                f'stroke="{color}" stroke-width="4"{dash}/>'
                f'<text class="tl" x="{self.x1 + 44}" y="{y + 4}">{_e(name)}</text>'
            )
        return out


def personas_chart(profiles: dict[str, Any]) -> str:
    clusters = sorted(profiles.get("clusters", []), key=lambda c: -c["size"])
    wallets: dict[int, int] = defaultdict(int)
    for wallet in profiles.get("wallets", {}).values():
        wallets[wallet["cluster"]] += 1
    if not clusters:
        return '<p class="empty">No personas yet: the profiles model has not been trained.</p>'
    bar_h, gap = 26, 10
    height = MARGIN["top"] + MARGIN["bottom"] + len(clusters) * (bar_h + gap)
    top = max(c["size"] for c in clusters)
    # Room right of the longest bar for its label.
    xticks = _nice_ticks(0, top * 1.5)
    ax = Axes(height, (0, xticks[-1]), (0, 1))
    ax.x0 = 210  # room for the persona names
    body = ax.frame("sessions in the persona (count)", "", [(t, f"{t:,.0f}") for t in xticks])
    for i, c in enumerate(clusters):
        y = MARGIN["top"] + i * (bar_h + gap)
        w = ax.px(c["size"]) - ax.x0
        body.append(
            f"<g><title>{_e(c.get('description', c['label']))}</title>"
            f'<rect x="{ax.x0}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{PALETTE[0]}"/>'
            f'<text class="tl" x="{ax.x0 - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">'
            f"{_e(c['label'])}</text>"
            + _text(
                ax.x0 + w + 6,
                y + bar_h / 2 + 4,
                f"{c['size']:,} sessions · {wallets.get(c['cluster'], 0):,} wallets",
            )
            + "</g>"
        )
    return _svg("personas", height, body, "Horizontal bars: number of sessions per persona.")


def personas_table(profiles: dict[str, Any]) -> str:
    rows = []
    for c in sorted(profiles.get("clusters", []), key=lambda c: -c["size"]):
        centroid = c.get("centroid", {})
        mix = sorted(
            ((k.removeprefix("mix_"), v) for k, v in centroid.items() if k.startswith("mix_")),
            key=lambda kv: -kv[1],
        )
        mix_text = ", ".join(f"{p} {v:.0%}" for p, v in mix if v >= 0.05)
        rows.append(
            f"<tr><td>{_e(c['label'])}</td><td class=num>{c['size']:,}</td>"
            f"<td>{_e(c.get('description', ''))}</td><td>{_e(mix_text)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<table><thead><tr><th>persona</th><th>sessions</th><th>what defines it "
        "(per session, at the cluster centre)</th><th>provider mix</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def anomaly_chart(anomalies: list[dict[str, Any]]) -> str:
    if not anomalies:
        return '<p class="empty">No anomalies flagged.</p>'
    times = [a["ts"] for a in anomalies]
    t0, t1 = min(times), max(times)
    size = bucket_seconds(t1 - t0)
    t0 = math.floor(t0 / size) * size
    t1 = max(math.floor(t1 / size) * size + size, t0 + size)
    counts: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for a in anomalies:
        counts[a["provider"]][math.floor(a["ts"] / size) * size] += 1
    providers = sorted(counts, key=lambda p: -sum(counts[p].values()))
    lane, gap = 56, 8
    height = MARGIN["top"] + MARGIN["bottom"] + len(providers) * (lane + gap)
    ax = Axes(height, (t0, t1), (0, 1))
    peak = max(n for c in counts.values() for n in c.values())
    colors = _colors(providers)
    unit = _bucket_label(size)
    body = ax.frame(
        f"time (UTC) · bar height = anomalies per {unit} (tallest: {peak})", "", _time_ticks(t0, t1)
    )
    bar_w = max((ax.px(t0 + size) - ax.px(t0)) - 1, 1)
    for i, provider in enumerate(providers):
        base = MARGIN["top"] + i * (lane + gap) + lane
        total = sum(counts[provider].values())
        body.append(
            f'<line class="grid" x1="{ax.x0}" y1="{base}" x2="{ax.x1}" y2="{base}"/>'
            f'<text class="tl" x="{ax.x0 - 6}" y="{base - lane / 2 + 4}" text-anchor="end">'
            f"{_e(provider)}</text>"
            f'<text class="tl" x="{ax.x1 + 8}" y="{base - lane / 2 + 4}">{total:,} anomalies</text>'
        )
        for start, n in sorted(counts[provider].items()):
            h = n / peak * (lane - 4)
            when = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M")
            body.append(
                f'<rect x="{ax.px(start):.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{colors[provider]}"><title>{_e(provider)}: {n} '
                f"anomalies in the {unit} from {when} UTC</title></rect>"
            )
    return _svg(
        "anomalies",
        height,
        body,
        f"One lane per provider; bar height is the number of flagged interactions per {unit}.",
    )


def expected_chart(model: dict[str, Any], ranked: dict[str, list[dict[str, Any]]]) -> str:
    use_cases = sorted(model.get("use_cases", {}))
    if not use_cases:
        return '<p class="empty">No recommender model yet.</p>'
    providers = sorted({p for u in use_cases for p in model["use_cases"][u]})
    colors = _colors(providers)
    height = 380
    ax = Axes(height, (0, len(use_cases)), (0, 1))
    yticks = [(t, f"{t:.1f}") for t in _nice_ticks(0, 1)]
    body = ax.frame("use case", "expected score (0–1)", (), yticks)
    group_w = (ax.x1 - ax.x0) / len(use_cases)
    bar_w = group_w * 0.8 / len(providers)
    for g, use_case in enumerate(use_cases):
        gx = ax.x0 + g * group_w + group_w * 0.1
        best = (ranked.get(use_case) or [{}])[0].get("provider")
        body.append(
            f'<text class="tl" x="{ax.x0 + (g + 0.5) * group_w:.1f}" y="{ax.y0 + 18}" '
            f'text-anchor="middle">{_e(use_case)}</text>'
        )
        for i, provider in enumerate(providers):
            cell = model["use_cases"][use_case].get(provider)
            if not cell:
                continue
            expected = cell.get("expected_score", cell["score"])
            x, y = gx + i * bar_w, ax.py(expected)
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{ax.y0 - y:.1f}" '
                f'fill="{colors[provider]}"><title>{_e(use_case)} · {_e(provider)}: expected score '
                f"{expected:.2f} ({cell.get('n_eff', cell.get('n', 0)):,.0f} effective of "
                f"{cell.get('n', 0):,} calls)</title></rect>"
            )
            if provider == best:
                body.append(
                    f'<text class="best" x="{x + bar_w / 2 - 1:.1f}" y="{y - 5:.1f}" '
                    f'text-anchor="middle">★</text>'
                )
    body += ax.legend(colors)
    body.append(_text(ax.x1 + 14, ax.y1 + 16 + len(colors) * 20, "★ recommended"))
    return _svg(
        "expected",
        height,
        body,
        "Grouped bars: for each use case, each provider's expected score; a star marks the "
        "recommended provider.",
    )


def quality_chart(trend: dict[str, Any] | None, warnings: list[dict[str, Any]]) -> str:
    if not trend or not trend.get("providers"):
        return '<p class="empty">No scored rows to draw a trend from.</p>'
    size = trend["bucket_s"]
    series = {
        p: [pt for pt in pts if pt[2] >= MIN_TREND_CALLS] for p, pts in trend["providers"].items()
    }
    # A warning on one use case gets its own dashed line; one on the provider as a whole
    # (no known use case) is marked on the provider's line.
    warned = {}
    for w in warnings:
        key = f"{w['provider']}|{w.get('use_case')}"
        if key in trend.get("pairs", {}):
            warned[f"{w['provider']} · {w.get('use_case')}"] = (
                w,
                [pt for pt in trend["pairs"][key] if pt[2] >= MIN_TREND_CALLS],
            )
        else:
            warned[str(w["provider"])] = (w, [])
    points = [pt for pts in series.values() for pt in pts] + [
        pt for _, pts in warned.values() for pt in pts
    ]
    if not points:
        return '<p class="empty">Too few scored rows per period to draw a trend.</p>'
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points) + size
    lo = min(p[1] for p in points)
    hi = max(p[1] for p in points)
    yticks = _nice_ticks(max(0.0, lo - 0.05), min(1.0, hi + 0.05))
    height = 420
    ax = Axes(height, (t0, t1), (yticks[0], yticks[-1]))
    unit = _bucket_label(size)
    body = ax.frame(
        "time (UTC)",
        f"mean score per {unit} (0–1)",
        _time_ticks(t0, t1),
        [(t, f"{t:.2f}") for t in yticks],
    )
    colors = _colors(list(series))
    base_colors = dict(colors)
    for name, (w, pts) in warned.items():
        if pts:
            colors[name] = base_colors.get(w["provider"], PALETTE[-1])

    def path(pts: list[list[float]]) -> str:
        return " ".join(
            f"{'M' if i == 0 else 'L'}{ax.px(t + size / 2):.1f},{ax.py(v):.1f}"
            for i, (t, v, _) in enumerate(pts)
        )

    for provider, pts in series.items():
        if pts:
            body.append(
                f'<path d="{path(pts)}" fill="none" stroke="{colors[provider]}" stroke-width="2">'
                f"<title>{_e(provider)}: mean score per {unit}, all use cases</title></path>"
            )
    for n, (name, (w, pts)) in enumerate(warned.items()):
        since = w.get("since_ts")
        if since is not None and t0 <= since <= t1:
            x = ax.px(since)
            body.append(
                f'<g class="warning"><title>{_e(w["message"])}</title>'
                f'<rect x="{x:.1f}" y="{ax.y1}" width="{ax.x1 - x:.1f}" height="{ax.y0 - ax.y1}" '
                f'fill="#D55E00" opacity="0.08"/>'
                f'<line x1="{x:.1f}" y1="{ax.y1}" x2="{x:.1f}" y2="{ax.y0}" stroke="#D55E00" '
                f'stroke-width="2" stroke-dasharray="4 3"/>'
                f'<text class="warn" x="{x - 4:.1f}" y="{ax.y1 + 14 + n * 16}" text-anchor="end">'
                f"⚠ {_e(name)} dropped (detected over the calls since "
                f"{datetime.fromtimestamp(since, UTC):%b %d})</text></g>"
            )
        if pts:
            body.append(
                f'<path d="{path(pts)}" fill="none" stroke="{colors[name]}" stroke-width="2.5" '
                f'stroke-dasharray="6 4"><title>{_e(name)}: mean score per {unit}</title></path>'
            )
    body += ax.legend(colors, dashed=[name for name, (_, pts) in warned.items() if pts])
    return _svg(
        "quality",
        height,
        body,
        f"Lines: mean score per {unit} for each provider; dashed lines are the provider and "
        "use case of a quality warning, shaded from where the drop was detected.",
    )


def warnings_list(warnings: list[dict[str, Any]]) -> str:
    if not warnings:
        return '<p class="empty">No active quality warnings.</p>'
    return (
        "<ul class=warnings>"
        + "".join(f"<li>⚠ {_e(w['message'])}</li>" for w in warnings)
        + "</ul>"
    )


INCIDENT_KINDS = {
    "call_burst": "call burst",
    "spend_spike": "spend spike",
    "empty_outputs": "empty outputs",
    "latency_regression": "latency regression",
    "error_spike": "error spike",
}


def incidents_list(incidents: list[dict[str, Any]]) -> str:
    """The active incidents, newest first, each its one line and its evidence in short; the
    ones that ended in the window folded away below."""
    active = [i for i in incidents if i.get("active")]
    ended = [i for i in incidents if not i.get("active")]
    out = (
        '<ul class="incidents">' + "".join(map(_incident_item, active)) + "</ul>"
        if active
        else '<p class="empty">No active incidents.</p>'
    )
    if ended:
        out += (
            f"<details><summary>{len(ended):,} more ended earlier in the window</summary>"
            '<ul class="incidents ended">' + "".join(map(_incident_item, ended)) + "</ul></details>"
        )
    return out


def _incident_item(incident: dict[str, Any]) -> str:
    evidence = incident.get("evidence", {})
    detail = (
        f"{evidence.get('ratio', '–')}× its baseline · CUSUM {evidence.get('statistic', '–')}"
        f" over a threshold of {evidence.get('threshold', '–')}"
    )
    kind = INCIDENT_KINDS.get(incident["kind"], incident["kind"])
    return (
        f'<li class="incident"><b>⚠ {_e(kind)}</b> {_e(incident["message"])} '
        f'<span class="meta">({_e(detail)})</span></li>'
    )


def suggestions_table(document: dict[str, Any]) -> str:
    suggestions = document.get("suggestions", {})
    if not suggestions:
        return '<p class="empty">No per-wallet suggestions: each wallet uses its best provider.</p>'
    wallets = document.get("profiles", {}).get("wallets", {})
    rows = []
    for wallet in sorted(suggestions):
        persona = wallets.get(wallet, {}).get("label", "")
        items = "".join(
            f"<li>{_e(s['text'] if isinstance(s, dict) else s)}</li>" for s in suggestions[wallet]
        )
        rows.append(
            f"<tr><td class=mono>{_e(wallet)}</td><td>{_e(persona)}</td>"
            f"<td><ul>{items}</ul></td></tr>"
        )
    return (
        f'<p><input id="wallet-filter" type="search" placeholder="filter by wallet, persona or '
        f'provider" aria-label="filter the wallet table"> <span id="wallet-count">{len(rows):,} '
        f"wallets</span></p>"
        '<div class="scroll"><table id="suggestions"><thead><tr><th>wallet</th><th>persona</th>'
        "<th>suggestions</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 margin:0 auto;max-width:1100px;padding:16px 24px;background:#fff}
h1{font-size:24px;margin:8px 0}h2{font-size:19px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.meta{color:#555}.stats{display:flex;gap:24px;flex-wrap:wrap;margin:8px 0}
.stats div{background:#f4f6f8;border-radius:6px;padding:6px 12px}
.stats b{font-size:18px;display:block}
svg.chart{width:100%;max-width:1000px;height:auto;max-height:85vh;display:block}
.axis{stroke:#333}.tick{stroke:#333}.grid{stroke:#e3e3e3}
.tl{font-size:13px;fill:#333}.al{font-size:14px;fill:#111;font-weight:600}
.best{font-size:16px;fill:#111}.warn{font-size:13px;fill:#B23B00;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border-bottom:1px solid #e5e5e5;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right}.mono{font-family:ui-monospace,monospace;font-size:12px}
td ul{margin:0;padding-left:18px}.scroll{max-height:480px;overflow:auto}
.warnings li{color:#B23B00}.empty{color:#777;font-style:italic}
.incidents li{margin:4px 0}.incidents b{color:#B23B00}.ended b{color:#555}
summary{cursor:pointer;color:#555}
input[type=search]{font-size:14px;padding:4px 8px;width:320px}
"""

SCRIPT = """
const f=document.getElementById('wallet-filter');
if(f){f.addEventListener('input',()=>{const q=f.value.toLowerCase();let n=0;
for(const tr of document.querySelectorAll('#suggestions tbody tr')){
const show=tr.textContent.toLowerCase().includes(q);tr.hidden=!show;if(show)n++;}
document.getElementById('wallet-count').textContent=n.toLocaleString()+' wallets';});}
"""


def render(document: dict[str, Any], trend: dict[str, Any] | None = None) -> str:
    """The whole page, as one string of HTML."""
    stats = document.get("stats", {})
    generated = datetime.fromtimestamp(document.get("generated_at", 0), UTC)
    models = ", ".join(
        f"{name} {info['version']}" for name, info in sorted(document.get("models", {}).items())
    )
    scored = stats.get("interactions_scored", 0)
    rate = f"{stats.get('anomalies', 0) / scored:.2%}" if scored else "–"
    incidents = document.get("incidents", [])
    cards = [
        ("interactions scored", f"{scored:,}"),
        ("anomalies", f"{stats.get('anomalies', 0):,} ({rate})"),
        ("rejected lines", f"{stats.get('interactions_rejected', 0):,}"),
        ("quality warnings", f"{len(document.get('warnings', [])):,}"),
        ("active incidents", f"{sum(bool(i.get('active')) for i in incidents):,}"),
        ("wallets with suggestions", f"{len(document.get('suggestions', {})):,}"),
    ]
    recommendations = document.get("recommendations", {})
    sections = [
        ("Incidents", incidents_list(incidents)),
        (
            "Personas",
            personas_chart(document.get("profiles", {}))
            + personas_table(document.get("profiles", {})),
        ),
        ("Anomalies over time", anomaly_chart(document.get("anomalies", []))),
        (
            "Expected score per provider and use case",
            expected_chart(recommendations.get("model", {}), recommendations.get("global", {})),
        ),
        (
            "Quality trend",
            quality_chart(trend, document.get("warnings", []))
            + warnings_list(document.get("warnings", [])),
        ),
        ("Suggestions per wallet", suggestions_table(document)),
    ]
    return "".join(
        [
            '<!doctype html><html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            "<title>Thronos AI analytics</title><style>",
            CSS,
            "</style></head><body><h1>Thronos AI analytics</h1>",
            f'<p class="meta">Generated {generated:%Y-%m-%d %H:%M:%S} UTC · models: '
            f"{_e(models) or 'none yet'}</p>",
            '<div class="stats">',
            *(f"<div><b>{value}</b>{_e(label)}</div>" for label, value in cards),
            "</div>",
            *(f"<section><h2>{_e(title)}</h2>{content}</section>" for title, content in sections),
            f"<script>{SCRIPT}</script></body></html>",
        ]
    )
