"""Prometheus metrics of one ingress instance (``GET /metrics``), names prefixed ``pixfleet_``.

Each app owns its registry (no process-global state), so tests and several apps in one process
never share counters. Besides its own counters an instance shows every group's backlog as the
broker reports it (``pixfleet_group_*``, the names a worker uses too), read at a scrape at most
every :data:`BACKLOG_EVERY` seconds and within :data:`BACKLOG_TIMEOUT` (a broker that does not
answer leaves the last values; the scrape still answers).
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from brokers.contract import Inspector
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)

#: Seconds between two looks at the broker's backlog, and the longest look a scrape waits for.
BACKLOG_EVERY = 5.0
BACKLOG_TIMEOUT = 2.0

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

        self.backlog = _backlog_gauges(r)
        self._backlog_at = -BACKLOG_EVERY

    async def refresh_backlog(self, inspector: Inspector) -> None:
        """Read every group's backlog if the last look is older than :data:`BACKLOG_EVERY`."""
        now = time.monotonic()
        if now - self._backlog_at < BACKLOG_EVERY:
            return
        self._backlog_at = now
        try:
            async with asyncio.timeout(BACKLOG_TIMEOUT):
                stats = [await inspector.stats(g) for g in await inspector.groups()]
        except (PixfleetError, TimeoutError) as exc:
            log.warning("backlog not read for /metrics: %s", exc or "timed out")
            return
        for s in stats:
            values = {"ready": s.ready, "dead": s.dead, "consumers": s.consumers}
            values["in_flight"] = -1 if s.in_flight is None else s.in_flight
            for name, value in values.items():
                self.backlog[name].labels(s.group).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _backlog_gauges(r: CollectorRegistry) -> dict[str, Gauge]:
    """The ``pixfleet_group_*`` gauges (the names a worker's ``/metrics`` uses too)."""
    return {
        name: Gauge(f"pixfleet_group_{name}", doc, ["group"], registry=r)
        for name, doc in (
            ("ready", "Tasks waiting for a worker of the group (Kafka: its lag)."),
            ("in_flight", "Tasks delivered to the group and not settled (-1: unknown)."),
            ("dead", "Dead-lettered tasks of the group."),
            ("consumers", "Live consumers of the group."),
        )
    }
