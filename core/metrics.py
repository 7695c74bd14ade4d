"""Prometheus metrics, read from Redis at scrape time.

All counters already live in Redis, written by every worker process on every host, so
one exporter reading them is correct however many prefork children or workers there are,
and needs no multiprocess registry.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from thronos_analytics.core import keys, store
from thronos_analytics.core.messages import QUEUES

# The kinds of analytics/incidents.py (not imported: it loads pandas and scipy); every kind
# has a gauge, 0 when none is active, so an alert can tell "none" from "not scraped".
INCIDENT_KINDS = ("call_burst", "spend_spike", "empty_outputs", "latency_regression", "error_spike")
# Upper bounds, in seconds, of the ledger-write-to-flag lag histogram.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0)


def record_lag(r: store.Redis, lags: Sequence[float]) -> None:
    """Count each lag in its bucket (``le`` label) plus the running sum."""
    if not lags:
        return
    # One HINCRBY per bucket, not per row: a scoring batch holds up to thousands of rows.
    buckets = Counter(
        str(LAG_BUCKETS[i]) if i < len(LAG_BUCKETS) else "+Inf"
        for i in (bisect_left(LAG_BUCKETS, lag) for lag in lags)
    )
    pipe = r.pipeline(transaction=False)
    for bucket, n in buckets.items():
        pipe.hincrby(keys.LAG_HISTOGRAM, bucket, n)
    pipe.hincrbyfloat(keys.LAG_HISTOGRAM, "sum", float(sum(lags)))
    pipe.execute()


class RedisCollector:
    def __init__(self, r: store.Redis) -> None:
        self.r = r

    def collect(self) -> Iterator[Metric]:
        r = self.r
        counts = store.counts(r)
        for name, key, text in (
            ("rows_seen", "interactions_seen", "Interactions ingested (distinct ids)"),
            ("rows_scored", "interactions_scored", "Interactions with a published flag"),
            ("rows_rejected", "interactions_rejected", "Ledger lines rejected by the contract"),
        ):
            yield CounterMetricFamily(f"thronos_{name}", text, value=counts[key])
        yield GaugeMetricFamily(
            "thronos_rows_pending", "Rows waiting for the first model", value=counts["pending"]
        )
        anomalies = CounterMetricFamily(
            "thronos_anomalies", "Interactions flagged anomalous", labels=["provider"]
        )
        for provider, n in r.hgetall(keys.ANOMALIES_BY_PROVIDER).items():
            anomalies.add_metric([provider.decode()], int(n))
        yield anomalies
        depth = GaugeMetricFamily("thronos_queue_depth", "Messages waiting", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue.name], r.llen(queue.name))
        yield depth
        yield from self._models(r)
        yield from self._lag(r)
        yield GaugeMetricFamily(
            "thronos_quality_warnings", "Active quality-drop warnings", value=r.hlen(keys.WARNINGS)
        )
        yield self._incidents(r)

    def _incidents(self, r: store.Redis) -> Metric:
        active = Counter(
            incident["kind"]
            for incident in map(orjson.loads, r.hvals(keys.INCIDENTS))
            if incident.get("active")
        )
        gauge = GaugeMetricFamily(
            "thronos_incidents_active", "Active incidents, by kind", labels=["kind"]
        )
        for kind in (*INCIDENT_KINDS, *sorted(set(active) - set(INCIDENT_KINDS))):
            gauge.add_metric([kind], active.get(kind, 0))
        return gauge

    def _models(self, r: store.Redis) -> Iterator[Metric]:
        age = GaugeMetricFamily("thronos_model_age_seconds", "Age of the model", labels=["model"])
        info = GaugeMetricFamily(
            "thronos_model_info", "Current model version", labels=["model", "version"]
        )
        duration = GaugeMetricFamily(
            "thronos_retrain_duration_seconds", "Duration of the last retrain", labels=["model"]
        )
        failed = GaugeMetricFamily(
            "thronos_retrain_failed", "1 if the last retrain failed", labels=["model"]
        )
        now = time.time()
        for name in keys.MODEL_NAMES:
            current = store.model_info(r, name)
            failed.add_metric([name], 1 if r.exists(keys.model_failure(name)) else 0)
            if current:
                age.add_metric([name], now - current["trained_at"])
                info.add_metric([name, current["version"]], 1)
                duration.add_metric([name], current.get("duration_s", 0.0))
        yield from (age, info, duration, failed)

    def _lag(self, r: store.Redis) -> Iterator[Metric]:
        raw = {k.decode(): float(v) for k, v in r.hgetall(keys.LAG_HISTOGRAM).items()}
        cumulative, buckets = 0.0, []
        for bound in (*map(str, LAG_BUCKETS), "+Inf"):
            cumulative += raw.get(bound, 0.0)
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "thronos_scoring_lag_seconds",
            "From the interaction's ts to its flag in Redis",
            buckets=buckets,
            sum_value=raw.get("sum", 0.0),
        )
