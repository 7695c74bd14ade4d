"""Incidents: what is wrong above the row, when each call on its own looks normal.

Five kinds, each found by a one-sided CUSUM (Page 1954) on one series per entity:

==================  ===============  ==========================================  =============
kind                entity           series (one step)                           tuned to
==================  ===============  ==========================================  =============
call_burst          wallet           the gaps between its calls (a call)         10× its pace
spend_spike         wallet           calls, credits, cost (an hour; a day)       10×; 5×
empty_outputs       provider, model  successful calls with an empty or           odds × 4
                                     truncated output (an hour)
latency_regression  provider, model  mean log latency of successful calls        × 1.5
                                     (an hour)
error_spike         provider, model  failed calls, from ``success`` (an hour)    odds × 4
==================  ===============  ==========================================  =============

**Detector.** Each step adds the log-likelihood ratio (llr) of "shifted by the amount
tuned to" against "as before" to ``S = max(0, S + llr)``; an incident starts when ``S``
reaches ``h``. Its onset is the step after ``S`` last stood at 0 (the CUSUM's maximum
likelihood change point), refined to the call by the same llr summed over the calls of that
step and the one before. After the alarm a reverse CUSUM (the llr with its sign turned)
watches for the return: the incident ended where that one last stood at 0 once it reaches
``h``; until then it is ``active`` (and, for a provider, while its newest call is less than
a day older than ``now``).

**Baselines** are self-starting (Hawkins 1987): the entity's own history before the step,
counting only steps at which ``S`` came back to 0, so an incident never becomes its own
baseline; at an alarm the baseline freezes. Each is tested at the upper 90% bound of its
estimate (Wilson's for a rate, a normal one for a mean, Wilson–Hilferty's Gamma quantile
for a spend rate), so a baseline learned from little data errs towards no alarm. Error and
empty-output rates start from the median rate of the other entities, worth
``PRIOR_CALLS`` calls, and learn the entity's own over its first ``RATE_WARMUP_CALLS``
calls: a provider that fails from its first call is seen, one that always fails a little
more than the others is not. Latency needs 12 hours with calls of the entity's own; spend
a day and 10 calls of the wallet's own.

**Models.** Rates: binomial per step. Latency: the hour's mean log latency is normal with
variance ``σ²/n + τ²`` (within-hour and between-hour variance of the baseline,
``τ >= 0.05``). Spend: negative binomial in clusters. An amount per step (calls, credits
or USD) is counted in clusters of ``E[S²] / E[S]``, ``S`` what a run of calls less than 30
minutes apart spends, and the cluster rate swings from step to step as a Gamma of shape
``k``; both are pooled over wallets (the upper quartile, by the method of moments), so
sessions and busy days are normal and a forty-fold day is not. Pace: calls are a Poisson
process at the wallet's active pace ``λ`` (the geometric mean of its own gaps under 30
minutes, or the median gap of all wallets, whichever is faster); a gap ``g`` adds
``ln r - (r - 1) λ g``. Output lengths are compared within their unit (chars or tokens),
with the median of the model's outputs for the use case (or all its outputs).

**False alarms.** For llr increments, ``exp(S)`` restarted at any step is a nonnegative
martingale of mean 1 while nothing changes, so by Ville's inequality a CUSUM raises a false
alarm within ``N`` steps with probability at most ``N exp(-h)`` (whence Lorden's
``ARL >= exp(h)``). So ``h = ln(N / α)``, ``N`` the steps per entity-day times the
detectors of the kind: ``α = 1e-4`` false incidents per provider (or provider and model)
per day and kind (``h = 12.4``); ``α = 1e-6`` per wallet per day and kind, since wallets
are many (10,000 active wallets: one false spend spike in 100 days; ``h = 18.8`` hourly,
``15.6`` daily, six detectors); call_burst steps per call, ``α = 1e-3`` per million calls
(``h = 20.7``). The bound holds under the models; estimated baselines, overdispersion and
daily cycles make them approximate, which the clean ledgers of ``tests/test_incidents.py``
check. An incident also needs material size: at least ``MIN_EVENTS`` errors or empty
outputs and twice the baseline rate and 2 points over it, latency 1.3× over
``MIN_LATENCY_CALLS`` calls, spend 3× its usual, and ``MIN_BURST_CALLS`` calls in a burst
(a client's batch of a few parallel calls is no incident).

**Cost.** One pass of pandas grouping and integer binning, then one Python loop over the
steps of each panel (entities × steps), vectorised over entities: about half a second of
one core for a 200,000-row window (9,600 wallets over 14 days, or 560 over 5).

References: E. S. Page, "Continuous inspection schemes", Biometrika 41, 1954; G. Lorden,
"Procedures for reacting to a change in distribution", Ann. Math. Statist. 42, 1971;
D. M. Hawkins, "Self-starting cusum charts for location and scale", The Statistician 36,
1987; D. M. Hawkins and D. H. Olwell, "Cumulative Sum Charts and Charting for Quality
Improvement", Springer 1998 (binomial, Poisson and negative binomial CUSUMs); J. Ville,
"Étude critique de la notion de collectif", 1939; E. B. Wilson, "Probable inference, the
law of succession, and statistical inference", JASA 22, 1927.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> ts = np.sort(rng.uniform(0, 4 * 86_400, 8_000)) + 1.7e9
>>> failing = ts > ts[0] + 3 * 86_400  # from day 3 on, 40% of calls fail, not 2%
>>> rows = pd.DataFrame({"ts": ts, "provider": "acme", "model": "m1",
...                      "success": rng.random(ts.size) > np.where(failing, 0.4, 0.02)})
>>> [(i["kind"], i["provider"], i["active"]) for i in detect_incidents(rows)]
[('error_spike', 'acme', True)]
>>> detect_incidents(rows[~failing])
[]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st
from sklearn.base import BaseEstimator

KINDS = ("call_burst", "spend_spike", "empty_outputs", "latency_regression", "error_spike")
HOUR, DAY = 3600.0, 86_400.0

# The false-alarm design: see the module docstring.
ALPHA_PROVIDER = 1e-4  # per entity, day and kind
ALPHA_WALLET = 1e-6
ALPHA_BURST = 1e-3  # per million calls
SPEND_DETECTORS = 6  # 3 measures × 2 resolutions, sharing a wallet's α

# What each CUSUM is tuned to detect.
ERROR_ODDS = 4.0
EMPTY_ODDS = 4.0
LATENCY_RATIO = 1.5
SPEND_RATIO = {"hour": 10.0, "day": 5.0}
BURST_RATIO = 10.0

# Baselines. Each is tested at the upper bound of its estimate, so that one learned from
# little data errs towards no alarm.
BASELINE_QUANTILE = 0.9
PRIOR_CALLS = 100
RATE_WARMUP_CALLS = 200
MIN_PEER_CALLS = 30
RATE_FLOOR = 1e-3  # a rate is never taken to be below 0.1%
SHORT_FRACTION = 0.1  # an output under a tenth of its model's median is truncated
LATENCY_WARMUP_STEPS = 12
LATENCY_WARMUP_CALLS = 50
TAU_MIN = 0.05
SPEND_WARMUP_S = DAY
SPEND_WARMUP_CALLS = 10
MIN_WALLET_CALLS = 20
# Spend dispersion is that of the upper quartile of wallets, so heavy swingers stay quiet.
DISPERSION_QUANTILE = 0.75
SESSION_GAP_S = 1800.0
BURST_WARMUP_GAPS = 20
# How far back each series is read: enough for a baseline, bounded for a long window.
PROVIDER_DAYS = 31
SPEND_DAYS = {"hour": 7, "day": 14}
STALE_S = DAY
WALLET_BLOCK = 2000  # wallets per spend panel, to bound memory

# Materiality.
MIN_EVENTS = 10
MIN_RATE_RATIO = 2.0
MIN_RATE_EXCESS = 0.02  # and 2 points over it: 0.1% to 1% is no incident
MIN_NORM_CALLS = 30  # outputs needed for a use case's own norm
MIN_LATENCY_RATIO = 1.3
MIN_LATENCY_CALLS = 20
MIN_SPEND_RATIO = 3.0
MIN_BURST_CALLS = 30


def threshold(steps_per_day: float, alpha: float) -> float:
    """``h`` for at most ``alpha`` false alarms per entity-day (Ville's inequality)."""
    return math.log(steps_per_day / alpha)


H_PROVIDER = threshold(24, ALPHA_PROVIDER)
H_SPEND = {
    "hour": threshold(24 * SPEND_DETECTORS, ALPHA_WALLET),
    "day": threshold(SPEND_DETECTORS, ALPHA_WALLET),
}
H_BURST = threshold(1e6, ALPHA_BURST)

COLUMNS = (
    "ts",
    "provider",
    "model",
    "use_case",
    "wallet",
    "success",
    "latency_ms",
    "output_len",
    "output_unit",
    "credits_used",
    "cost_usd",
)


def detect_incidents(rows: pd.DataFrame, now: float | None = None) -> list[dict[str, Any]]:
    """Incidents in a frame of window rows (``COLUMNS``; any may be missing), newest first.

    ``now`` (epoch seconds) defaults to the newest row's ``ts``: the ledger's own clock, so a
    replayed ledger reads as it did when it was written. JSON-ready.
    """
    frame = _prepare(rows)
    if frame.empty:
        return []
    now = float(frame["ts"].max()) if now is None else float(now)
    frame = frame[frame["ts"] <= now]
    incidents = _provider_incidents(frame, now)
    if (frame["wid"] >= 0).any():
        bursts = _burst_incidents(frame, now)
        incidents += bursts + _without_bursts(_spend_incidents(frame, now), bursts)
    incidents.sort(key=lambda i: (-i["since_ts"], i["kind"], i["key"]))
    return [_plain(i) for i in incidents]


def _plain(value: Any) -> Any:
    """Python numbers for numpy ones, so the result is JSON as it is."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _prepare(rows: pd.DataFrame) -> pd.DataFrame:
    present = {c: rows[c] for c in COLUMNS if c in rows.columns}
    frame = pd.DataFrame(present, index=rows.index)
    n = len(frame)
    defaults: dict[str, Any] = {"success": True, "credits_used": 0.0}
    for column in COLUMNS:
        if column not in frame.columns:
            text = column in ("model", "use_case", "wallet", "output_unit")
            frame[column] = defaults.get(column, None if text else np.nan)
    frame["ts"] = frame["ts"].astype(float)
    frame["success"] = frame["success"].fillna(True).astype(bool)
    for column in ("latency_ms", "output_len", "credits_used", "cost_usd"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["credits_used"] = frame["credits_used"].fillna(0.0)
    frame["model"] = frame["model"].astype(object).where(frame["model"].notna(), None)
    frame = frame[frame["ts"].notna() & frame["provider"].notna()]
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True) if n else frame
    # Text as integer codes (wallets: -1 for none), read once: grouping by codes is fast.
    frame["wid"] = pd.factorize(frame["wallet"])[0]
    for column in ("provider", "model", "output_unit", "use_case"):
        frame[f"{column}_code"] = pd.factorize(frame[column].fillna(""))[0]
    return frame


# --- the sequential detector --------------------------------------------------------------


Params = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]]


@dataclass(frozen=True)
class Model:
    """What the CUSUM needs of a series model.

    ``params(ref)`` turns summed in-control statistics into ``(warm, eager, params)``:
    whether the baseline is ready, and whether a step is still learned while ``S > 0``.
    ``llr(step, params, shift)`` is the step's llr of a shift of ``shift`` (per entity)
    against none, and ``observed(stats, params)`` the shift that summed statistics show.
    """

    params: Params
    llr: Callable[[np.ndarray, tuple[np.ndarray, ...], np.ndarray], np.ndarray]
    observed: Callable[[np.ndarray, tuple[np.ndarray, ...]], np.ndarray]
    tuned: float  # the shift the CUSUM is tuned to detect


@dataclass(frozen=True)
class Run:
    """One alarm of one entity: steps from ``onset`` to ``end`` (None: still shifted)."""

    entity: int
    onset: int
    alarm: int
    end: int | None
    peak: float  # the CUSUM's highest value during the incident
    ref: np.ndarray  # the frozen baseline's sufficient statistics
    params: tuple[float, ...] = ()  # and its parameters, as ``Model.params`` gave them


def cusum(stats: np.ndarray, model: Model, h: float) -> list[Run]:
    """Self-starting one-sided CUSUM with recovery, for many entities at once.

    ``stats`` is (entities, steps, k): each step's sufficient statistics, which sum. After
    an alarm, the reverse CUSUM weighs "as before" against the level seen since the onset
    (at least the tuned shift), so a large incident is over as soon as the data says so.
    One Python loop over steps; each is vectorised over entities.
    """
    n, steps, k = stats.shape
    tuned = np.full(n, model.tuned)
    ref, pend, frozen, inc = (np.zeros((n, k)) for _ in range(4))
    s, back, peak = np.zeros(n), np.zeros(n), np.zeros(n)
    alarmed = np.zeros(n, dtype=bool)
    start, fired_at, back_zero = (np.zeros(n, dtype=np.int64) for _ in range(3))
    runs: list[Run] = []
    pf: tuple[np.ndarray, ...] | None = None  # each entity's frozen baseline parameters
    for t in range(steps):
        step = stats[:, t]
        warm, eager, p = model.params(ref)
        x = model.llr(step, p, tuned)
        watching = ~alarmed
        cold = watching & ~warm
        ref[cold] += step[cold]
        start[cold] = t + 1
        live = watching & warm
        s[live] = np.maximum(0.0, s[live] + x[live])
        fire = live & (s >= h)
        frozen[fire] = ref[fire]
        if pf is None:
            pf = tuple(np.array(v, dtype=float) for v in p)
        for kept, value in zip(pf, p, strict=True):
            kept[fire] = value[fire]  # the baseline before this step, frozen
        learn = live & eager & ~fire
        ref[learn] += step[learn]
        hold = live & ~eager & ~fire
        pend[hold] += step[hold]
        calm = live & (s <= 0.0)
        if calm.any():
            ref[calm] += pend[calm]
            pend[calm] = 0.0
            start[calm] = t + 1
        if alarmed.any():
            a = alarmed
            s[a] = np.maximum(0.0, s[a] + model.llr(step, pf, tuned)[a])
            peak[a] = np.maximum(peak[a], s[a])
            inc[a] += step[a]
            shift = np.maximum(tuned, np.nan_to_num(model.observed(inc, pf), nan=model.tuned))
            back[a] = np.maximum(0.0, back[a] - model.llr(step, pf, shift)[a])
            back_zero[a & (back <= 0.0)] = t + 1
            done = a & (back >= h)
            for i in np.flatnonzero(done):
                end = int(back_zero[i])
                held = tuple(float(v[i]) for v in pf)
                runs.append(
                    Run(int(i), int(start[i]), int(fired_at[i]), end, peak[i], frozen[i], held)
                )
                ref[i] += stats[i, end : t + 1].sum(axis=0)  # back to normal: learned
            alarmed[done] = False
            s[done] = back[done] = 0.0
            pend[done] = 0.0
            start[done] = t + 1
        for i in np.flatnonzero(fire):
            inc[i] = stats[i, start[i] : t + 1].sum(axis=0)
        if fire.any():
            alarmed[fire] = True
            fired_at[fire] = t
            peak[fire] = s[fire]
            back[fire] = 0.0
            back_zero[fire] = t + 1
            pend[fire] = 0.0
    for i in np.flatnonzero(alarmed):
        held = tuple(float(v[i]) for v in pf) if pf is not None else ()
        runs.append(
            Run(int(i), int(start[i]), int(fired_at[i]), None, peak[i], frozen[i].copy(), held)
        )
    return runs


_Z = float(st.norm.ppf(BASELINE_QUANTILE))


def _rate_model(prior: np.ndarray, odds: float) -> Model:
    """Binomial steps ``[n, k]``: ``k`` of ``n`` calls failed (or came back empty); the
    shift is an odds ratio."""
    has_prior = ~np.isnan(prior)
    prior = np.nan_to_num(prior)

    def params(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        calls, events = ref[:, 0], ref[:, 1]
        a = events + np.where(has_prior, PRIOR_CALLS * prior, 0.0)
        b = calls - events + np.where(has_prior, PRIOR_CALLS * (1.0 - prior), 0.0)
        total = np.maximum(a + b, 1e-12)
        estimate = a / total
        # Wilson's upper bound for the rate, on ``a`` events in ``a + b`` calls.
        z2 = _Z**2
        centre = estimate + z2 / (2 * total)
        spread = _Z * np.sqrt(estimate * (1 - estimate) / total + z2 / (4 * total**2))
        p0 = np.clip((centre + spread) / (1 + z2 / total), RATE_FLOOR, 0.9)
        warm = has_prior | (calls >= RATE_WARMUP_CALLS)
        eager = calls < RATE_WARMUP_CALLS
        return warm, eager, (p0, np.maximum(estimate, RATE_FLOOR))

    def llr(step: np.ndarray, p: tuple[np.ndarray, ...], shift: np.ndarray) -> np.ndarray:
        n, k = step[:, 0], step[:, 1]
        p0 = p[0]
        p1 = shift * p0 / (1.0 - p0 + shift * p0)
        return k * np.log(p1 / p0) + (n - k) * np.log((1.0 - p1) / (1.0 - p0))

    def observed(total: np.ndarray, p: tuple[np.ndarray, ...]) -> np.ndarray:
        rate = np.clip(total[:, 1] / np.maximum(total[:, 0], 1.0), 1e-6, 0.999)
        return (rate / (1.0 - rate)) / (p[0] / (1.0 - p[0]))

    return Model(params, llr, observed, odds)


def _latency_params(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Steps ``[has, n, Σx, within SS, mean, mean², 1/n]`` of ``x = ln latency``."""
    steps, n, s1, within, m1, m2, inv = ref.T
    mu = s1 / np.maximum(n, 1.0)
    sigma2 = within / np.maximum(n - steps, 1.0)
    between = (m2 - m1**2 / np.maximum(steps, 1.0)) / np.maximum(steps - 1.0, 1.0)
    tau2 = np.maximum(TAU_MIN**2, between - sigma2 * inv / np.maximum(steps, 1.0))
    warm = (steps >= LATENCY_WARMUP_STEPS) & (n >= LATENCY_WARMUP_CALLS)
    error = np.sqrt(sigma2 / np.maximum(n, 1.0) + tau2 / np.maximum(steps, 1.0))
    upper = mu + _Z * error
    return warm, np.zeros_like(warm), (upper, sigma2, tau2, mu)


def _latency_llr(step: np.ndarray, p: tuple[np.ndarray, ...], shift: np.ndarray) -> np.ndarray:
    n, s1 = step[:, 1], step[:, 2]
    mean = s1 / np.maximum(n, 1.0)
    variance = p[1] / np.maximum(n, 1.0) + p[2]
    return np.where(n > 0, (shift * (mean - p[0]) - shift**2 / 2) / variance, 0.0)


def _latency_observed(total: np.ndarray, p: tuple[np.ndarray, ...]) -> np.ndarray:
    return total[:, 2] / np.maximum(total[:, 1], 1.0) - p[0]


LATENCY_MODEL = Model(_latency_params, _latency_llr, _latency_observed, math.log(LATENCY_RATIO))


def _spend_model(ratio: float, unit: np.ndarray, k: float) -> Model:
    """Steps ``[x, exposure s, calls]`` of an amount ``x``: negative binomial in clusters.

    ``x / unit`` counts clusters (a session's worth of the amount, ``unit`` per wallet),
    whose rate swings from step to step as a Gamma of shape ``k``; the llr of mean ``m0``
    against ``r m0`` is ``y ln(r (k + m0) / (k + r m0)) + k ln((k + m0) / (k + r m0))``.
    """

    def params(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        x, exposure, calls = ref[:, 0], ref[:, 1], ref[:, 2]
        seconds = np.maximum(exposure, 1.0)
        # The upper bound of the cluster rate's Gamma posterior (Wilson-Hilferty: shape >= 1).
        shape = x / unit + 1.0
        upper = shape * (1.0 - 1.0 / (9.0 * shape) + _Z / (3.0 * np.sqrt(shape))) ** 3
        upper = upper * unit / seconds
        warm = (exposure >= SPEND_WARMUP_S) & (calls >= SPEND_WARMUP_CALLS) & (x > 0)
        return warm, np.zeros_like(warm), (upper, x / seconds)

    def llr(step: np.ndarray, p: tuple[np.ndarray, ...], shift: np.ndarray) -> np.ndarray:
        y = step[:, 0] / unit
        m0 = p[0] * step[:, 1] / unit
        m1 = shift * m0
        return y * (np.log(shift) + np.log((k + m0) / (k + m1))) + k * np.log((k + m0) / (k + m1))

    def observed(total: np.ndarray, p: tuple[np.ndarray, ...]) -> np.ndarray:
        return total[:, 0] / np.maximum(total[:, 1], 1.0) / np.maximum(p[0], 1e-300)

    return Model(params, llr, observed, ratio)


# --- providers: errors, empty outputs, latency -------------------------------------------


@dataclass(frozen=True)
class _Panel:
    rows: pd.DataFrame  # the rows read, with "step" (hours since t0) and "entity"
    names: list[tuple[str, str | None]]  # entity -> (provider, model or None)
    t0: float
    steps: int
    now: float


def _provider_incidents(frame: pd.DataFrame, now: float) -> list[dict[str, Any]]:
    rows = frame[frame["ts"] >= now - PROVIDER_DAYS * DAY].copy()
    if rows.empty:
        return []
    t0 = math.floor(rows["ts"].min() / HOUR) * HOUR
    rows["step"] = ((rows["ts"] - t0) // HOUR).astype(np.int64)
    rows["short"] = _short_outputs(rows)
    steps = int((now - t0) // HOUR) + 1
    found: dict[str, list[dict[str, Any]]] = {}
    for level in ("model", "provider"):
        columns = ["provider", "model"] if level == "model" else ["provider"]
        codes = _codes(rows, columns)
        firsts = pd.Series(np.arange(len(rows))).groupby(codes).first().to_numpy()
        models = rows["model"].to_numpy()
        names = [
            (str(rows["provider"].iat[i]), models[i] if level == "model" else None) for i in firsts
        ]
        panel = _Panel(rows.assign(entity=codes), names, t0, steps, now)
        found[level] = _errors(panel) + _empties(panel) + _latency(panel)
    return _merge_levels(found["model"], found["provider"], rows)


def _short_outputs(rows: pd.DataFrame) -> np.ndarray:
    """Successful calls with an output of length 0, or under a tenth of the median of its
    model (in its unit), for its use case where that has ``MIN_NORM_CALLS`` outputs."""
    length = rows["output_len"].to_numpy()
    known = rows["success"].to_numpy() & ~np.isnan(length)
    positive = known & (length > 0)
    cell = _codes(rows, ["provider", "model", "output_unit"])
    norm = _group_median(cell, length, positive, 1)
    by_use_case = _group_median(
        _codes(rows, ["provider", "model", "output_unit", "use_case"]),
        length,
        positive,
        MIN_NORM_CALLS,
    )
    norm = np.where(np.isnan(by_use_case), norm, by_use_case)
    return known & ((length <= 0) | (length < SHORT_FRACTION * np.nan_to_num(norm)))


def _codes(rows: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One code per distinct combination of ``columns`` (by their integer codes)."""
    code = np.zeros(len(rows), dtype=np.int64)
    for column in columns:
        c = rows[f"{column}_code"].to_numpy()
        code = code * (int(c.max()) + 2) + c
    return pd.factorize(code)[0]


def _group_median(code: np.ndarray, values: np.ndarray, use: np.ndarray, least: int) -> np.ndarray:
    """Each row's group median of ``values[use]`` (NaN where fewer than ``least``)."""
    out = np.full(len(code), np.nan)
    if not use.any():
        return out
    c, v = code[use], values[use]
    order = np.lexsort((v, c))
    c, v = c[order], v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
    sizes = np.diff(np.r_[starts, len(c)])
    middle = (v[starts + (sizes - 1) // 2] + v[starts + sizes // 2]) / 2
    medians = np.full(code.max() + 1, np.nan)
    medians[c[starts]] = np.where(sizes >= least, middle, np.nan)
    return medians[code]


def _bincount(panel: _Panel, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    rows = panel.rows
    index = rows["entity"].to_numpy()[mask] * panel.steps + rows["step"].to_numpy()[mask]
    w = None if weights is None else weights[mask]
    size = len(panel.names) * panel.steps
    return np.bincount(index, weights=w, minlength=size).reshape(len(panel.names), panel.steps)


def _peer_median(calls: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Each entity's prior rate: the median rate of the others with enough calls."""
    rates = np.where(calls >= MIN_PEER_CALLS, events / np.maximum(calls, 1), np.nan)
    out = np.full(len(calls), np.nan)
    for i in range(len(calls)):
        others = np.delete(rates, i)
        others = others[~np.isnan(others)]
        if len(others) >= 2:
            out[i] = float(np.median(others))
    return out


def _errors(panel: _Panel) -> list[dict[str, Any]]:
    failed = ~panel.rows["success"].to_numpy()
    everything = np.ones(len(panel.rows), dtype=bool)
    return _rate_incidents(panel, "error_spike", everything, failed, ERROR_ODDS)


def _empties(panel: _Panel) -> list[dict[str, Any]]:
    rows = panel.rows
    known = (rows["success"] & rows["output_len"].notna()).to_numpy()
    if not known.any():
        return []
    return _rate_incidents(panel, "empty_outputs", known, rows["short"].to_numpy(), EMPTY_ODDS)


def _rate_incidents(
    panel: _Panel, kind: str, counted: np.ndarray, event: np.ndarray, odds: float
) -> list[dict[str, Any]]:
    n = _bincount(panel, counted)
    k = _bincount(panel, counted & event)
    prior = _peer_median(n.sum(axis=1), k.sum(axis=1))
    rates = _rate_model(prior, odds)
    runs = cusum(np.stack([n, k], axis=-1), rates, H_PROVIDER)
    rows = panel.rows[counted]
    flags = event[counted]
    out = []
    for run in runs:
        mine = (rows["entity"] == run.entity).to_numpy()
        ts, flag = rows["ts"].to_numpy()[mine], flags[mine].astype(float)
        p0, estimate = run.params
        p1 = odds * p0 / (1.0 - p0 + odds * p0)
        row_llr = np.where(flag > 0, math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0)))
        since = _change_point(panel, run, ts, row_llr)
        until = _until(panel, run)
        after = (ts >= since) & (ts <= (until if until is not None else panel.now))
        calls, events = int(after.sum()), int(flag[after].sum())
        observed = events / calls if calls else 0.0
        baseline = estimate
        ratio = observed / baseline
        if events < MIN_EVENTS or ratio < MIN_RATE_RATIO or observed - baseline < MIN_RATE_EXCESS:
            continue
        provider, model = panel.names[run.entity]
        own = run.ref[0] >= RATE_WARMUP_CALLS
        against = f"against {baseline:.1%} " + ("before" if own else "for the others")
        evidence: dict[str, Any] = {
            "detector": "cusum, binomial",
            "measure": "error_rate" if kind == "error_spike" else "empty_or_truncated_rate",
            "baseline": round(baseline, 5),
            "observed": round(observed, 5),
            "ratio": round(ratio, 2),
            "calls": calls,
            "baseline_calls": int(run.ref[0]),
            "baseline_from": "own history" if own else "others",
            "statistic": round(float(run.peak), 2),
            "threshold": round(H_PROVIDER, 2),
            "tuned_to_odds_ratio": odds,
        }
        what = panel.rows.loc[rows.index[mine][after]]
        if kind == "error_spike":
            evidence["errors"] = events
            text = (
                f"{_entity(provider, model)} failed {observed:.0%} of its calls "
                f"({events:,} of {calls:,}) {_span(since, until)}, {against}"
            )
        else:
            empty = int((what["output_len"] <= 0).sum())
            evidence.update(empty=empty, truncated=events - empty)
            text = (
                f"{_entity(provider, model)} returned empty or truncated outputs in "
                f"{observed:.0%} of its successful calls ({events:,} of {calls:,}) "
                f"{_span(since, until)}, {against}"
            )
        out.append(_incident(kind, panel, run, since, until, evidence, text))
    return out


def _latency(panel: _Panel) -> list[dict[str, Any]]:
    rows = panel.rows
    ok = (rows["success"] & (rows["latency_ms"] > 0)).to_numpy()
    if ok.sum() < LATENCY_WARMUP_CALLS:
        return []
    x = np.log(rows["latency_ms"].to_numpy().clip(min=1e-3))
    n = _bincount(panel, ok)
    s1 = _bincount(panel, ok, x)
    s2 = _bincount(panel, ok, x * x)
    has = (n > 0).astype(float)
    mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
    within = np.maximum(s2 - n * mean**2, 0.0)
    inv = np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0)
    stats = np.stack([has, n, s1, within, mean, mean**2, inv], axis=-1)
    out = []
    for run in cusum(stats, LATENCY_MODEL, H_PROVIDER):
        mine = ok & (rows["entity"] == run.entity).to_numpy()
        ts, lx = rows["ts"].to_numpy()[mine], x[mine]
        upper, sigma2, tau2, mu = run.params
        delta = LATENCY_MODEL.tuned
        row_llr = (delta * (lx - upper) - delta**2 / 2) / (sigma2 + tau2)
        since = _change_point(panel, run, ts, row_llr)
        until = _until(panel, run)
        after = (ts >= since) & (ts <= (until if until is not None else panel.now))
        calls = int(after.sum())
        if calls < MIN_LATENCY_CALLS:
            continue
        baseline, observed = math.exp(mu), math.exp(float(lx[after].mean()))
        ratio = observed / baseline
        if ratio < MIN_LATENCY_RATIO:
            continue
        provider, model = panel.names[run.entity]
        evidence = {
            "detector": "cusum, normal (hourly mean of log latency)",
            "measure": "latency_ms (geometric mean)",
            "baseline": round(baseline, 1),
            "observed": round(observed, 1),
            "ratio": round(ratio, 2),
            "calls": calls,
            "baseline_calls": int(run.ref[1]),
            "statistic": round(float(run.peak), 2),
            "threshold": round(H_PROVIDER, 2),
            "tuned_to_ratio": LATENCY_RATIO,
        }
        text = (
            f"{_entity(provider, model)} is {ratio:.1f}× slower {_span(since, until)}: "
            f"{observed:,.0f} ms against {baseline:,.0f} ms before (geometric mean of "
            f"{calls:,} successful calls)"
        )
        out.append(_incident("latency_regression", panel, run, since, until, evidence, text))
    return out


def _change_point(panel: _Panel, run: Run, ts: np.ndarray, llr: np.ndarray) -> float:
    """The call from which the llr summed to the alarm is largest: the refined onset."""
    lo = panel.t0 + (run.onset - 1) * HOUR
    hi = panel.t0 + (run.alarm + 1) * HOUR
    inside = (ts >= lo) & (ts < hi)
    if not inside.any():
        return panel.t0 + run.onset * HOUR
    suffix = np.cumsum(llr[inside][::-1])[::-1]
    return float(ts[inside][int(np.argmax(suffix))])


def _until(panel: _Panel, run: Run) -> float | None:
    return None if run.end is None else min(panel.t0 + run.end * HOUR, panel.now)


def _incident(
    kind: str,
    panel: _Panel,
    run: Run,
    since: float,
    until: float | None,
    evidence: dict[str, Any],
    message: str,
) -> dict[str, Any]:
    provider, model = panel.names[run.entity]
    mine = panel.rows["entity"].to_numpy() == run.entity
    last = float(panel.rows["ts"].to_numpy()[mine].max())
    return {
        "key": f"{kind}|{provider}|{model or '*'}|{int(since // HOUR)}",
        "kind": kind,
        "provider": provider,
        "model": model,
        "since_ts": round(since, 3),
        "until_ts": None if until is None else round(until, 3),
        "active": until is None and panel.now - last < STALE_S,
        "evidence": evidence,
        "message": message,
    }


def _merge_levels(
    models: list[dict[str, Any]], providers: list[dict[str, Any]], rows: pd.DataFrame
) -> list[dict[str, Any]]:
    """One incident per event: the provider's when all its busy models have it, else the
    models' (the provider's alone when no single model shows it)."""
    out = list(models)
    for p in providers:
        end = p["until_ts"] if p["until_ts"] is not None else math.inf
        during = rows[
            (rows["provider"] == p["provider"])
            & (rows["ts"] >= p["since_ts"])
            & (rows["ts"] <= end)
        ]
        share = during["model"].fillna("").value_counts(normalize=True)
        busy = {m or None for m, s in share.items() if s >= 0.05}
        same = [
            m
            for m in models
            if m["kind"] == p["kind"]
            and m["provider"] == p["provider"]
            and m["since_ts"] <= end
            and (m["until_ts"] is None or m["until_ts"] >= p["since_ts"])
        ]
        fired = {m["model"] for m in same}
        if not same:
            out.append(p)
        elif len(busy) > 1 and busy <= fired:
            out = [m for m in out if m not in same] + [p]
    return out


# --- wallets: call bursts -----------------------------------------------------------------


def _burst_incidents(frame: pd.DataFrame, now: float) -> list[dict[str, Any]]:
    """A CUSUM over each wallet's gaps between calls: vectorised over all wallets, then
    each wallet that alarms read again with its baseline frozen at the onset."""
    rows = frame[frame["wid"] >= 0]
    order = np.lexsort((rows["ts"].to_numpy(), rows["wid"].to_numpy()))
    code = rows["wid"].to_numpy()[order]
    wallet = rows["wallet"].to_numpy()[order]
    ts = rows["ts"].to_numpy()[order]
    first = np.r_[True, code[1:] != code[:-1]]
    gap = np.where(first, np.nan, np.diff(ts, prepend=ts[0]))
    short = ~first & (gap <= SESSION_GAP_S)
    if short.sum() < BURST_WARMUP_GAPS:
        return []
    pace_all = float(np.median(gap[short] + 1.0))  # seconds, with 1 s for calls at once
    group = np.cumsum(first) - 1
    log_gap = np.where(short, np.log(np.where(short, gap, 0.0) + 1.0), 0.0)
    # The wallet's own pace from the gaps before each one (not counting it).
    seen = _grouped_cumsum(short.astype(float), group) - short
    summed = _grouped_cumsum(log_gap, group) - log_gap
    own = np.where(seen >= BURST_WARMUP_GAPS, np.exp(summed / np.maximum(seen, 1.0)), np.inf)
    rate = 1.0 / np.minimum(own, pace_all)
    log_r = math.log(BURST_RATIO)
    llr = np.where(first, 0.0, log_r - (BURST_RATIO - 1.0) * rate * np.nan_to_num(gap))
    total = _grouped_cumsum(llr, group)
    low = pd.Series(np.minimum(total, 0.0)).groupby(group).cummin().to_numpy()
    s = total - np.minimum(low, 0.0)
    candidates = np.unique(group[s >= H_BURST])
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(ts)]
    out = []
    for g in candidates:
        lo, hi = starts[g], ends[g]
        out += _bursts_of(str(wallet[lo]), ts[lo:hi], gap[lo:hi], rate[lo:hi], now)
    return out


def _grouped_cumsum(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    offset = np.repeat(np.r_[0.0, total[starts[1:] - 1]], np.diff(np.r_[starts, len(values)]))
    return total - offset


def _bursts_of(
    wallet: str, ts: np.ndarray, gap: np.ndarray, rate: np.ndarray, now: float
) -> list[dict[str, Any]]:
    """The exact pass over one wallet: alarm, onset (the burst's first call), frozen pace,
    and the end once a reverse CUSUM (with the open gap to ``now``) says the pace is back."""
    log_r, r1 = math.log(BURST_RATIO), BURST_RATIO - 1.0
    out = []
    s, zero, i, n = 0.0, 0, 1, len(ts)
    while i < n:
        s = max(0.0, s + log_r - r1 * rate[i] * gap[i])
        if s <= 0.0:
            zero = i
        if s < H_BURST:
            i += 1
            continue
        onset, pace, peak, back, back_zero = zero, rate[zero + 1], s, 0.0, i
        j = i + 1
        while j <= n:
            # Recovery weighs the usual pace against the burst's own (at least r times it).
            seen = (j - onset) / max(ts[min(j, n - 1)] - ts[onset], 1.0)
            shift = max(BURST_RATIO, seen / pace)
            if j < n:
                x = log_r - r1 * pace * gap[j]
                xb = math.log(shift) - (shift - 1.0) * pace * gap[j]
            else:  # no call from the last one to now
                x = -r1 * pace * max(now - ts[-1], 0.0)
                xb = -(shift - 1.0) * pace * max(now - ts[-1], 0.0)
            s = max(0.0, s + x)
            peak = max(peak, s)
            back = max(0.0, back - xb)
            if back <= 0.0:
                back_zero = j
            if back >= H_BURST:
                break
            j += 1
        ended = back >= H_BURST
        last = back_zero if ended else n - 1  # the burst's last call
        incident = _burst(wallet, ts, onset, min(last, n - 1), pace, peak, ended)
        if incident is not None:
            out.append(incident)
        s, zero, i = 0.0, last, last + 1
    return out


def _burst(
    wallet: str,
    ts: np.ndarray,
    onset: int,
    last: int,
    pace: float,
    peak: float,
    ended: bool,
) -> dict[str, Any] | None:
    calls = last - onset + 1
    if calls < MIN_BURST_CALLS:
        return None
    times = ts[onset : last + 1]
    duration = float(times[-1] - times[0])
    in_60s = int((np.searchsorted(times, times + 60.0, side="right") - np.arange(calls)).max())
    observed = (calls - 1) / max(duration, 1.0) * 60.0  # per minute, gaps over their time
    baseline = pace * 60.0
    since = float(times[0])
    until = float(times[-1]) if ended else None
    evidence = {
        "detector": "cusum, Poisson process (gaps between calls)",
        "measure": "calls_per_minute",
        "baseline": round(baseline, 3),
        "observed": round(observed, 2),
        "ratio": round(observed / baseline, 1),
        "calls": calls,
        "duration_s": round(duration, 1),
        "peak_calls_in_60s": in_60s,
        "statistic": round(float(peak), 2),
        "threshold": round(H_BURST, 2),
        "tuned_to_ratio": BURST_RATIO,
    }
    message = (
        f"wallet {_short(wallet)} made {calls:,} calls in {_duration(duration)} "
        f"{_from(since)} (up to {in_60s:,} in 60 s), {observed / baseline:,.0f}× its usual "
        f"pace of {baseline:.2g} a minute"
    )
    return _wallet_incident("call_burst", wallet, since, until, evidence, message)


# --- wallets: spend -----------------------------------------------------------------------


MEASURES = (("calls", "calls"), ("credits", "credits_used"), ("cost_usd", "cost_usd"))


def _spend_incidents(frame: pd.DataFrame, now: float) -> list[dict[str, Any]]:
    rows = frame[frame["wid"] >= 0]
    per_wallet = rows.groupby("wid")["ts"].agg(["size", "min"])
    eligible = per_wallet[
        (per_wallet["size"] >= MIN_WALLET_CALLS)
        & (now - per_wallet["min"] >= SPEND_WARMUP_S + HOUR)
    ]
    if eligible.empty:
        return []
    rows = rows[rows["wid"].isin(eligible.index)]
    wids = eligible.index.to_numpy()
    first = eligible["min"].to_numpy()
    local = np.full(int(frame["wid"].max()) + 1, -1)
    local[wids] = np.arange(len(wids))
    entity = local[rows["wid"].to_numpy()]  # 0 .. len(wids) - 1, in the order of wids
    runs: list[tuple[str, str, Run, float, float]] = []  # resolution, measure, run, t0, step
    for measure, column in MEASURES:
        amount = np.ones(len(rows)) if measure == "calls" else rows[column].fillna(0).to_numpy()
        if not (amount > 0).any():
            continue
        unit = _cluster_units(rows["ts"].to_numpy(), entity, amount, len(wids))
        for resolution, step_s in (("hour", HOUR), ("day", DAY)):
            blocks = [
                _WalletPanel(rows["ts"].to_numpy(), entity, amount, first, unit, b, step_s, now)
                for b in range(0, len(wids), WALLET_BLOCK)
            ]
            for block in blocks:
                block.resolution = resolution
            k = _swing_shape(blocks)
            for block in blocks:
                runs += [(resolution, measure, run, block.t0, step_s) for run in block.runs(k)]
    return _spend_describe(rows, entity, runs, now)


def _cluster_units(ts: np.ndarray, entity: np.ndarray, amount: np.ndarray, n: int) -> np.ndarray:
    """Per wallet, the amount a cluster of calls (gaps under 30 min) holds: E[S²] / E[S],
    as a multiple of its per-call E[a²] / E[a] pooled over wallets (upper quartile)."""
    order = np.lexsort((ts, entity))
    owner, t, a = entity[order], ts[order], amount[order]
    new = np.r_[True, (owner[1:] != owner[:-1]) | (np.diff(t) > SESSION_GAP_S)]
    cluster = np.cumsum(new) - 1
    sizes = np.bincount(cluster, weights=a)
    of = owner[new]
    s1 = np.bincount(of, weights=sizes, minlength=n)
    s2 = np.bincount(of, weights=sizes**2, minlength=n)
    clusters = np.bincount(of, minlength=n)
    per_call = np.bincount(owner, weights=a * a, minlength=n) / np.maximum(
        np.bincount(owner, weights=a, minlength=n), 1e-12
    )
    factor = s2 / np.maximum(s1, 1e-12) / np.maximum(per_call, 1e-12)
    usable = (clusters >= 3) & (s1 > 0)
    pooled = float(np.quantile(factor[usable], DISPERSION_QUANTILE)) if usable.any() else 1.0
    return np.maximum(pooled, 1.0) * np.where(per_call > 0, per_call, 1.0)


class _WalletPanel:
    """One block of wallets' totals per step of one amount (dense: wallets × steps)."""

    resolution = "hour"

    def __init__(
        self,
        ts: np.ndarray,
        entity: np.ndarray,
        amount: np.ndarray,
        first: np.ndarray,
        unit: np.ndarray,
        offset: int,
        step_s: float,
        now: float,
    ) -> None:
        self.offset = offset
        block = slice(offset, offset + WALLET_BLOCK)
        self.unit, first = unit[block], first[block]
        days = SPEND_DAYS["hour" if step_s == HOUR else "day"]
        self.t0 = math.floor(max(first.min(), now - days * DAY) / step_s) * step_s
        steps = int((now - self.t0) // step_s) + 1
        edges = self.t0 + np.arange(steps) * step_s
        self.exposure = np.clip(
            np.minimum(edges + step_s, now)[None, :] - np.maximum(edges[None, :], first[:, None]),
            0.0,
            None,
        )
        mine = (entity >= offset) & (entity < offset + len(first)) & (ts >= self.t0)
        index = (entity[mine] - offset) * steps + ((ts[mine] - self.t0) // step_s).astype(np.int64)
        size = len(first) * steps
        self.x = np.bincount(index, weights=amount[mine], minlength=size).reshape(-1, steps)
        self.calls = np.bincount(index, minlength=size).reshape(-1, steps).astype(float)

    def inverse_shapes(self) -> np.ndarray:
        """Per wallet, 1 / k by the method of moments: Var(y) = m + m² / k in clusters."""
        y = self.x / self.unit[:, None]
        mu = self.x.sum(axis=1) / np.maximum(self.exposure.sum(axis=1), 1.0)
        m = mu[:, None] * self.exposure / self.unit[:, None]
        seen = self.exposure > 0
        excess = np.where(seen, (y - m) ** 2 - m, 0.0).sum(axis=1)
        scale = np.where(seen, m * m, 0.0).sum(axis=1)
        usable = (seen.sum(axis=1) >= 3) & (self.x.sum(axis=1) > 0) & (scale > 0)
        return (excess / np.maximum(scale, 1e-12))[usable]

    def runs(self, k: float) -> list[Run]:
        model = _spend_model(SPEND_RATIO[self.resolution], self.unit, k)
        stats = np.stack([self.x, self.exposure, self.calls], axis=-1)
        found = cusum(stats, model, H_SPEND[self.resolution])
        return [dataclasses.replace(r, entity=r.entity + self.offset) for r in found]


def _swing_shape(blocks: list[_WalletPanel]) -> float:
    """The Gamma shape of how a wallet's rate swings between steps: upper-quartile wallet."""
    inverse = np.concatenate([b.inverse_shapes() for b in blocks])
    if not len(inverse):
        return 1.0
    return 1.0 / float(np.clip(np.quantile(inverse, DISPERSION_QUANTILE), 0.02, 20.0))


def _spend_describe(
    rows: pd.DataFrame,
    entity: np.ndarray,
    runs: list[tuple[str, str, Run, float, float]],
    now: float,
) -> list[dict[str, Any]]:
    """Each wallet's overlapping alarms (any measure, either resolution) as one incident."""
    by_wallet: dict[int, list[tuple[str, str, Run, float, float]]] = {}
    for item in runs:
        by_wallet.setdefault(item[2].entity, []).append(item)
    out = []
    for e, items in by_wallet.items():
        mine = rows[entity == e]
        wallet = str(mine["wallet"].iloc[0])
        spans = sorted((_run_span(item, now), item) for item in items)
        clusters: list[tuple[float, list[tuple[str, str, Run, float, float]]]] = []
        for (begin, end), item in spans:
            if clusters and begin <= clusters[-1][0]:
                clusters[-1] = (max(clusters[-1][0], end), [*clusters[-1][1], item])
            else:
                clusters.append((end, [item]))
        for _, cluster in clusters:
            incident = _spend_incident(wallet, mine, cluster, now)
            if incident is not None:
                out.append(incident)
    return out


def _run_span(item: tuple[str, str, Run, float, float], now: float) -> tuple[float, float]:
    _, _, run, t0, step = item
    return t0 + run.onset * step, now if run.end is None else min(t0 + run.end * step, now)


def _spend_incident(
    wallet: str, rows: pd.DataFrame, items: list[tuple[str, str, Run, float, float]], now: float
) -> dict[str, Any] | None:
    # The strongest alarm (by how far it went past its threshold) dates the incident.
    resolution, measure, run, t0, step = max(
        items, key=lambda i: (i[2].peak / H_SPEND[i[0]], i[0] == "hour")
    )
    ratio = SPEND_RATIO[resolution]
    column = dict(MEASURES)[measure]
    amount = np.ones(len(rows)) if measure == "calls" else rows[column].fillna(0).to_numpy()
    ts = rows["ts"].to_numpy()
    mu = run.ref[0] / max(run.ref[1], 1.0)
    lo, hi = t0 + (run.onset - 1) * step, min(t0 + (run.alarm + 1) * step, now)
    inside = (ts >= lo) & (ts < hi)
    since = t0 + run.onset * step
    if inside.any():
        # Poisson-process change point: the call from which the excess is largest.
        after = np.cumsum(amount[inside][::-1])[::-1]
        score = after * math.log(ratio) - (ratio - 1.0) * mu * (hi - ts[inside])
        since = float(ts[inside][int(np.argmax(score))])
    # The hourly detectors, where they alarmed, tell the end more finely.
    finest = [item for item in items if item[0] == "hour"] or items
    ongoing = any(item[2].end is None for item in finest)
    until = None if ongoing else max(_run_span(item, now)[1] for item in finest)
    stop = until if until is not None else now
    before, during = ts < since, (ts >= since) & (ts <= stop)
    history = max(since - float(ts.min()), 1.0)
    span = max(stop - since, HOUR)
    per_day: dict[str, dict[str, float]] = {}
    for name, col in MEASURES:
        values = np.ones(len(rows)) if name == "calls" else rows[col].fillna(0).to_numpy()
        if not (values > 0).any():
            continue
        base = float(values[before].sum()) / history * DAY
        seen = float(values[during].sum()) / span * DAY
        per_day[name] = {
            "baseline": round(base, 4),
            "observed": round(seen, 4),
            "ratio": round(seen / base, 1) if base > 0 else None,  # type: ignore[dict-item]
        }
    main = per_day[measure]
    if main["ratio"] is None or main["ratio"] < MIN_SPEND_RATIO:
        return None
    calls = int(during.sum())
    evidence = {
        "detector": f"cusum, negative binomial ({measure} per {resolution})",
        "measure": f"{measure}_per_day",
        "baseline": main["baseline"],
        "observed": main["observed"],
        "ratio": main["ratio"],
        "calls": calls,
        "baseline_calls": int(before.sum()),
        "per_day": per_day,
        "detectors": sorted({f"{m} per {r}" for r, m, *_ in items}),
        "statistic": round(float(run.peak), 2),
        "threshold": round(H_SPEND[resolution], 2),
        "tuned_to_ratio": ratio,
    }
    usual = per_day["calls"]
    what = {"calls": "calls", "credits": "credits", "cost_usd": "spend in USD"}[measure]
    message = (
        f"wallet {_short(wallet)} made {main['ratio']:,.0f}× its usual {what} "
        f"{_span(since, until)}: {main['observed']:,.4g} a day against {main['baseline']:,.4g}"
    )
    if measure != "calls":
        message += (
            f" ({calls:,} calls, {usual['observed']:,.3g} a day against {usual['baseline']:,.3g})"
        )
    return _wallet_incident("spend_spike", wallet, since, until, evidence, message)


def _without_bursts(
    spikes: list[dict[str, Any]], bursts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A spend spike that a call burst of the same wallet explains is that burst."""
    out = []
    for spike in spikes:
        end = spike["until_ts"] if spike["until_ts"] is not None else math.inf
        explained = sum(
            b["evidence"]["calls"]
            for b in bursts
            if b["wallet"] == spike["wallet"]
            and b["since_ts"] <= end
            and (b["until_ts"] or math.inf) >= spike["since_ts"] - HOUR
        )
        if explained < 0.5 * spike["evidence"]["calls"]:
            out.append(spike)
    return out


# --- words --------------------------------------------------------------------------------


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _from(since: float) -> str:
    return f"from {_when(since)}"


def _span(since: float, until: float | None) -> str:
    return f"since {_when(since)}" if until is None else f"from {_when(since)} to {_when(until)}"


def _entity(provider: str, model: str | None) -> str:
    return f"{provider} {model}" if model else provider


def _short(wallet: str) -> str:
    return wallet if len(wallet) <= 14 else wallet[:12] + "…"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR:.1f} h"


def _wallet_incident(
    kind: str,
    wallet: str,
    since: float,
    until: float | None,
    evidence: dict[str, Any],
    message: str,
) -> dict[str, Any]:
    """A wallet's incident as the export holds it; one key per wallet, kind and onset hour."""
    return {
        "key": f"{kind}|{wallet}|{int(since // HOUR)}",
        "kind": kind,
        "wallet": wallet,
        "since_ts": round(since, 3),
        "until_ts": None if until is None else round(until, 3),
        "active": until is None,
        "evidence": evidence,
        "message": message,
    }


class IncidentDetector(BaseEstimator):
    """The incidents model as an estimator: ``fit(X)`` finds the incidents of a frame of
    window rows (``COLUMNS``; any may be missing).

    Parameter: ``now`` (epoch seconds), as :func:`detect_incidents`'s: None for the newest
    row's ``ts``. Learned: ``incidents_``, newest first, JSON-ready. ``predict`` names the
    incident each row falls in.

    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ts = np.sort(rng.uniform(0, 4 * 86_400, 8_000)) + 1.7e9
    >>> rows = pd.DataFrame({"ts": ts, "provider": "acme", "model": "m1",
    ...                      "success": rng.random(ts.size) > np.where(ts > ts[6000], 0.4, 0.02)})
    >>> model = IncidentDetector().fit(rows)
    >>> [i["kind"] for i in model.incidents_], model.predict(rows.iloc[[0]]).tolist()
    (['error_spike'], [None])
    """

    def __init__(self, now: float | None = None) -> None:
        self.now = now

    def fit(self, X: pd.DataFrame, y: None = None) -> IncidentDetector:
        """Find the incidents of ``X``; ``y`` is ignored."""
        self.incidents_ = detect_incidents(X, self.now) if len(X) else []
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The key of the incident each row falls in (its wallet's, or its provider's and
        model's, from its onset until it ended), the newest; None for the others."""
        out = np.full(len(X), None, dtype=object)
        ts = X["ts"].to_numpy(dtype=float)
        column = {c: X[c].to_numpy() if c in X.columns else out for c in COLUMNS}
        for incident in reversed(self.incidents_):  # oldest first: the newest is kept
            inside = ts >= incident["since_ts"]
            if incident["until_ts"] is not None:
                inside &= ts <= incident["until_ts"]
            if "wallet" in incident:
                inside &= column["wallet"] == incident["wallet"]
            else:
                inside &= column["provider"] == incident["provider"]
                if incident["model"] is not None:
                    inside &= column["model"] == incident["model"]
            out[inside] = incident["key"]
        return out
