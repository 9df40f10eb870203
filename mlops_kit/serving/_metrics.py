"""Prometheus metrics of one app (its own registry, so several apps never collide)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..monitor.live import PREDICTION

#: seconds; dense where a fast model answers
LATENCY_BUCKETS = (.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10)
_STATIC_ENDPOINTS = frozenset({"/predict", "/metrics", "/openapi.json", "/docs", "/", "/v2",
                               "/v2/health/live", "/v2/health/ready"})


def endpoint_label(path: str) -> str:
    """The route a path belongs to, so that labels stay few whatever clients send."""
    if path in _STATIC_ENDPOINTS:
        return path
    if path.startswith("/v2/models/"):
        tail = path.rsplit("/", 1)[-1]
        if tail in ("infer", "ready"):
            return f"/v2/models/{{name}}/{tail}"
        return "/v2/models/{name}"
    return "other"


class ServingMetrics:
    def __init__(self, model_info: dict[str, str]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mlops_kit_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("mlops_kit_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rows = Counter("mlops_kit_rows_predicted", "Rows predicted", registry=self.registry)
        self.ready = Gauge("mlops_kit_ready", "1 when the model is loaded, warmed up and serving",
                           registry=self.registry)
        Info("mlops_kit_model", "The model served", registry=self.registry).info(model_info)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MonitorCollector:
    """The monitoring metrics, made from the live counts when /metrics is scraped (nothing per
    request beyond the counts themselves; docs/architecture.md, "Monitoring on the server"):

    - ``mlops_kit_feature_bin_total{feature, bin}``, ``mlops_kit_prediction_bin_total{bin}``:
      rows per bin of the profile (counters: replicas add up);
    - ``mlops_kit_drift_score{feature}`` (PSI), ``mlops_kit_drift_detected{feature}`` (the
      permutation test at its Bonferroni level), ``mlops_kit_drift_window_rows``: the sliding
      window, as last judged (``judgement``); the predictions are ``feature="__prediction__"``;
    - ``mlops_kit_request_log_rows_total{outcome}``: rows written, dropped, sampled out.
    """

    def __init__(self, live: Any, request_log: Any, registry: CollectorRegistry):
        self.live = live
        self.request_log = request_log
        self.judgement: Any = None
        registry.register(self)

    def describe(self) -> list:
        return []   # made at scrape time: nothing for the registry to check at registration

    def collect(self):
        live = self.live
        if live is not None:
            totals = live.totals().tolist()
            features = CounterMetricFamily("mlops_kit_feature_bin", "Live rows per bin of the training profile",
                                           labels=["feature", "bin"])
            predictions = CounterMetricFamily("mlops_kit_prediction_bin", "Predictions per bin of the training "
                                              "profile", labels=["bin"])
            for name, labels, offset in live.labels():
                for i, label in enumerate(labels):
                    if name == PREDICTION:
                        predictions.add_metric([label], totals[offset + i])
                    else:
                        features.add_metric([name, label], totals[offset + i])
            yield features
            yield predictions
            judgement = self.judgement
            if judgement is not None:
                score = GaugeMetricFamily("mlops_kit_drift_score", "PSI of the sliding window against the training "
                                          "profile", labels=["feature"])
                detected = GaugeMetricFamily("mlops_kit_drift_detected", "1 when the window's permutation test "
                                             "flags drift (Bonferroni over the features)", labels=["feature"])
                for name, value in judgement.scores.items():
                    score.add_metric([name], value)
                    detected.add_metric([name], 1.0 if judgement.detected[name] else 0.0)
                yield score
                yield detected
                yield GaugeMetricFamily("mlops_kit_drift_window_rows", "Rows in the sliding window",
                                        value=judgement.rows)
        log = self.request_log
        rows = CounterMetricFamily("mlops_kit_request_log_rows", "Rows of the request log, by outcome",
                                   labels=["outcome"])
        predicted = live.rows if live is not None else 0
        rows.add_metric(["written"], log.written if log is not None else 0)
        rows.add_metric(["dropped"], log.dropped if log is not None else 0)
        rows.add_metric(["sampled_out"], log.sampled_out if log is not None else predicted)
        yield rows


class MetricsMiddleware:
    """Counts every HTTP answer by status and times it (pure ASGI: no per-request objects)."""

    def __init__(self, app: Any, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = endpoint_label(scope["path"])
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
