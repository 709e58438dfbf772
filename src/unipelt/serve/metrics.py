"""Prometheus metrics of one server process, in a registry of its own (not the global one), so
that several apps in one process (tests, Ray replicas) never share or collide on counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "unipelt_requests", "HTTP requests by route and status", ("route", "status"), registry=self.registry
        )
        self.latency = Histogram(
            "unipelt_request_seconds",
            "HTTP request latency by route",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "unipelt_requests_in_flight", "Requests received and not yet answered", registry=self.registry
        )
        self.rows = Counter("unipelt_rows", "Inputs answered, by task", ("task",), registry=self.registry)
        buckets = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < max_batch} | {max_batch})
        self.batch_rows = Histogram(
            "unipelt_batch_rows", "Rows per model batch (all tasks together)", buckets=buckets, registry=self.registry
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
