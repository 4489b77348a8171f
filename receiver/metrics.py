"""Prometheus metrics, one registry per app instance (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "Totals"]


@dataclass(frozen=True, slots=True)
class Totals:
    """What the counters say now, summed over the labels a chart does not show (the
    monitor keeps the differences between two of these as per-minute series)."""

    deliveries: Mapping[str, float] = field(default_factory=dict)  # outcome -> count
    verification_failures: Mapping[str, float] = field(default_factory=dict)  # source -> count
    handler_runs: Mapping[str, float] = field(default_factory=dict)  # ok / failed -> count
    dispatched: Mapping[str, float] = field(default_factory=dict)  # resulting status -> count
    # Ack latency: observations per bucket (upper bound as Prometheus spells it, "+Inf"
    # last), not cumulative, so two snapshots subtract bucket by bucket.
    ack_buckets: Mapping[str, float] = field(default_factory=dict)


def _by_label(collector: MetricWrapperBase, label: str) -> dict[str, float]:
    """A counter's ``_total`` samples summed per value of one label."""
    out: dict[str, float] = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels[label]
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _buckets(histogram: Histogram) -> dict[str, float]:
    cumulative = [
        (sample.labels["le"], sample.value)
        for family in histogram.collect()
        for sample in family.samples
        if sample.name.endswith("_bucket")
    ]
    out: dict[str, float] = {}
    below = 0.0
    for bound, count in cumulative:  # Prometheus yields buckets in ascending order
        out[bound] = count - below
        below = count
    return out


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

    def totals(self) -> Totals:
        """A snapshot of the counters the monitor charts (cheap: a few dozen samples)."""
        return Totals(
            deliveries=_by_label(self.deliveries, "outcome"),
            verification_failures=_by_label(self.verification_failures, "source"),
            handler_runs=_by_label(self.handler_runs, "outcome"),
            dispatched=_by_label(self.dispatched, "status"),
            ack_buckets=_buckets(self.ack_seconds),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
