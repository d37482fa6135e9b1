"""Prometheus metrics of the API, served at GET /metrics.

With several uvicorn workers each is its own process: ``serving.app.main`` then points
``PROMETHEUS_MULTIPROC_DIR`` and ``TESSERA_METRICS_DIR`` at an empty folder before the
workers start, and /metrics adds up the files of every worker (prometheus_client's
multiprocess mode). Our own variable decides that, not prometheus_client's: importing
MLflow's client imports Feast (an MLflow plugin), which sets PROMETHEUS_MULTIPROC_DIR to a
folder of its own in every process.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from plumbing.online_store import PRESENT, OnlineStoreReader

METRICS_DIR_ENV = "TESSERA_METRICS_DIR"  # set: several workers, add up their files there

# Fine buckets below 10 ms: the latency goal is a few milliseconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400, 30 * 86_400)

REQUESTS = Counter("tessera_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
LATENCY = Histogram("tessera_http_request_duration_seconds", "Time from request to full answer.",
                    ["route", "method"], buckets=_LATENCY_BUCKETS)
ERRORS = Counter("tessera_http_errors_total", "Error answers, by kind.", ["route", "error"])
ONLINE_READ = Histogram("tessera_online_store_read_seconds", "One pipelined Redis read of a request.",
                        buckets=_LATENCY_BUCKETS)
FEATURE_ROWS = Counter("tessera_feature_rows_total",
                       "Feature-view rows served (one per entity and view), by status.", ["feature_view", "status"])
FEATURE_AGE = Histogram("tessera_feature_age_seconds", "Age of the present feature rows served.",
                        ["feature_view"], buckets=_AGE_BUCKETS)
MODEL_VERSION = Gauge("tessera_model_version", "The registered model version being served.", ["model"],
                      multiprocess_mode="mostrecent")
MODEL_RELOADS = Counter("tessera_model_reloads_total", "Model loads, by outcome (loaded, refused, failed).",
                        ["outcome"])
SERVED_LOG_ROWS = Counter("tessera_served_log_rows_total",
                          "Sampled answer rows for served_features, by outcome (sampled, dropped, written, failed).",
                          ["outcome"])


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(path: str, api_paths: set[str]) -> str:
    """The route label of a request: its path if it is one of the API's, else "other", so
    a scan of random URLs cannot create unbounded label values."""
    return path if path in api_paths else "other"


def record_rows_served(plan: OnlineStoreReader.Plan, rows: Sequence[Sequence[OnlineStoreReader.Row]],
                       now: datetime) -> None:
    """Count rows by status and observe the age of present ones, once per entity and view
    (all features of a view share the row's status and event time)."""
    for number, planned in enumerate(plan.views):
        view = planned.view.name
        counts: dict[str, int] = {}
        age = _child(FEATURE_AGE, view)
        for view_rows in rows:
            row = view_rows[number]
            counts[row.status] = counts.get(row.status, 0) + 1
            if row.status == PRESENT and row.event_time is not None:  # a present row has its time
                age.observe((now - row.event_time).total_seconds())
        for status, count in counts.items():
            _child(FEATURE_ROWS, view, status).inc(count)


_CHILDREN: dict[tuple, object] = {}


def _child(metric, *labels: str):
    """``metric.labels(*labels)``, remembered: labels() takes a lock and checks its
    arguments on every call. Label values here are bounded (routes, views, statuses)."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


class MetricsMiddleware:
    """Counts every HTTP request and times it (pure ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, api_paths: set[str]):
        self.app = app
        self.api_paths = api_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"], self.api_paths)
        status = 500  # if the app fails before answering, the server answers 500
        started = time.perf_counter()

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded labels
            _child(LATENCY, route, method).observe(time.perf_counter() - started)
            _child(REQUESTS, route, method, str(status)).inc()


def metrics_text() -> tuple[bytes, str]:
    """The exposition text of this process, or of all workers in multiprocess mode."""
    if METRICS_DIR_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=os.environ[METRICS_DIR_ENV])
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
