"""The report's charts: matplotlib figures, embedded in the page as inline SVG.

Each chart is an ``<svg class="chart" role="img">`` whose first children are a ``<title>``
that names it (:data:`CHART_TITLES`) and a ``<desc>`` that says how to read it. Text stays
text (``svg.fonttype: none``), so the page carries no fonts and a browser's search finds a
provider's name in a chart. Where a bar or a line is missing, the chart says why in its
place. The functions take what :mod:`thronos_analytics.workers.report` aggregated and only
draw.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import matplotlib
from markupsafe import Markup, escape
from matplotlib import dates
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")
WARNING_COLOR = "#D55E00"
MUTED = "#666666"
WIDTH_IN = 9.0  # every figure's width; CSS scales the SVG to the page
CHART_TITLES = {
    "personas": "Personas: sessions per persona",
    "anomalies": "Anomaly timeline by provider",
    "expected": "Expected score per provider for each use case",
    "quality": "Quality trend per provider",
}
# How a chart says, in place, why a mark is missing or shaky.
NOTE: dict[str, Any] = {"fontsize": 8, "color": MUTED, "ha": "center"}
STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # a "$" in a provider's name is a dollar sign, not TeX
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#333333",
    "axes.titlesize": 10,
    "legend.frameon": False,
    "legend.fontsize": 9,
}


@dataclass(frozen=True)
class Persona:
    label: str
    sessions: int
    wallets: int
    description: str
    provider_mix: str


@dataclass(frozen=True)
class Lane:
    """One provider's flagged interactions: ``counts[bucket_start_ts]``."""

    provider: str
    counts: Mapping[float, int]


@dataclass(frozen=True)
class Cell:
    """A provider's bar in a use case. ``expected`` is None when there is no bar; ``note``
    says why, or why the bar is tentative."""

    expected: float | None
    n: int
    n_eff: float
    best: bool
    note: str | None


@dataclass(frozen=True)
class ExpectedScores:
    use_cases: Sequence[str]
    providers: Sequence[str]
    cells: Mapping[tuple[str, str], Cell]


@dataclass(frozen=True)
class TrendLine:
    """Mean score per bucket: ``points`` are ``(bucket_start_ts, mean, calls)``."""

    name: str
    provider: str
    points: Sequence[tuple[float, float, int]]
    dashed: bool


@dataclass(frozen=True)
class Drop:
    name: str
    since_ts: float | None
    message: str


def provider_colors(providers: Iterable[str]) -> dict[str, str]:
    """One colour per provider, the same in every chart."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(providers)))}


def bucket_label(size: int) -> str:
    return {3600: "hour", 86400: "day", 7 * 86400: "week"}.get(
        size, f"{size // 3600} h" if size < 86400 else f"{size // 86400} days"
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _x(ts: float) -> float:
    """Epoch seconds as matplotlib's date numbers, which every axes method takes."""
    return float(dates.date2num(_utc(ts)))


def personas(rows: Sequence[Persona]) -> Markup:
    with _figure("personas", 0.9 + 0.42 * len(rows)) as (fig, tips):
        ax = fig.subplots()
        sizes = [p.sessions for p in rows]
        bars = ax.barh(range(len(rows)), sizes, color=PALETTE[0], height=0.7)
        ax.set_yticks(range(len(rows)), [p.label for p in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, max(max(sizes), 1) * 1.5)  # room right of the longest bar for its label
        ax.set_xlabel("sessions in the persona (count)")
        for i, (bar, p) in enumerate(zip(bars, rows, strict=True)):
            ax.annotate(
                f"{p.sessions:,} sessions · {p.wallets:,} wallets",
                (p.sessions, i),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
            )
            bar.set_gid(f"bar-{i}")
            tips[f"bar-{i}"] = p.description or p.label
        return _svg(fig, "personas", "Horizontal bars: number of sessions per persona.", tips)


def anomaly_timeline(lanes: Sequence[Lane], bucket_s: int, colors: Mapping[str, str]) -> Markup:
    unit = bucket_label(bucket_s)
    peak = max((n for lane in lanes for n in lane.counts.values()), default=0)
    starts = [t for lane in lanes for t in lane.counts]
    with _figure("anomalies", 0.9 + 0.62 * len(lanes)) as (fig, tips):
        axes = fig.subplots(len(lanes), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
        for i, (ax, lane) in enumerate(zip(axes, lanes, strict=True)):
            ax.set_ylabel(lane.provider, rotation=0, ha="right", va="center")
            ax.set_yticks([])
            ax.spines["left"].set_visible(False)
            total = sum(lane.counts.values())
            ax.text(1.01, 0.5, f"{total:,} anomalies", transform=ax.transAxes, va="center")
            if not total:
                ax.text(0.5, 0.5, "none flagged", transform=ax.transAxes, va="center", **NOTE)
            for j, (start, n) in enumerate(sorted(lane.counts.items())):
                (bar,) = ax.bar(
                    _x(start),
                    n,
                    width=bucket_s / 86400 * 0.9,
                    align="edge",
                    color=colors.get(lane.provider, MUTED),
                )
                bar.set_gid(f"bar-{i}-{j}")
                tips[f"bar-{i}-{j}"] = (
                    f"{lane.provider}: {n} anomalies in the {unit} from "
                    f"{_utc(start):%Y-%m-%d %H:%M} UTC"
                )
        axes[0].set_ylim(0, max(peak, 1))
        axes[-1].set_xlim(_x(min(starts)), _x(max(starts) + bucket_s))
        span = _date_axis(axes[-1], min(starts), max(starts) + bucket_s)
        axes[-1].set_xlabel(f"{span} · bar height = anomalies per {unit} (tallest: {peak})")
        return _svg(
            fig,
            "anomalies",
            f"One lane per provider; bar height is the number of flagged interactions per {unit}.",
            tips,
        )


def expected_scores(table: ExpectedScores, colors: Mapping[str, str]) -> Markup:
    width = 0.8 / len(table.providers)
    with _figure("expected", 4.2) as (fig, tips):
        ax = fig.subplots()
        for g, use_case in enumerate(table.use_cases):
            for i, provider in enumerate(table.providers):
                cell = table.cells[(use_case, provider)]
                x = g - 0.4 + (i + 0.5) * width
                if cell.expected is None:
                    # No bar: say so where it would stand, so it does not read as a zero.
                    ax.text(x, 0.02, cell.note or "no data", rotation=90, va="bottom", **NOTE)
                    continue
                tentative = cell.note is not None
                (bar,) = ax.bar(
                    x,
                    cell.expected,
                    width * 0.92,
                    color=colors.get(provider, MUTED),
                    alpha=0.45 if tentative else 1.0,
                    hatch="///" if tentative else None,
                    edgecolor="white" if tentative else None,
                    linewidth=0,
                )
                gid = f"bar-{g}-{i}"
                bar.set_gid(gid)
                tips[gid] = (
                    f"{use_case} · {provider}: expected score {cell.expected:.2f} "
                    f"({cell.n_eff:,.0f} effective of {cell.n:,} scored calls)"
                )
                top = cell.expected + 0.015
                if cell.note is not None:
                    ax.text(x, top, cell.note, rotation=90, va="bottom", **NOTE)
                elif cell.best:
                    ax.text(x, top, "★", ha="center", va="bottom", fontsize=12)
        ax.set_xticks(range(len(table.use_cases)), table.use_cases)
        ax.set_xlim(-0.5, len(table.use_cases) - 0.5)
        ax.set_ylim(0, 1.15)  # headroom for the stars and notes above a bar near 1
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_xlabel("use case")
        ax.set_ylabel("expected score (0–1)")
        ax.grid(axis="y", color="#e3e3e3")
        ax.set_axisbelow(True)
        handles: list[Any] = [Patch(color=colors.get(p, MUTED)) for p in table.providers]
        labels = list(table.providers)
        handles += [
            Patch(facecolor=MUTED, alpha=0.45, hatch="///", edgecolor="white"),
            Line2D([], [], marker="*", linestyle="", color="black", markersize=10),
        ]
        labels += ["too few calls to tell", "recommended"]
        # Explicit labels: a legend drops names starting with "_" when it collects them.
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1))
        return _svg(
            fig,
            "expected",
            "Grouped bars: for each use case, each provider's expected score; a star marks the "
            "recommended provider, hatched bars rest on too few calls, and a provider without a "
            "bar is labelled with why.",
            tips,
        )


def quality_trend(
    lines: Sequence[TrendLine],
    drops: Sequence[Drop],
    bucket_s: int,
    min_calls: int,
    colors: Mapping[str, str],
) -> Markup:
    unit = bucket_label(bucket_s)
    starts = [t for line in lines for t, _, _ in line.points]
    t0, t1 = min(starts), max(starts) + bucket_s
    handles: list[Any] = []
    labels: list[str] = []
    with _figure("quality", 5.0) as (fig, tips):
        ax = fig.subplots()
        for k, line in enumerate(lines):
            color = colors.get(line.provider, MUTED)
            solid, thin = _split_thin(line.points, bucket_s, min_calls)
            style = "--" if line.dashed else "-"
            (drawn,) = ax.plot(
                [_x(t + bucket_s / 2) for t, _ in solid],
                [v for _, v in solid],
                style,
                color=color,
                linewidth=2.5 if line.dashed else 2,
            )
            drawn.set_gid(f"line-{k}")
            tips[f"line-{k}"] = f"{line.name}: mean score per {unit}"
            if thin:
                ax.plot(
                    [_x(t + bucket_s / 2) for t, _ in thin],
                    [v for _, v in thin],
                    "o",
                    markerfacecolor="none",
                    markeredgecolor=color,
                    markersize=5,
                )
            handles.append(drawn)
            if all(math.isnan(v) for _, v in solid):
                labels.append(f"{line.name} (too few calls per {unit} for a line)")
            else:
                labels.append(line.name)
        for n, drop in enumerate(drops):
            if drop.since_ts is None or not t0 <= drop.since_ts <= t1:
                continue
            since = _x(drop.since_ts)
            ax.axvspan(since, _x(t1), color=WARNING_COLOR, alpha=0.08, linewidth=0)
            ax.axvline(since, color=WARNING_COLOR, linewidth=1.5, linestyle=":")
            ax.annotate(
                f"⚠ {drop.name} dropped (since {_utc(drop.since_ts):%b %d})",
                (since, 1),
                xycoords=ax.get_xaxis_transform(),
                xytext=(-4, -12 - 14 * n),
                textcoords="offset points",
                ha="right",
                color="#B23B00",
                fontweight="bold",
            )
        handles.append(
            Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color=MUTED)
        )
        labels.append(f"fewer than {min_calls} calls in the {unit}: too few to join the line")
        low, high = ax.get_ylim()
        ax.set_ylim(max(0.0, low - 0.02), min(1.0, high + 0.02))
        ax.set_xlim(_x(t0), _x(t1))
        ax.set_xlabel(f"{_date_axis(ax, t0, t1)} · a break in a line: no scored calls then")
        ax.set_ylabel(f"mean score per {unit} (0–1)")
        ax.grid(axis="y", color="#e3e3e3")
        # Below, not beside: the warnings' names are long, and the time axis needs the width.
        fig.legend(handles, labels, loc="outside lower center", ncols=3)
        return _svg(
            fig,
            "quality",
            f"Lines: mean score per {unit} for each provider; dashed lines are the provider and "
            "use case of a quality warning, shaded from where the drop was detected; hollow "
            f"circles are periods with fewer than {min_calls} scored calls.",
            tips,
        )


def _split_thin(
    points: Sequence[tuple[float, float, int]], bucket_s: int, min_calls: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The line's points, NaN where a bucket has no calls or too few (which breaks the
    line), and those thin buckets' means, drawn apart so a gap shows why it is there."""
    by_start = {t: (v, n) for t, v, n in points}
    if not by_start:
        return [], []
    first, last = min(by_start), max(by_start)
    solid, thin = [], []
    for i in range(int(round((last - first) / bucket_s)) + 1):
        t = first + i * bucket_s
        v, n = by_start.get(t, (math.nan, 0))
        solid.append((t, v if n >= min_calls else math.nan))
        if 0 < n < min_calls:
            thin.append((t, v))
    return solid, thin


def _date_axis(ax: Any, t0: float, t1: float) -> str:
    """Date ticks on ``ax``; returns the axis label, which names the span. The formatter's
    own offset text ("2026-Jan") would sit on top of the label."""
    locator = dates.AutoDateLocator(tz=UTC, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=UTC, show_offset=False))
    return f"time (UTC), {_utc(t0):%Y-%m-%d %H:%M} to {_utc(t1):%Y-%m-%d %H:%M}"


@contextmanager
def _figure(key: str, height_in: float) -> Iterator[tuple[Figure, dict[str, str]]]:
    # A Figure, not pyplot: nothing is kept in a global figure manager, and no GUI backend
    # is ever chosen, so a long-lived worker neither leaks figures nor needs a display.
    # The salt makes the SVG's ids the same on every run, and different across charts.
    settings: Any = {**STYLE, "svg.hashsalt": key}  # Any: the stubs list every rc key
    with matplotlib.rc_context(settings):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        yield fig, {}


def _svg(fig: Figure, key: str, description: str, tips: Mapping[str, str]) -> Markup:
    """The figure as an inline ``<svg>``: no XML prolog, no metadata, ids unique within the
    page, a ``<title>`` tooltip on each mark in ``tips`` (by gid), then a title and desc.
    Called inside :func:`_figure`, whose settings apply when the SVG is written."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    # The page's CSS carries this rule, scoped to the charts (a <style> in an inline SVG
    # would apply to the whole page).
    svg = re.sub(r"\s*<defs>\s*<style[^>]*>[^<]*</style>\s*</defs>", "", svg, count=1)
    # Tags only: escaped text never holds "<", so a name in a label is left as it is.
    svg = re.sub(r"<[^>]+>", lambda m: _prefix_ids(m.group(0), key), svg)
    for gid, tip in tips.items():
        tag = f'<g id="{key}-{gid}">'
        svg = svg.replace(tag, f"{tag}<title>{escape(tip)}</title>", 1)
    opening = svg[: svg.index(">") + 1]
    view_box = re.search(r'viewBox="([^"]+)"', opening)
    assert view_box, opening
    head = (
        f'<svg class="chart" id="chart-{key}" role="img" viewBox="{view_box.group(1)}" '
        f'aria-labelledby="title-{key} desc-{key}" xmlns="http://www.w3.org/2000/svg" '
        f'xmlns:xlink="http://www.w3.org/1999/xlink">'
        f'<title id="title-{key}">{escape(CHART_TITLES[key])}</title>'
        f'<desc id="desc-{key}">{escape(description)}</desc>'
    )
    return Markup(head + svg[len(opening) :])


def _prefix_ids(tag: str, key: str) -> str:
    # Four charts share one page: matplotlib numbers its ids from 1 in each.
    return re.sub(r'(\sid="|url\(#|xlink:href="#)', rf"\g<1>{key}-", tag)
