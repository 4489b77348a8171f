"""Prometheus metrics, one registry per app instance (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "taskhook_deliveries",
            "Deliveries received, by source and outcome "
            "(accepted, duplicate, quarantined, rejected, unavailable, too_large, unsupported)",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.verification_failures = Counter(
            "taskhook_verification_failures",
            "Deliveries that failed verification, by source",
            ["source"],
            registry=self.registry,
        )
        self.handler_runs = Counter(
            "taskhook_handler_runs",
            "Handler runs, by handler and outcome (ok, failed)",
            ["handler", "outcome"],
            registry=self.registry,
        )
        self.dispatched = Counter(
            "taskhook_dispatched_deliveries",
            "Deliveries leaving a dispatch attempt, by resulting status",
            ["status"],
            registry=self.registry,
        )
        self.backlog = Gauge(
            "taskhook_backlog_depth",
            "Deliveries stored and waiting to be processed (received or failed)",
            registry=self.registry,
        )
        self.pruned = Counter(
            "taskhook_pruned",
            "What retention removed: deliveries_bodies (bodies and headers of old processed, "
            "dead and quarantined deliveries), duplicates (old duplicate receipt rows)",
            ["what"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "taskhook_commit_seconds",
            "Duration of one durable group commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "taskhook_commit_batch_size",
            "Operations committed together in one transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )

        self.ack_seconds = Histogram(
            "taskhook_ack_seconds",
            "Time from a callback request's arrival to its answer (the vendor's wait)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )

    def observe_commit(self, rows: int, seconds: float) -> None:
        """Called from the writer thread; prometheus-client's metrics are thread-safe."""
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
