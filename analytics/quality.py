"""Quality-drop warnings: has a provider's score fallen, on which use cases, since when, how far?

**Series.** One per provider (all its calls, each compared with its own use case's norm, so a
shift in the mix of use cases is no drop) and one per (provider, use case). Rows are taken in
time order; each is compared with the series' *reference*: what the series scored, for that
use case, at that hour of the day and from that wallet, while nothing was wrong.

**Reference** (rebuilt at each UTC midnight from the rows of earlier days only, so every
decision about a row depends only on rows before it, and replaying a longer prefix never
changes an earlier one). It holds the rows of the series that were *in control*: every row
from the start of the window except those of a drop, from its onset to its recovery. A drop
therefore never becomes its own reference; while a warning is active its reference is frozen
as it was at the alarm. From those rows:

* the mean score per use case (one for a (provider, use case) series);
* an hour-of-day profile (UTC), so a recurring nightly dip is the norm for those hours, not a
  drop: all providers' profile, each provider's shrunk towards it and each use case's towards
  its provider's, by empirical Bayes (:func:`hour_profile`): a level whose hours differ no
  more than their noise takes its parent's profile and adds no noise of its own, one with a
  dip of its own learns it within a day or two;
* each wallet's own level on the provider (users rate, and ask, differently): the mean
  residual of its earlier rows shrunk by ``σ²/τ²`` rows, ``τ²`` the variance between
  wallets (one-way random effects, method of moments; no shrinkage, no adjustment, when
  wallets do not differ or the frame has no ``wallet``), taken off each row before it is
  compared, so one heavy user's bad session is not a provider's drop;
* the residual standard deviation ``σ``, inflated by the long-run variance of batch means of
  20 and 100 consecutive rows (``φ``, at least 1): calls of one session are alike, and a
  CUSUM of correlated rows must be scaled by the long-run variance, not the per-row one;
* a margin of ``MARGIN_SE`` standard errors of each (use case, hour) expectation: rows are
  compared with the reference's lower bound, so a reference learned from few rows errs
  towards no alarm (the margin fades as rows accumulate).

Monitoring starts once the reference has ``MIN_REFERENCE`` rows over at least a day.

**Detector.** A one-sided CUSUM (Page 1954) of standardized residuals
``z = clip((score - wallet - mean - hour + margin) / (σ √φ), ±Z_CLIP)``:
``S = max(0, S - z - k)`` with ``k = DROP / 2`` in score units (tuned to a drop of
``DROP`` = 0.06, which it finds fastest among all CUSUMs with its false-alarm rate: Lorden
1971). An alarm is ``S >= h``; its onset
(``since_ts``) is the row after ``S`` last stood at 0, the CUSUM's maximum-likelihood change
point. While the warning is active, a CUSUM for the way back, ``R = max(0, R + z + k / 2)``
(scores within ``DROP / 4`` of the reference again), runs on the frozen reference; the warning
ends where ``R`` last stood at 0 once it reaches ``h``, and that drop's rows stay out of the
reference. Between a loss of ``DROP / 4`` and ``DROP / 2`` neither CUSUM drifts up, so a
warning does not flicker on and off with a loss near the threshold; a full recovery ends it
after about ``2 (h + 1.166) / k`` rows (about 100 at ``σ = 0.08``).

**False alarms.** ``h`` is set so that a clean series raises a false alarm once per
``ARL0 = 1e6 / FALSE_ALARMS_PER_MILLION`` rows (0.1 per million rows of a series, so at most
0.2 per million ledger rows: each row is in two series). By Siegmund's approximation
(D. Siegmund, "Sequential Analysis", Springer 1985, ch. II; for Gaussian rows it is the
textbook ``(e^{2kb} - 1 - 2kb) / (2k²)``), a CUSUM whose increments ``y = -z - k`` have mean
``-k`` runs on average ``ARL0 = (e^{θb} - 1 - θb) / (θ k)`` rows before a false alarm, with
``b = h + 1.166`` (the overshoot correction, 2 × 0.583) and ``θ`` the positive root of
``E e^{θ y} = 1`` (Wald's identity; ``θ = 2k`` for Gaussian rows). ``θ`` is solved on the
reference's own residuals and never taken above ``2k``: skewed or discrete scores (stars,
0/1 grades) and planted outliers get the larger ``h`` their tails need. For ``σ = 0.08``
(``k = 0.375``): ``h = 18.6``; a 0.06 step is then found after about 50 rows of the series
(Siegmund's ARL with drift ``+k``), a 0.25 step after about 8. Approximations all (an
estimated reference, the overshoot), and conservative ones: the margin and the warm-up make
the rate lower than designed. ``benchmarks/warning_scenarios.py`` measures it on clean ledgers
of 2 million rows, and at designed rates high enough to count.

**Reported warnings** (:func:`detect_drops`): each series' drop that is still active. A
provider's warning names the use cases it covers (those whose own loss since its onset is at
least ``DROP / 2`` and ``COVER_Z`` standard errors); its use cases' own warnings are folded
into it when it covers two or more, and it is left out, as the same news, when it covers one
that has its own warning.

References: E. S. Page, "Continuous inspection schemes", Biometrika 41, 1954; G. Lorden,
"Procedures for reacting to a change in distribution", Ann. Math. Statist. 42, 1971;
D. Siegmund, "Sequential Analysis: Tests and Confidence Intervals", Springer 1985;
D. M. Hawkins and D. H. Olwell, "Cumulative Sum Charts and Charting for Quality
Improvement", Springer 1998 (self-starting charts, a frozen reference after a signal).

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> ts = np.sort(rng.uniform(0, 6 * 86_400, 6_000)) + 1.7e9
>>> dropped = ts > ts[0] + 4 * 86_400  # from day 4 on, coding scores lose 0.1
>>> rows = pd.DataFrame({"ts": ts, "provider": "acme", "use_case": "coding",
...                      "score": rng.normal(0.85, 0.08, ts.size) - 0.1 * dropped})
>>> [(w["key"], w["active"], round(w["loss"], 1)) for w in detect_drops(rows)]
[('acme|coding', True, 0.1)]
>>> detect_drops(rows[~dropped])
[]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

DROP = 0.06  # the drop, in score units, the detector is tuned to find fastest
FALSE_ALARMS_PER_MILLION = 0.1  # per series: ARL0 = 10 million rows
MIN_REFERENCE = 200  # rows in the reference before a series is watched
WARMUP_S = 86_400.0  # and they span at least a day, so that every hour has been seen
MARGIN_SE = 1.0  # the reference is taken this many standard errors below its estimate
BATCHES = (20, 100)  # rows per batch mean, for the long-run variance
SAMPLE = 10_000  # newest reference rows the long-run variance and the tails are read from
MAX_INFLATION = 6.0
Z_CLIP = 4.0
SIGMA_FLOOR = 0.01
OVERSHOOT = 1.166  # Siegmund's correction: b = h + 2 × 0.583
COVER_Z = 3.0  # a provider's warning covers a use case whose own loss is this significant
RECENT = 100  # the newest rows of a long drop, reported apart when they are lower still
DAY = 86_400.0
_NONE = "\x00none"


def siegmund_arl(h: float, k: float, theta: float | None = None) -> float:
    """Rows a one-sided CUSUM with increments ``-z - k`` runs before a false alarm (see the
    module docstring); ``theta`` defaults to the Gaussian ``2k``."""
    theta = 2 * k if theta is None else theta
    b = h + OVERSHOOT
    return (math.expm1(theta * b) - theta * b) / (theta * k)


def cusum_threshold(k: float, arl0: float, theta: float | None = None) -> float:
    """The ``h`` at which :func:`siegmund_arl` is ``arl0``."""
    theta = 2 * k if theta is None else theta
    b = math.log1p(arl0 * theta * k) / theta
    for _ in range(30):  # b = ln(1 + θb + ARL0 θ k) / θ, a contraction for large ARL0
        b = math.log1p(theta * b + arl0 * theta * k) / theta
    return max(b - OVERSHOOT, 1.0)


def adjustment_coefficient(z: np.ndarray, k: float) -> float:
    """The positive root ``θ`` of ``mean(exp(θ(-z - k))) = 1``, at most ``2k``."""
    counts, edges = np.histogram(z, bins=160, range=(-Z_CLIP, Z_CLIP))
    keep = counts > 0
    w = counts[keep] / counts.sum()
    y = -(edges[:-1] + edges[1:])[keep] / 2 - k

    def excess(theta: float) -> float:
        return float(np.dot(w, np.exp(theta * y))) - 1.0

    hi = 2 * k
    if excess(hi) <= 0:
        return hi
    lo = hi * 1e-3
    if excess(lo) >= 0:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return lo  # the smaller side: a larger h


@dataclass
class Reference:
    mean: np.ndarray  # per use case code; nan where the reference has none
    hour: np.ndarray  # 24 offsets, UTC
    hour_var: np.ndarray  # their posterior variances
    margin: np.ndarray  # per (use case, hour): MARGIN_SE standard errors of the expectation
    scale: float  # σ √φ, score units
    k: float  # z units
    h: float  # z units
    rows: int

    def expected(self, sub: np.ndarray, hour: np.ndarray) -> np.ndarray:
        return self.mean[sub] + self.hour[hour]

    def z(self, x: np.ndarray, sub: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """Standardized residuals against the reference's lower bound."""
        z = (x - self.expected(sub, hour) + self.margin[sub, hour]) / self.scale
        return np.clip(np.nan_to_num(z, nan=0.0), -Z_CLIP, Z_CLIP)


@dataclass
class _Episode:
    onset: int
    alarm: int
    ref: Reference
    end: int | None = None  # first recovered row
    statistic: float = 0.0


@dataclass
class _Series:
    provider: str
    use_case: str | None  # None: the provider's series
    rows: np.ndarray  # indices into the prepared frame
    x: np.ndarray
    sub: np.ndarray
    hour: np.ndarray
    ts: np.ndarray
    bounds: np.ndarray  # first row of each day of the frame, and the end
    n_sub: int
    wallet: np.ndarray  # per row, -1 without one
    n_wallets: int
    raw: np.ndarray = field(init=False)  # the scores; x holds them less each wallet's own level
    ok: np.ndarray = field(init=False)  # in control: belongs in the reference
    counted: np.ndarray = field(init=False)  # in the sums below
    cells: np.ndarray = field(init=False)  # per (use case, hour): rows, Σ score, Σ score²
    key: np.ndarray = field(init=False)  # use case × 24 + hour
    s: float = 0.0
    r: float = 0.0
    start: int = 0  # first row of the current run of S > 0
    rec_start: int = 0
    episodes: list[_Episode] = field(default_factory=list)
    resid: np.ndarray = field(init=False)  # score less the day's reference, per row
    levels: np.ndarray = field(init=False)  # per wallet: rows, Σ resid, over counted rows
    squares: float = 0.0  # Σ resid² over counted rows with a wallet
    prior: float = math.inf  # the day's wallet_prior()

    def __post_init__(self) -> None:
        self.raw = self.x.copy()
        self.ok = np.ones(len(self.x), dtype=bool)
        self.counted = np.zeros(len(self.x), dtype=bool)
        self.cells = np.zeros((3, self.n_sub, 24))
        self.key = self.sub * 24 + self.hour
        self.resid = np.zeros(len(self.x))
        self.levels = np.zeros((2, self.n_wallets))

    @property
    def active(self) -> _Episode | None:
        last = self.episodes[-1] if self.episodes else None
        return last if last is not None and last.end is None else None

    def sync(self, end: int) -> None:
        """Make the sums hold exactly the in-control rows before ``end``: the rows of the day
        just ended, and those an alarm or a recovery has since moved in or out."""
        changed = np.flatnonzero(self.ok[:end] != self.counted[:end])
        if not changed.size:
            return
        sign = np.where(self.ok[changed], 1.0, -1.0)
        x, key, size = self.x[changed], self.key[changed], self.n_sub * 24
        for i, w in enumerate((sign, sign * x, sign * x * x)):
            self.cells[i] += np.bincount(key, weights=w, minlength=size).reshape(self.n_sub, 24)
        self.counted[changed] = self.ok[changed]
        if self.n_wallets:
            mine = self.wallet[changed] >= 0
            wallet, sign, resid = self.wallet[changed][mine], sign[mine], self.resid[changed][mine]
            for i, w in enumerate((sign, sign * resid)):
                self.levels[i] += np.bincount(wallet, weights=w, minlength=self.n_wallets)
            self.squares += float(sign @ resid**2)

    def wallet_prior(self) -> float:
        """``σ² / τ²``: how many rows of its own a wallet needs before half of its mean
        residual is taken as its own level (``τ²``, the variance between wallets, by the
        method of moments of the one-way random-effects model); inf when wallets do not
        differ."""
        count, total = self.levels
        seen = count > 0
        wallets, rows = int(seen.sum()), float(count.sum())
        if wallets < 5 or rows - wallets < 50:
            return math.inf
        between = float(total[seen] ** 2 @ (1 / count[seen]))  # Σ n_w m_w²
        within = (self.squares - between) / (rows - wallets)
        spread = (between - total.sum() ** 2 / rows) / (wallets - 1)
        n0 = (rows - float(count @ count) / rows) / (wallets - 1)
        tau2 = (spread - within) / n0
        return within / tau2 if tau2 > 0 and within > 0 else math.inf

    def adjust(self, lo: int, hi: int, ref: Reference | None) -> None:
        """Take each wallet's own level, as its earlier rows show it, off rows ``lo:hi``."""
        raw = self.raw[lo:hi]
        if ref is None:
            count = np.bincount(self.sub[:hi], minlength=self.n_sub)
            mean = np.bincount(self.sub[:hi], weights=self.raw[:hi], minlength=self.n_sub)
            resid = raw - (mean / np.maximum(count, 1))[self.sub[lo:hi]]
        else:
            resid = np.nan_to_num(raw - ref.expected(self.sub[lo:hi], self.hour[lo:hi]))
        self.resid[lo:hi] = resid
        self.x[lo:hi] = raw
        self.prior = self.wallet_prior() if self.n_wallets else math.inf
        if not math.isfinite(self.prior):
            return
        if self.active is not None:  # a drop is not its wallets' doing: their levels wait
            self.take_levels(lo, hi, lo, lo)
            return
        # The same wallet's earlier rows of the day, then its rows of earlier days.
        wallet = self.wallet[lo:hi]
        order = np.argsort(wallet, kind="stable")
        w, r = wallet[order], resid[order]
        first = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
        group = np.repeat(first, np.diff(np.r_[first, len(w)]))
        before = np.cumsum(r) - r
        before -= before[group]
        earlier = np.arange(len(w)) - group
        count, total = self.levels[:, np.maximum(w, 0)]
        level = np.where(w >= 0, (total + before) / (count + earlier + self.prior), 0.0)
        self.x[lo + order] = raw[order] - level

    def take_levels(self, lo: int, hi: int, day: int, upto: int) -> None:
        """``x = score - level`` for rows ``lo:hi``, a wallet's level from its counted rows
        and its rows ``day:upto`` (all before ``lo``)."""
        if not math.isfinite(self.prior):
            return
        today = self.wallet[day:upto]
        mine = today >= 0
        size = self.n_wallets
        extra_n = np.bincount(today[mine], minlength=size)
        extra = np.bincount(today[mine], weights=self.resid[day:upto][mine], minlength=size)
        wallet = self.wallet[lo:hi]
        w = np.maximum(wallet, 0)
        count, total = self.levels[:, w]
        level = (total + extra[w]) / (count + extra_n[w] + self.prior)
        self.x[lo:hi] = self.raw[lo:hi] - np.where(wallet >= 0, level, 0.0)

    def hour_offsets(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Per-hour sums and counts of residuals against the raw use-case means (after
        :meth:`sync`), and the pure-error sum of squares and its degrees of freedom, for the
        all-providers profile."""
        n, s1, s2 = self.cells
        per_sub = n.sum(axis=1)
        mean = s1.sum(axis=1) / np.maximum(per_sub, 1)
        filled = n > 0
        within = float((s2[filled] - s1[filled] ** 2 / n[filled]).sum())
        dof = float(n.sum() - filled.sum())
        return (s1 - n * mean[:, None]).sum(axis=0), n.sum(axis=0), within, dof

    def run(self, lo: int, hi: int, ref: Reference | None) -> None:
        """Process rows ``lo:hi`` (one day) with the day's reference."""
        pos = lo
        while pos < hi:
            episode = self.active
            if episode is None:
                if ref is None:  # warming up: not watched yet
                    self.s, self.start = 0.0, hi
                    return
                z = ref.z(self.x[pos:hi], self.sub[pos:hi], self.hour[pos:hi])
                s = _lindley(-z - ref.k, self.s)
                cross = np.flatnonzero(s >= ref.h)
                stop = int(cross[0]) + 1 if cross.size else hi - pos
                zeros = np.flatnonzero(s[:stop] == 0)
                if zeros.size:
                    self.start = pos + int(zeros[-1]) + 1
                if not cross.size:
                    self.s = float(s[-1])
                    return
                alarm = pos + int(cross[0])
                self.episodes.append(_Episode(self.start, alarm, ref, statistic=float(s[stop - 1])))
                self.ok[self.start : alarm + 1] = False
                self.s, self.r, self.rec_start = float(s[stop - 1]), 0.0, alarm + 1
                # The rest of the day: wallets' levels without the drop's rows.
                self.take_levels(alarm + 1, hi, lo, max(lo, self.start))
                pos = alarm + 1
                continue
            frozen = episode.ref
            z = frozen.z(self.x[pos:hi], self.sub[pos:hi], self.hour[pos:hi])
            down = _lindley(-z - frozen.k, self.s)
            back = _lindley(z + frozen.k / 2, self.r)
            cross = np.flatnonzero(back >= frozen.h)
            stop = int(cross[0]) + 1 if cross.size else hi - pos
            zeros = np.flatnonzero(back[:stop] == 0)
            if zeros.size:
                self.rec_start = pos + int(zeros[-1]) + 1
            self.ok[pos : pos + stop] = False
            if not cross.size:
                self.s, self.r = float(down[-1]), float(back[-1])
                episode.statistic = self.s
                return
            recovered = pos + int(cross[0])
            last = self.rec_start - 1 - pos
            episode.statistic = float(down[last]) if last >= 0 else self.s
            episode.end = self.rec_start
            self.ok[self.rec_start : recovered + 1] = True
            self.s, self.r, self.start = 0.0, 0.0, recovered + 1
            pos = recovered + 1


def _lindley(y: np.ndarray, s0: float) -> np.ndarray:
    """``S_n = max(0, S_{n-1} + y_n)`` from ``S_0 = s0``, in closed form."""
    c = s0 + np.cumsum(y)
    return c - np.minimum.accumulate(np.minimum(c, 0.0))


def _inflation(resid: np.ndarray, sigma: float) -> float:
    """The long-run variance over the per-row one, from batch means (the larger of the
    batch sizes with at least 10 batches): 1 for independent rows."""
    phi = 1.0
    for size in BATCHES:
        batches = len(resid) // size
        if batches >= 10:
            sums = resid[len(resid) - batches * size :].reshape(batches, size).sum(axis=1)
            phi = max(phi, float(np.mean(sums**2)) / (size * sigma**2))
    return min(phi, MAX_INFLATION)


def hour_profile(
    sums: np.ndarray,
    counts: np.ndarray,
    sigma2: float,
    parent: np.ndarray,
    parent_var: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """An hour-of-day profile and its posterior variances, from per-hour sums and counts of
    residuals: each hour's mean shrunk towards ``parent`` by empirical Bayes (the normal-normal
    model, the spread ``τ²`` of the hours' own deviations by the method of moments), so a
    level whose hours do not differ takes its parent's profile and adds no noise of its own."""
    deviation = sums - counts * parent
    seen = counts > 0
    if not seen.any() or sigma2 <= 0:
        return parent.copy(), parent_var.copy()
    spread = float(np.mean((deviation[seen] / counts[seen]) ** 2 - sigma2 / counts[seen]))
    if spread <= 0:
        return parent.copy(), parent_var.copy()
    prior = sigma2 / spread  # rows an hour needs before half of its own deviation counts
    keep = prior / (counts + prior)
    return parent + deviation / (counts + prior), sigma2 / (counts + prior) + keep**2 * parent_var


def _reference(
    series: _Series,
    end: int,
    parent: np.ndarray,
    parent_var: np.ndarray,
    drop: float,
    arl0: float,
) -> Reference | None:
    """The reference for the rows from ``end`` on (after :meth:`_Series.sync`): means and
    hour profile from the sums of all in-control rows, scale and tail from the newest
    ``SAMPLE`` of them."""
    n, s1, s2 = series.cells
    total = float(n.sum())
    if total < MIN_REFERENCE:
        return None
    rows = np.flatnonzero(series.ok[:end])
    if float(series.ts[rows[-1]] - series.ts[rows[0]]) < WARMUP_S:
        return None
    per_sub, n_h = n.sum(axis=1), n.sum(axis=0)
    # Pure error: the spread within each (use case, hour), whatever the profile.
    filled = n > 0
    within = float((s2[filled] - s1[filled] ** 2 / n[filled]).sum())
    sigma2 = max(within, 0.0) / max(total - float(filled.sum()), 1.0)
    profile, profile_var = parent, parent_var
    for _ in range(2):  # backfit the use-case means and the hour profile
        mean = (s1.sum(axis=1) - n @ profile) / np.maximum(per_sub, 1)
        offsets = (s1 - n * mean[:, None]).sum(axis=0)
        profile, profile_var = hour_profile(offsets, n_h, sigma2, parent, parent_var)
    mean = (s1.sum(axis=1) - n @ profile) / np.maximum(per_sub, 1)
    fit = mean[:, None] + profile[None, :]
    squares = float((s2 - 2 * fit * s1 + n * fit**2).sum())
    dof = max(total - float((per_sub > 0).sum()), 1.0)
    sigma = max(math.sqrt(max(squares, 0.0) / dof), SIGMA_FLOOR)
    rows = rows[-SAMPLE:]
    resid = series.x[rows] - mean[series.sub[rows]] - profile[series.hour[rows]]
    scale = sigma * math.sqrt(_inflation(resid, sigma))
    k = drop / 2 / scale
    theta = adjustment_coefficient(np.clip(resid / scale, -Z_CLIP, Z_CLIP), k)
    margin = MARGIN_SE * np.sqrt(scale**2 / np.maximum(per_sub, 1)[:, None] + profile_var[None, :])
    mean[per_sub == 0] = np.nan
    h = cusum_threshold(k, arl0, theta)
    return Reference(mean, profile, profile_var, margin, scale, k, h, int(total))


def _prepare(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str | None]]:
    score = pd.to_numeric(rows["score"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = ~np.isnan(score) & rows["provider"].notna().to_numpy()
    use_case = (
        rows["use_case"].astype(object).to_numpy()[keep]
        if "use_case" in rows.columns
        else np.full(int(keep.sum()), None)
    )
    frame = pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(dtype=float)[keep],
            "provider": rows["provider"].to_numpy()[keep],
            "use_case": np.where(pd.isna(use_case), _NONE, use_case),
            "score": score[keep],
            "wallet": (
                rows["wallet"].to_numpy()[keep]
                if "wallet" in rows.columns
                else np.full(int(keep.sum()), None)
            ),
        }
    )
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    codes, uniques = pd.factorize(frame["use_case"])
    frame["sub"] = codes
    frame["wallet"] = pd.factorize(frame["wallet"])[0]  # -1: none
    return frame, [None if u == _NONE else str(u) for u in uniques]


def _build_series(
    frame: pd.DataFrame, use_cases: list[str | None], days: np.ndarray
) -> list[tuple[_Series, list[_Series]]]:
    ts = frame["ts"].to_numpy()
    x = frame["score"].to_numpy()
    sub = frame["sub"].to_numpy().astype(np.int64)
    wallet = frame["wallet"].to_numpy().astype(np.int64)
    hour = ((ts % DAY) // 3600).astype(np.int64)
    day = np.floor(ts / DAY)
    edges = np.append(days, days[-1] + 1)

    def make(provider: str, use_case: str | None, rows: np.ndarray) -> _Series:
        whole = use_case is None
        return _Series(
            provider,
            use_case,
            rows,
            x[rows],
            sub[rows] if whole else np.zeros(len(rows), dtype=np.int64),
            hour[rows],
            ts[rows],
            np.searchsorted(day[rows], edges),
            len(use_cases) if whole else 1,
            wallet[rows],
            int(wallet.max()) + 1,
        )

    codes, providers = pd.factorize(frame["provider"].astype(str), sort=True)
    out = []
    for p, provider in enumerate(providers):
        rows = np.flatnonzero(codes == p)
        cells = [
            make(provider, use_cases[u], rows[sub[rows] == u])
            for u in np.unique(sub[rows])
            if use_cases[u] is not None
        ]
        out.append((make(provider, None, rows), cells))
    return out


def find_episodes(
    rows: pd.DataFrame,
    drop: float = DROP,
    false_alarms_per_million: float = FALSE_ALARMS_PER_MILLION,
) -> list[dict[str, Any]]:
    """Every drop of every series in a frame of ts, provider, use_case and score: the active
    ones and those that ended, in the order they were detected."""
    frame, use_cases = _prepare(rows)
    if frame.empty:
        return []
    arl0 = 1e6 / false_alarms_per_million
    days = np.unique(np.floor(frame["ts"].to_numpy() / DAY))
    series = _build_series(frame, use_cases, days)
    for d in range(len(days)):
        # All providers' day, then each provider's, then each use case's: an hour seen on few
        # rows borrows the shape of the level above.
        sums, counts, within, dof = np.zeros(24), np.zeros(24), 0.0, 0.0
        for whole, _ in series:
            whole.sync(int(whole.bounds[d]))
            s, c, w, f = whole.hour_offsets()
            sums, counts, within, dof = sums + s, counts + c, within + w, dof + f
        sigma2 = within / max(dof, 1.0)
        everyone = hour_profile(sums, counts, sigma2, np.zeros(24), np.zeros(24))
        for whole, cells in series:
            lo, hi = int(whole.bounds[d]), int(whole.bounds[d + 1])
            if lo == hi:
                continue
            ref = _reference(whole, lo, *everyone, drop, arl0)
            whole.adjust(lo, hi, ref)
            whole.run(lo, hi, ref)
            parent = (ref.hour, ref.hour_var) if ref is not None else everyone
            for cell in cells:
                lo, hi = int(cell.bounds[d]), int(cell.bounds[d + 1])
                if lo < hi:
                    cell.sync(lo)
                    own = _reference(cell, lo, *parent, drop, arl0)
                    cell.adjust(lo, hi, own)
                    cell.run(lo, hi, own)
    out = []
    for whole, cells in series:
        for one in (whole, *cells):
            out += [
                _describe(one, e, use_cases, drop, false_alarms_per_million) for e in one.episodes
            ]
    return sorted(out, key=lambda w: (w["detected_ts"], w["key"]))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _describe(
    series: _Series,
    episode: _Episode,
    use_cases: list[str | None],
    drop: float,
    rate: float,
) -> dict[str, Any]:
    end = len(series.x) if episode.end is None else episode.end
    span = slice(episode.onset, end)
    ref = episode.ref
    # The scores, and what the same calls (use case, hour, wallet) scored before.
    x, sub, hour = series.raw[span], series.sub[span], series.hour[span]
    expected = ref.expected(sub, hour) + x - series.x[span]
    known = ~np.isnan(expected)
    x, sub, expected = x[known], sub[known], expected[known]
    now, before = float(x.mean()), float(expected.mean())
    recent, recent_before = float(x[-RECENT:].mean()), float(expected[-RECENT:].mean())
    provider, use_case = series.provider, series.use_case
    by_use_case: dict[str, dict[str, Any]] = {}
    covered: list[str] = []
    if use_case is None:
        for u in np.unique(sub):
            name = use_cases[u]
            mine = sub == u
            n_u = int(mine.sum())
            now_u, before_u = float(x[mine].mean()), float(expected[mine].mean())
            loss_u = before_u - now_u
            z_u = loss_u * math.sqrt(n_u) / ref.scale
            if name is None:
                continue
            by_use_case[name] = {
                "n_since": n_u,
                "before": round(before_u, 4),
                "now": round(now_u, 4),
                "loss": round(loss_u, 4),
            }
            if loss_u >= drop / 2 and z_u >= COVER_Z:
                covered.append(name)
        covered.sort()
    else:
        covered = [use_case]
    active = episode.end is None
    result: dict[str, Any] = {
        "key": f"{provider}|{use_case or '*'}",
        "provider": provider,
        "use_case": use_case,
        "use_cases": covered,
        "since_ts": float(series.ts[episode.onset]),
        "detected_ts": float(series.ts[episode.alarm]),
        "ended_ts": None if active else float(series.ts[end]),
        "active": active,
        "before": round(before, 4),
        "now": round(now, 4),
        "recent": round(recent, 4),  # the last RECENT calls of it, and what they scored before
        "recent_before": round(recent_before, 4),
        "recent_loss": round(recent_before - recent, 4),
        "n_since": len(x),
        "loss": round(before - now, 4),
        "statistic": round(episode.statistic, 2),
        "threshold": round(ref.h, 2),
        "false_alarms_per_million": rate,
        "rows_watched": int(series.rows.size),
    }
    if use_case is None:
        result["by_use_case"] = by_use_case
    result["message"] = _message(result, active)
    return result


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _message(w: dict[str, Any], active: bool) -> str:
    provider, use_case = w["provider"], w["use_case"]
    if use_case is not None:
        scope, calls = use_case, f"{use_case} calls"
    elif w["use_cases"]:
        scope, calls = _listed(w["use_cases"]), "calls"
    elif w["by_use_case"]:
        scope, calls = "its calls as a whole (no use case alone)", "calls"
    else:
        scope, calls = "", "calls"
    on = f" on {scope}" if scope else ""
    if active:
        head = f"{provider} quality dropped{on}: "
        tail = f", since {_when(w['since_ts'])}"
        counted = f"its last {w['n_since']:,} {calls}"
    else:
        head = f"{provider} quality dropped{on} and recovered: "
        tail = f", from {_when(w['since_ts'])} to {_when(w['ended_ts'])}"
        counted = f"{w['n_since']:,} {calls}"
    text = (
        f"{head}{w['now']:.2f} over {counted} vs {w['before']:.2f} before, "
        f"a loss of {w['loss']:.2f}{tail}"
    )
    if active and w["n_since"] >= 3 * RECENT and w["recent_loss"] - w["loss"] >= 0.02:
        text += f"; its last {RECENT}: {w['recent']:.2f} vs {w['recent_before']:.2f}"
    if use_case is None and len(w["use_cases"]) > 1:
        text += "; " + ", ".join(
            f"{u} {w['by_use_case'][u]['now']:.2f} vs {w['by_use_case'][u]['before']:.2f}"
            for u in w["use_cases"]
        )
    return (
        f"{text} (CUSUM {w['statistic']:.1f}, alarm at {w['threshold']:.1f}: "
        f"{w['false_alarms_per_million']:g} false alarms per million calls on a clean ledger)"
    )


def active_warnings(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drops still active, a provider's warning standing for the use cases it covers."""
    active = {w["key"]: w for w in found if w["active"]}
    out = []
    for w in active.values():
        if w["use_case"] is None:
            own = [u for u in w["use_cases"] if f"{w['provider']}|{u}" in active]
            if len(w["use_cases"]) == 1 and own:
                continue  # the use case's own warning says the same
        else:
            whole = active.get(f"{w['provider']}|*")
            if whole and len(whole["use_cases"]) > 1 and w["use_case"] in whole["use_cases"]:
                continue  # folded into the provider's warning
        out.append(w)
    return out


def ended_warnings(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each series' latest drop that ended, when it has no active one; newest first."""
    latest: dict[str, dict[str, Any]] = {}
    for w in found:
        latest[w["key"]] = w
    ended = [w for w in latest.values() if not w["active"]]
    return sorted(ended, key=lambda w: -w["ended_ts"])


def detect_drops(
    rows: pd.DataFrame,
    drop: float = DROP,
    false_alarms_per_million: float = FALSE_ALARMS_PER_MILLION,
) -> list[dict[str, Any]]:
    """Active warnings from a frame of ts, provider, use_case and score."""
    return active_warnings(find_episodes(rows, drop, false_alarms_per_million))


class QualityDropDetector(BaseEstimator):
    """The quality model as an estimator: ``fit(X)`` finds the drops of a frame of ts,
    provider, use_case and score (and wallet, optional).

    Parameters: ``drop`` and ``false_alarms_per_million``, as in the module docstring.
    Learned: ``episodes_`` (every drop, :func:`find_episodes`), ``warnings_`` (those still
    active, :func:`active_warnings`) and ``ended_`` (:func:`ended_warnings`). ``predict``
    names the drop each row falls in.

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ts = np.sort(rng.uniform(0, 6 * 86_400, 6_000)) + 1.7e9
    >>> rows = pd.DataFrame({"ts": ts, "provider": "acme", "use_case": "coding",
    ...                      "score": rng.normal(0.85, 0.08, ts.size) - 0.1 * (ts > ts[5000])})
    >>> model = QualityDropDetector().fit(rows)
    >>> [w["key"] for w in model.warnings_], model.predict(rows.iloc[[0, -1]]).tolist()
    (['acme|coding'], [None, 'acme|coding'])
    """

    def __init__(
        self, drop: float = DROP, false_alarms_per_million: float = FALSE_ALARMS_PER_MILLION
    ) -> None:
        self.drop = drop
        self.false_alarms_per_million = false_alarms_per_million

    def fit(self, X: pd.DataFrame, y: None = None) -> QualityDropDetector:
        """Find every drop of ``X``'s series; ``y`` is ignored."""
        found = find_episodes(X, self.drop, self.false_alarms_per_million) if len(X) else []
        self.episodes_ = found
        self.warnings_ = active_warnings(found)
        self.ended_ = ended_warnings(found)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The key of the drop each row falls in (its provider, its use case when the drop is
        a use case's, from the onset until the end), the latest found; None for the others."""
        out = np.full(len(X), None, dtype=object)
        ts = X["ts"].to_numpy(dtype=float)
        provider = X["provider"].to_numpy()
        use_case = X["use_case"].to_numpy() if "use_case" in X.columns else out
        for w in self.episodes_:
            inside = (provider == w["provider"]) & (ts >= w["since_ts"])
            if w["ended_ts"] is not None:
                inside &= ts < w["ended_ts"]
            if w["use_case"] is not None:
                inside &= use_case == w["use_case"]
            out[inside] = w["key"]
        return out
