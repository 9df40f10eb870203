"""Prometheus metrics of one app (its own registry, so several apps never collide)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
