"""Prometheus metrics for one app (its own registry, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from assay.service.engine import Observer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics(Observer):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter(
            "assay_items",
            "Items judged, by verifier and status.",
            ["verifier", "status"],
            registry=self.registry,
        )
        self.cached = Counter(
            "assay_items_cached",
            "Items answered from the cache or a twin in the batch.",
            ["verifier"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "assay_item_seconds",
            "Time from an item's arrival to its result.",
            ["verifier"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.requests = Counter(
            "assay_requests",
            "Score requests, by endpoint and outcome.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "assay_items_in_flight",
            "Items accepted and not yet finished.",
            registry=self.registry,
        )

    def item_done(self, verifier: str, status: str, seconds: float, cached: bool) -> None:
        self.items.labels(verifier, status).inc()
        self.seconds.labels(verifier).observe(seconds)
        if cached:
            self.cached.labels(verifier).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
