"""The service's Prometheus metrics, in a registry of its own (text format at GET /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# sample() on a CPU takes from tens of milliseconds (small images, small n) to minutes (volumes).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Requests by door and outcome, their latency, the queue depth, series and instances."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("ldseg_requests", "Requests answered, by door (http, dicom) and outcome",
                                ["door", "outcome"], registry=self.registry)
        self.latency = Histogram("ldseg_request_latency_seconds", "Time from request to answer (http) or from "
                                 "series complete to results delivered (dicom)", ["door"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("ldseg_queue_depth", "Jobs admitted to the work queue and not started",
                                 registry=self.registry)
        self.series = Counter("ldseg_series", "DICOM series finished, by outcome (segmented, skipped, failed, "
                              "duplicate)", ["outcome"], registry=self.registry)
        self.instances = Counter("ldseg_instances_received", "DICOM instances spooled", registry=self.registry)

    def request(self, door: str, outcome: str, seconds: float | None = None) -> None:
        self.requests.labels(door, outcome).inc()
        if seconds is not None:
            self.latency.labels(door).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
