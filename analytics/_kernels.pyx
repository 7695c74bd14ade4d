# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The scoring arithmetic, compiled: the forest walk (analytics.forest), the per-row features
(analytics.features) and the evidence (analytics.anomaly); and the recommender's Thompson
draws (analytics.recommend).

Each kernel takes C-ordered arrays of one dtype each (``const`` where it only reads, so
read-only arrays need no copy); the Python modules convert what they are given. Loops run
without the GIL. No ``-ffast-math``: NaN tests (``v != v``) and the float32 rounding of
the forest's inputs must behave as in numpy and scikit-learn.
"""

cimport cython
from libc.math cimport exp, fabs, log, log1p
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

import numpy as np

cdef double _MAX = 1.7976931348623157e308  # np.finfo(np.float64).max


# --- analytics.forest ---------------------------------------------------------------------


@cython.cdivision(True)
def score_samples(
    const double[:, ::1] X,
    const uint32_t[::1] feature,
    const double[::1] threshold,
    const uint32_t[::1] kids,
    const uint8_t[::1] missing_right,
    const double[::1] value,
    const uint32_t[::1] roots,
    Py_ssize_t depth,
    double denominator,
):
    """``score_samples`` of float64 ``X`` (rows, features), over CompiledForest's arrays."""
    cdef Py_ssize_t n_rows = X.shape[0], n_features = X.shape[1], n_trees = roots.shape[0]
    out_array = np.empty(n_rows)
    cdef double[::1] out = out_array
    cdef Py_ssize_t i, k, t, step
    cdef uint32_t node
    cdef bint has_nan, right
    cdef double v, total, ratio
    # Scratch space: one row's inputs and each tree's current node.
    cdef double *x = <double *>malloc(max(n_features, 1) * sizeof(double))
    cdef uint32_t *state = <uint32_t *>malloc(n_trees * sizeof(uint32_t))
    if x == NULL or state == NULL:
        free(x)
        free(state)
        raise MemoryError()
    with nogil:
        for i in range(n_rows):
            # sklearn's trees see X as float32 and compare it, promoted back to float64, with
            # float64 thresholds; values beyond float32's range become +-inf there too.
            has_nan = False
            for k in range(n_features):
                x[k] = <double>(<float>X[i, k])
                has_nan = has_nan or x[k] != x[k]
            # All trees a step at a time, depth steps (a leaf is its own child): the trees'
            # walks are independent, so the CPU overlaps them instead of waiting on each load.
            for t in range(n_trees):
                state[t] = roots[t]
            if has_nan:  # NaN compares False, i.e. left; sklearn sends it the stored way.
                for step in range(depth):
                    for t in range(n_trees):
                        node = state[t]
                        v = x[feature[node]]
                        right = (v > threshold[node]) or (v != v and missing_right[node])
                        state[t] = kids[2 * node + right]
            else:
                for step in range(depth):
                    for t in range(n_trees):
                        node = state[t]
                        state[t] = kids[2 * node + (x[feature[node]] > threshold[node])]
            total = 0.0
            for t in range(n_trees):
                total += value[state[t]]
            # With one training sample per tree the denominator is 0 and sklearn takes the
            # ratio as 1. The sign is sklearn's: the paper's anomaly score, negated.
            ratio = total / denominator if denominator != 0.0 else 1.0
            out[i] = -(2.0 ** -ratio)
        free(x)
        free(state)
    return out_array


# --- analytics.features -------------------------------------------------------------------


cdef void _log_scale(double[:, ::1] raw, const uint8_t[::1] log_scaled) noexcept nogil:
    cdef Py_ssize_t i, j
    for i in range(raw.shape[0]):
        for j in range(raw.shape[1]):
            if log_scaled[j]:
                raw[i, j] = log1p(raw[i, j])


@cython.cdivision(True)
cdef void _distances(
    const double[:, ::1] base,
    const int64_t[:, ::1] codes,
    const double[::1] median,
    const double[::1] scale,
    const uint8_t[::1] low_side_only,
    double[:, ::1] out,
) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int64_t entry
    cdef double z
    for i in range(base.shape[0]):
        for j in range(base.shape[1]):
            entry = codes[i, j]  # the norm entries are codes' first columns
            z = (base[i, j] - median[entry]) / scale[entry]
            z = -z if low_side_only[j] else fabs(z)
            # np.nan_to_num's: a missing measure is normal, infinities the largest floats.
            if z != z:
                z = 0.0
            elif z > _MAX:
                z = _MAX
            elif z < -_MAX:
                z = -_MAX
            out[i, j] = z


def log_scale(double[:, ::1] raw, const uint8_t[::1] log_scaled):
    """In place: the measures of ``raw`` (n, len(BASE)) on the model's scale."""
    with nogil:
        _log_scale(raw, log_scaled)


def distances(
    const double[:, ::1] base,
    const int64_t[:, ::1] codes,
    const double[::1] median,
    const double[::1] scale,
    const uint8_t[::1] low_side_only,
    double[:, ::1] out,
):
    """Robust z of ``base`` against the norm entries in ``codes[:, :len(BASE)]``, into out."""
    with nogil:
        _distances(base, codes, median, scale, low_side_only, out)


# Columns of featurise's codes after the norm entries (see analytics.features._PROVIDER...).
cdef enum:
    _PROVIDER = 4
    _USE_CASE = 5
    _SESSION = 6


@cython.cdivision(True)
def featurise(
    double[:, ::1] base,
    const int64_t[:, ::1] codes,
    const double[::1] median,
    const double[::1] scale,
    const uint8_t[::1] log_scaled,
    const uint8_t[::1] low_side_only,
    const float[:, ::1] session_counts,
    const float[:, ::1] wallet_counts,
    Py_ssize_t n_providers,
    const double[:, :, ::1] fresh,
    const uint8_t[:, ::1] has_fresh,
):
    """featurise's arithmetic, given the raw measures (put on the model's scale in place)
    and each row's codes (see the _NORM... column numbers of analytics.features)."""
    cdef Py_ssize_t n = base.shape[0], n_p = n_providers
    cdef Py_ssize_t width = session_counts.shape[1]
    cdef Py_ssize_t n_u = width - n_p
    distance_array = np.empty((n, base.shape[1]))
    X_array = np.zeros((n, 2 * width + n_u))
    others_array = np.zeros((n, 2, n_p + 1))
    provider_array = np.empty(n, np.int64)
    cdef double[:, ::1] distance = distance_array
    cdef double[:, ::1] X = X_array
    cdef double[:, :, ::1] others = others_array
    cdef int64_t[::1] provider_out = provider_array
    cdef double *mine = <double *>malloc(max(width, 1) * sizeof(double))
    if mine == NULL:
        raise MemoryError()
    cdef Py_ssize_t i, k, c
    cdef int64_t provider, use_case, found
    cdef double calls, uses
    cdef bint any_fresh = has_fresh.shape[0] > 0
    with nogil:
        _log_scale(base, log_scaled)
        _distances(base, codes, median, scale, low_side_only, distance)
        for i in range(n):
            provider, use_case = codes[i, _PROVIDER], codes[i, _USE_CASE]
            for k in range(2):
                found = codes[i, _SESSION + k]
                for c in range(width):
                    if found < 0:
                        mine[c] = 0.0
                    elif k == 0:
                        mine[c] = session_counts[found, c]
                    else:
                        mine[c] = wallet_counts[found, c]
                # The row's own call, when its session or wallet holds one like it.
                if provider >= 0 and mine[provider] >= 1.0:
                    mine[provider] -= 1.0
                if use_case >= 0 and mine[n_p + use_case] >= 1.0:
                    mine[n_p + use_case] -= 1.0
                if any_fresh and has_fresh[i, k]:
                    for c in range(n_p):
                        mine[c] = fresh[i, k, c]
                calls = 0.0
                for c in range(n_p):
                    calls += mine[c]
                uses = 0.0
                for c in range(n_p, width):
                    uses += mine[c]
                for c in range(n_p):
                    X[i, k * width + c] = mine[c] / (calls + 1.0)
                    others[i, k, c] = mine[c]
                for c in range(n_p, width):
                    X[i, k * width + c] = mine[c] / (uses + 1.0)
                others[i, k, n_p] = calls
            if use_case >= 0:
                X[i, 2 * width + use_case] = 1.0
            provider_out[i] = provider
        free(mine)
    return distance_array, X_array, others_array, provider_array


# --- analytics.anomaly --------------------------------------------------------------------


@cython.cdivision(True)
def evidence(
    const double[:, ::1] distance,
    const double[:, ::1] X,
    const int64_t[::1] provider,
    const int64_t[::1] class_of,
    const double[:, ::1] coef,
    const double[::1] intercept,
    const double[::1] center,
    const double[::1] spread,
):
    """AnomalyDetector._evidence's arithmetic: a softmax over the context model's logits."""
    cdef Py_ssize_t n = distance.shape[0], n_base = distance.shape[1]
    cdef Py_ssize_t n_classes = coef.shape[0], n_inputs = coef.shape[1]
    raw_array = np.empty((n, n_base + 1))
    scaled_array = np.empty((n, n_base + 1))
    cdef double[:, ::1] raw = raw_array
    cdef double[:, ::1] scaled = scaled_array
    cdef double *logits = <double *>malloc(max(n_classes, 1) * sizeof(double))
    if logits == NULL:
        raise MemoryError()
    cdef Py_ssize_t i, j, k, f
    cdef int64_t c
    cdef double probability, total, top
    with nogil:
        for i in range(n):
            for j in range(n_base):
                raw[i, j] = distance[i, j]
            c = class_of[provider[i]] if provider[i] >= 0 else -1
            probability = 1.0  # an unseen provider: no surprise
            if c >= 0:
                for k in range(n_classes):
                    total = 0.0
                    for f in range(n_inputs):
                        total += X[i, f] * coef[k, f]
                    logits[k] = total + intercept[k]
                top = logits[0]
                for k in range(1, n_classes):
                    if logits[k] > top or logits[k] != logits[k]:  # NaN wins, as in np.max
                        top = logits[k]
                total = 0.0
                for k in range(n_classes):
                    total += exp(logits[k] - top)
                probability = exp(logits[c] - top) / total
            if probability != probability:  # NaN context: no surprise either
                probability = 1.0
            raw[i, n_base] = -log(min(max(probability, 1e-12), 1.0))
            for j in range(n_base + 1):
                scaled[i, j] = (raw[i, j] - center[j]) / spread[j]
        free(logits)
    return raw_array, scaled_array


@cython.cdivision(True)
def combine(
    const double[:, ::1] evidence,
    const double[::1] forest_score,
    double forest_center,
    double forest_spread,
):
    """AnomalyDetector._combine's arithmetic; the forest's strangeness is -score_samples."""
    cdef Py_ssize_t n = evidence.shape[0], m = evidence.shape[1]
    full_array = np.empty((n, m + 1))
    scores_array = np.empty(n)
    cdef double[:, ::1] full = full_array
    cdef double[::1] scores = scores_array
    cdef Py_ssize_t i, j
    cdef double best
    with nogil:
        for i in range(n):
            for j in range(m):
                full[i, j] = evidence[i, j]
            full[i, m] = (-forest_score[i] - forest_center) / forest_spread
            best = full[i, 0]
            for j in range(1, m + 1):
                if full[i, j] > best or full[i, j] != full[i, j]:  # NaN wins, as in np.max
                    best = full[i, j]
            scores[i] = best
    return full_array, scores_array


# --- analytics.recommend ------------------------------------------------------------------


def thompson_wins(const double[::1] means, const double[::1] sds, const double[:, ::1] draws):
    """How often each candidate is the largest of ``means + draws * sds``, draw by draw: the
    counts of ``np.argmax(means + draws * sds, axis=1)`` (the first of equals wins), without
    the (draws, candidates) temporary that made numpy's version bound by memory."""
    cdef Py_ssize_t n = draws.shape[0], k = means.shape[0], d, j, best
    wins_array = np.zeros(k, dtype=np.int64)
    cdef int64_t[::1] wins = wins_array
    cdef double top, v
    with nogil:
        for d in range(n):
            best, top = 0, means[0] + draws[d, 0] * sds[0]
            for j in range(1, k):
                v = means[j] + draws[d, j] * sds[j]
                if v > top:
                    best, top = j, v
            wins[best] += 1
    return wins_array
