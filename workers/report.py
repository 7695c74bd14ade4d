"""``ai_analytics.html``: the export as a page a person reads, written next to the JSON.

The page is one self-contained file (inline CSS, inline SVG charts, a few lines of inline
JavaScript to filter the long tables), so it opens offline, from a mail attachment or a
file share, with no CDN. It is built from the analytics document (the dict written to
``ai_analytics.json``), the mean score per provider over time (:func:`score_trend`, for the
quality trend) and, if the caller has them, the rejected ledger lines, neither of which the
document carries.

The page is ``templates/report.html.j2``, with autoescape on; each model's section is its
own partial, ``templates/sections/<name>.html.j2``, and :func:`render` takes the list of
partials to include, in order. Numbers are gathered by the small functions below, charts
are drawn by :mod:`thronos_analytics.workers.charts`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import jinja2

from thronos_analytics.workers import charts

# Bucket widths tried for time axes, smallest first; the first giving <= MAX_BUCKETS wins.
BUCKETS_S = (3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 60
TREND_BUCKETS = 30  # fewer, wider buckets: a mean score over a few calls is mostly noise
MIN_TREND_CALLS = 5  # a bucket with fewer calls is too noisy to join into a line
MAX_TABLE_ROWS = 500  # per table: the JSON has them all, the page stays quick to open
# Incidents, personas, then the models' detail: what is wrong now comes first.
SECTIONS = tuple(
    f"sections/{name}.html.j2"
    for name in ("incidents", "profiles", "anomaly", "recommender", "quality")
)
INCIDENT_KINDS = {
    "call_burst": "call burst",
    "spend_spike": "spend spike",
    "empty_outputs": "empty outputs",
    "latency_regression": "latency regression",
    "error_spike": "error spike",
}
DEFAULT_MIN_EFFECTIVE_CALLS = 20.0  # analytics.recommend's, for a model that does not say

# --- the numbers -------------------------------------------------------------------------


def bucket_seconds(span_s: float, most: int = MAX_BUCKETS) -> int:
    for size in BUCKETS_S:
        if span_s / size <= most:
            return size
    return BUCKETS_S[-1]


def bucket_start(ts: float, size: int) -> float:
    return math.floor(ts / size) * size


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
        for key in (provider, f"{provider}|{use_case}"):
            cell = sums[(key, bucket_start(ts, size))]
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


def providers_of(document: Mapping[str, Any], trend: Mapping[str, Any] | None) -> set[str]:
    """Every provider the page names, so each keeps one colour throughout."""
    model = document.get("recommendations", {}).get("model", {})
    return (
        {p for cells in model.get("use_cases", {}).values() for p in cells}
        | {a["provider"] for a in document.get("anomalies", [])}
        | {w["provider"] for w in document.get("warnings", [])}
        | set((trend or {}).get("providers", {}))
    )


def personas(profiles: Mapping[str, Any]) -> list[charts.Persona]:
    """The personas, largest first, with their wallets and provider mix."""
    wallets: dict[int, int] = defaultdict(int)
    for wallet in profiles.get("wallets", {}).values():
        wallets[wallet["cluster"]] += 1
    out = []
    for c in sorted(profiles.get("clusters", []), key=lambda c: -c["size"]):
        mix = sorted(
            (
                (k.removeprefix("mix_"), v)
                for k, v in c.get("centroid", {}).items()
                if k.startswith("mix_")
            ),
            key=lambda kv: -kv[1],
        )
        out.append(
            charts.Persona(
                label=c["label"],
                sessions=c["size"],
                wallets=wallets.get(c["cluster"], 0),
                description=c.get("description", ""),
                provider_mix=", ".join(f"{p} {v:.0%}" for p, v in mix if v >= 0.05),
            )
        )
    return out


def anomaly_lanes(
    anomalies: Sequence[Mapping[str, Any]], providers: Iterable[str] = ()
) -> tuple[int, list[charts.Lane]]:
    """Flagged interactions per provider and time bucket, the busiest provider first; the
    other ``providers`` get an empty lane, so that none flagged reads as none, not as missing.
    """
    size = bucket_seconds(max(a["ts"] for a in anomalies) - min(a["ts"] for a in anomalies))
    counts: dict[str, dict[float, int]] = {p: {} for p in providers}
    for a in anomalies:
        lane = counts.setdefault(a["provider"], {})
        start = bucket_start(a["ts"], size)
        lane[start] = lane.get(start, 0) + 1
    order = sorted(counts, key=lambda p: (-sum(counts[p].values()), p))
    return size, [charts.Lane(p, counts[p]) for p in order]


def expected_scores(
    model: Mapping[str, Any], ranked: Mapping[str, Sequence[Mapping[str, Any]]]
) -> charts.ExpectedScores:
    """Each provider's expected score in each use case, and why a bar is missing or shaky."""
    table = model.get("use_cases", {})
    use_cases = sorted(table)
    providers = sorted({p for u in use_cases for p in table[u]})
    least = model.get("min_effective_calls", DEFAULT_MIN_EFFECTIVE_CALLS)
    cells = {}
    for use_case in use_cases:
        best = (ranked.get(use_case) or [{}])[0].get("provider")
        for provider in providers:
            cell = table[use_case].get(provider)
            if not cell:
                # The model keeps cells of scored calls only: unscored calls leave none.
                cells[(use_case, provider)] = charts.Cell(None, 0, 0.0, False, "no scored calls")
                continue
            n, n_eff = int(cell.get("n", 0)), float(cell.get("n_eff", cell.get("n", 0)))
            cells[(use_case, provider)] = charts.Cell(
                expected=float(cell.get("expected_score", cell["score"])),
                n=n,
                n_eff=n_eff,
                best=provider == best,
                note=f"too few calls ({n:,})" if n_eff < least else None,
            )
    return charts.ExpectedScores(use_cases, providers, cells)


def trend_lines(
    trend: Mapping[str, Any], warnings: Sequence[Mapping[str, Any]]
) -> tuple[list[charts.TrendLine], list[charts.Drop]]:
    """A line per provider; a dashed one for the use case a quality warning is about (one
    about a provider as a whole is marked on its line); and where each drop began."""
    lines = [charts.TrendLine(p, p, _points(pts), False) for p, pts in trend["providers"].items()]
    drops = []
    for w in warnings:
        use_case = w.get("use_case")
        pair = trend.get("pairs", {}).get(f"{w['provider']}|{use_case}")
        name = f"{w['provider']} · {use_case}" if pair else str(w["provider"])
        if pair:
            lines.append(charts.TrendLine(name, w["provider"], _points(pair), True))
        drops.append(charts.Drop(name, w.get("since_ts"), w["message"]))
    return lines, drops


def _points(series: Iterable[Sequence[float]]) -> list[tuple[float, float, int]]:
    return [(float(t), float(v), int(n)) for t, v, n in series]


def flagged(anomalies: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The flagged interactions for the table: newest first, at most MAX_TABLE_ROWS."""
    return sorted(anomalies, key=lambda a: -a["ts"])[:MAX_TABLE_ROWS]


def incident_row(incident: Mapping[str, Any]) -> dict[str, Any]:
    evidence = incident.get("evidence", {})
    if incident.get("wallet"):
        subject = incident["wallet"]
    else:
        subject = " · ".join(str(x) for x in (incident.get("provider"), incident.get("model")) if x)
    return {
        "kind": INCIDENT_KINDS.get(incident["kind"], incident["kind"]),
        "subject": subject,
        "since_ts": incident.get("since_ts"),
        "until_ts": incident.get("until_ts"),
        "evidence": (
            f"{evidence.get('measure', 'measure')} {evidence.get('observed', '–')} vs a baseline"
            f" of {evidence.get('baseline', '–')} ({evidence.get('ratio', '–')}×) over"
            f" {evidence.get('calls', '–')} calls · CUSUM {evidence.get('statistic', '–')}"
            f" over a threshold of {evidence.get('threshold', '–')}"
            if evidence
            else "–"
        ),
        "message": incident["message"],
    }


def rejected_rows(rejected: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rejected lines for the table. ``ledger`` names the file; the dead-letter files and
    the rejected stream call it ``source``, and are taken as they are."""
    return [
        {
            "ledger": entry.get("ledger", entry.get("source", "")),
            "line": entry.get("line"),
            "reason": entry.get("reason", ""),
            "raw": str(entry.get("raw", ""))[:200],
        }
        for entry in rejected
    ]


# --- the page ----------------------------------------------------------------------------

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("thronos_analytics.workers", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name in a template fails, not blanks
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "–" if ts is None else datetime.fromtimestamp(ts, UTC).strftime(fmt)


ENV.filters["utc"] = _utc
ENV.filters["thousands"] = "{:,}".format

Context = dict[str, Any]


def _incidents(document: Mapping[str, Any], trend: Any, colors: Mapping[str, str]) -> Context:
    incidents = [incident_row(i) for i in document.get("incidents", []) if i.get("active")]
    ended = [incident_row(i) for i in document.get("incidents", []) if not i.get("active")]
    return {"active": incidents, "ended": ended}


def _profiles(document: Mapping[str, Any], trend: Any, colors: Mapping[str, str]) -> Context:
    rows = personas(document.get("profiles", {}))
    return {"personas": rows, "chart": charts.personas(rows) if rows else None}


def _anomaly(document: Mapping[str, Any], trend: Any, colors: Mapping[str, str]) -> Context:
    anomalies = document.get("anomalies", [])
    chart = None
    if anomalies:
        size, lanes = anomaly_lanes(anomalies, providers=list(colors))
        chart = charts.anomaly_timeline(lanes, size, colors)
    return {"chart": chart, "flagged": flagged(anomalies), "total": len(anomalies)}


def _recommender(document: Mapping[str, Any], trend: Any, colors: Mapping[str, str]) -> Context:
    recommendations = document.get("recommendations", {})
    table = expected_scores(recommendations.get("model", {}), recommendations.get("global", {}))
    chart = charts.expected_scores(table, colors) if table.use_cases else None
    wallets = document.get("profiles", {}).get("wallets", {})
    suggestions = [
        {
            "wallet": wallet,
            "persona": wallets.get(wallet, {}).get("label", ""),
            "texts": [s["text"] if isinstance(s, dict) else s for s in items],
        }
        for wallet, items in sorted(document.get("suggestions", {}).items())
    ]
    return {"chart": chart, "suggestions": suggestions}


def _quality(document: Mapping[str, Any], trend: Any, colors: Mapping[str, str]) -> Context:
    warnings = document.get("warnings", [])
    chart = None
    if trend and trend.get("providers"):
        lines, drops = trend_lines(trend, warnings)
        chart = charts.quality_trend(lines, drops, trend["bucket_s"], MIN_TREND_CALLS, colors)
    return {"chart": chart, "warnings": warnings}


# What each model's partial reads, under its name; a partial not listed reads ``document``.
SECTION_CONTEXT: dict[str, Callable[[Mapping[str, Any], Any, Mapping[str, str]], Context]] = {
    "incidents": _incidents,
    "profiles": _profiles,
    "anomaly": _anomaly,
    "recommender": _recommender,
    "quality": _quality,
}


def _section_name(template: str) -> str:
    return template.removeprefix("sections/").removesuffix(".html.j2")


def render(
    document: Mapping[str, Any],
    trend: Mapping[str, Any] | None = None,
    *,
    sections: Sequence[str] | None = None,
    rejected: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The whole page, as one string of HTML.

    ``trend`` is :func:`score_trend` of the training window. ``sections`` are the partials
    to include, in order (default :data:`SECTIONS`). ``rejected`` are rejected lines, each
    with ``ledger`` (or ``source``), ``line``, ``reason`` and optionally ``raw``, newest
    first; None: the page gives their count and says where to find them.
    """
    sections = SECTIONS if sections is None else tuple(sections)
    stats = document.get("stats", {})
    colors = charts.provider_colors(providers_of(document, trend))
    context: Context = {
        "document": document,
        "stats": stats,
        "sections": sections,
        "models": sorted(document.get("models", {}).items()),
        "anomaly_rate": (
            stats.get("anomalies", 0) / stats["interactions_scored"]
            if stats.get("interactions_scored")
            else None
        ),
        "active_incidents": sum(bool(i.get("active")) for i in document.get("incidents", [])),
        "rejected": None if rejected is None else rejected_rows(rejected[:MAX_TABLE_ROWS]),
        "max_rows": MAX_TABLE_ROWS,
        "min_trend_calls": MIN_TREND_CALLS,
    }
    for template in sections:
        name = _section_name(template)
        if name in SECTION_CONTEXT:
            context[name] = SECTION_CONTEXT[name](document, trend, colors)
    return ENV.get_template("report.html.j2").render(context)
