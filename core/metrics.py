"""Prometheus metrics, made at scrape time from the read model that ``status`` shows.

All counters already live in Redis, written by every worker process on every host, so
one exporter reading them is correct however many prefork children or workers there are,
and needs no multiprocess registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from thronos_analytics.core import store
from thronos_analytics.core.settings import Settings
from thronos_analytics.core.store.ledger import LAG_BUCKETS
from thronos_analytics.core.store.status import read_status

# The kinds of analytics/incidents.py (not imported: it loads pandas and scipy); every kind
# has a gauge, 0 when none is active, so an alert can tell "none" from "not scraped".
INCIDENT_KINDS = ("call_burst", "spend_spike", "empty_outputs", "latency_regression", "error_spike")


class RedisCollector:
    def __init__(self, r: store.Redis, config: Settings, models: Sequence[str]) -> None:
        self.r, self.config, self.models = r, config, models

    def collect(self) -> Iterator[Metric]:
        report = read_status(self.r, self.config, self.models)
        for name, key, text in (
            ("rows_seen", "interactions_seen", "Interactions ingested (distinct ids)"),
            ("rows_scored", "interactions_scored", "Interactions with a published flag"),
            ("rows_rejected", "interactions_rejected", "Ledger lines rejected by the contract"),
        ):
            yield CounterMetricFamily(f"thronos_{name}", text, value=report[key])
        yield GaugeMetricFamily(
            "thronos_rows_pending", "Rows waiting for the first model", value=report["pending"]
        )
        anomalies = CounterMetricFamily(
            "thronos_anomalies", "Interactions flagged anomalous", labels=["provider"]
        )
        for provider, n in report["anomaly_rate"]["by_provider"].items():
            anomalies.add_metric([provider], n)
        yield anomalies
        stalls = CounterMetricFamily(
            "thronos_worker_stalls",
            "Exits of a worker whose consumer stalled, to be started again",
            labels=["worker"],
        )
        for worker, n in report["worker_stalls"].items():
            stalls.add_metric([worker], n)
        yield stalls
        depth = GaugeMetricFamily("thronos_queue_depth", "Messages waiting", labels=["queue"])
        for queue, n in report["queues"].items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily(
            "thronos_redis_memory_bytes",
            "Memory Redis uses for the state",
            value=report["redis_memory"]["used_bytes"],
        )
        yield from _models(report["models"])
        yield _lag(report["lag_histogram"])
        warnings = len(report["warnings"])
        yield GaugeMetricFamily(
            "thronos_quality_warnings", "Active quality-drop warnings", value=warnings
        )
        yield _incidents(report["incidents_by_kind"])


def _incidents(active: dict[str, int]) -> Metric:
    gauge = GaugeMetricFamily(
        "thronos_incidents_active", "Active incidents, by kind", labels=["kind"]
    )
    for kind in (*INCIDENT_KINDS, *sorted(set(active) - set(INCIDENT_KINDS))):
        gauge.add_metric([kind], active.get(kind, 0))
    return gauge


def _models(models: dict[str, dict[str, Any]]) -> Iterator[Metric]:
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
    for name, model in models.items():
        failed.add_metric([name], 1 if model["last_failure"] else 0)
        if model["version"]:
            age.add_metric([name], model["age_s"])
            info.add_metric([name, model["version"]], 1)
            duration.add_metric([name], model["duration_s"] or 0.0)
    yield from (age, info, duration, failed)


def _lag(raw: dict[str, float]) -> Metric:
    cumulative, buckets = 0.0, []
    for bound in (*map(str, LAG_BUCKETS), "+Inf"):
        cumulative += raw.get(bound, 0.0)
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(
        "thronos_scoring_lag_seconds",
        "From the interaction's ts to its flag in Redis",
        buckets=buckets,
        sum_value=raw.get("sum", 0.0),
    )
