"""Prometheus metrics of one server, and the ASGI middleware that records them.

Each app gets its own ``CollectorRegistry`` (not prometheus_client's global one), so that
several apps in one process (tests) do not share counters or clash on names.

The ``endpoint`` label is the route template (``/recommendations/{user_id}``), never the
raw path: one label value per route keeps the series count fixed however many distinct ids
(or random paths: ``unmatched``) clients send.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Request latency buckets: fine below 10 ms, where the latency target is.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)  # fmt: skip

Scope = dict[str, Any]
# Any other method is counted as "other" (a client can send any token as a method).
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Metrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "recsys_serving_requests",
            "HTTP requests by route template, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_serving_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "recsys_serving_model_info",
            "1 for the model version being served (label version).",
            ["version"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "recsys_serving_model_loads",
            "Attempts to load a model version, by outcome (success, failure).",
            ["outcome"],
            registry=self.registry,
        )
        self.model_load_seconds = Gauge(
            "recsys_serving_model_load_seconds",
            "Duration of the last successful model version load.",
            registry=self.registry,
        )
        self.model_loaded_at = Gauge(
            "recsys_serving_model_loaded_timestamp_seconds",
            "Unix time at which the served model version was swapped in.",
            registry=self.registry,
        )
        self.fallback = Gauge(
            "recsys_serving_fallback",
            "1 when the served version is a fallback baseline (recsys.fallback: no two-tower "
            "passed the quality gate), 0 for a two-tower.",
            registry=self.registry,
        )
        self.model_kind = Gauge(
            "recsys_serving_model_kind",
            "1 for the kind of the served version (label kind): two-tower, or the fallback's "
            "baseline (popularity, popularity (recent), segment popularity).",
            ["kind"],
            registry=self.registry,
        )
        self._version: str | None = None
        self._kind: str | None = None

    def served(
        self, version: str, load_seconds: float, loaded_at: float, fallback: bool = False,
        kind: str = "two-tower",
    ) -> None:  # fmt: skip
        """A new version is being served: move the info gauges' 1 to its labels."""
        self.fallback.set(1 if fallback else 0)
        if self._kind is not None and self._kind != kind:
            self.model_kind.remove(self._kind)
        self.model_kind.labels(kind=kind).set(1)
        self._kind = kind
        if self._version is not None and self._version != version:
            self.model_info.remove(self._version)
        self.model_info.labels(version=version).set(1)
        self._version = version
        self.model_load_seconds.set(load_seconds)
        self.model_loaded_at.set(loaded_at)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike ``BaseHTTPMiddleware``):
    counts every HTTP request by route template and status and observes its latency.
    A request whose handler raised is counted as 500."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled series by (endpoint, method, status): bounded, since every label is.
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router stores the matched route in the scope (Starlette >= 0.33).
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            key = (endpoint, method, status)
            children = self.children.get(key)
            if children is None:  # labels() takes a lock and builds a key: once per series
                children = (self.metrics.requests.labels(endpoint, method, str(status)),
                            self.metrics.latency.labels(endpoint))  # fmt: skip
                self.children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
