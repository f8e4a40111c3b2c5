"""Prometheus metrics of one ingress instance (``GET /metrics``), names prefixed ``pixfleet_``.

Each app owns its registry (no process-global state), so tests and several apps in one process
never share counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The counters an instance keeps; :meth:`render` is the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploads = Counter(
            "pixfleet_uploads", "Files accepted and published as tasks.", registry=r
        )
        self.upload_bytes = Counter(
            "pixfleet_upload_bytes", "Bytes of accepted files stored.", registry=r
        )
        self.rejected = Counter(
            "pixfleet_uploads_rejected",
            "Upload requests refused, by error code.",
            ["code"],
            registry=r,
        )
        self.errors = Counter(
            "pixfleet_http_errors",
            "Error responses, by code and status.",
            ["code", "status"],
            registry=r,
        )
        self.publish_seconds = Histogram(
            "pixfleet_publish_seconds",
            "Seconds from publish to broker confirm, per task.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.in_flight = Gauge(
            "pixfleet_uploads_in_flight", "Upload requests being received now.", registry=r
        )
        self.streams = Gauge(
            "pixfleet_event_streams", "Open server-sent event streams.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
