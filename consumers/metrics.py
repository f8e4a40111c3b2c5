"""A worker's Prometheus ``/metrics`` and ``/healthz`` (``worker run --metrics-port P``).

:class:`WorkerMetrics` is a :class:`~consumers.events.WorkerEvents` listener: it counts tasks by
group and outcome, pool recycles and state changes, and remembers the worker's state.
:func:`serve_health` answers two paths on a small asyncio HTTP server (no extra thread):

* ``/metrics`` - the listener's registry in the Prometheus text format (names ``pixfleet_``);
* ``/healthz`` - 200 while the worker is starting, consuming or draining; 503 once it has been
  reconnecting for longer than ``unhealthy_after`` seconds, or has stopped - so an orchestrator
  restarts a worker that cannot reach its broker rather than one that briefly lost it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from consumers.events import NoEvents, WorkerState
from pixfleet.envelope import Result, Task
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)

_STATES: tuple[WorkerState, ...] = ("starting", "consuming", "reconnecting", "draining", "stopped")


class WorkerMetrics(NoEvents):
    """Counts what a worker does, in its own registry (several workers per process are fine)."""

    def __init__(self, group: str, *, unhealthy_after: float = 60.0) -> None:
        self.group = group
        self.unhealthy_after = unhealthy_after
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "pixfleet_worker_tasks",
            "Tasks handled, by outcome (ok, failed, retried, duplicate).",
            ["group", "outcome"],
            registry=self.registry,
        )
        self.recycles = Counter(
            "pixfleet_worker_pool_recycles", "Process pools rebuilt.", registry=self.registry
        )
        self.state_gauge = Gauge(
            "pixfleet_worker_state", "1 for the current state.", ["state"], registry=self.registry
        )
        self.state: WorkerState = "starting"
        self._since = time.monotonic()
        self._show_state()

    def task_ok(self, task: Task, result: Result) -> None:
        self.tasks.labels(self.group, "ok").inc()

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        self.tasks.labels(self.group, "retried").inc()

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        self.tasks.labels(self.group, "failed").inc()

    def task_duplicate(self, task: Task, result: Result) -> None:
        self.tasks.labels(self.group, "duplicate").inc()

    def pool_recycled(self, reason: str) -> None:
        self.recycles.inc()

    def state_changed(self, old: WorkerState, new: WorkerState) -> None:
        self.state, self._since = new, time.monotonic()
        self._show_state()

    def healthy(self) -> bool:
        if self.state == "stopped":
            return False
        stuck = time.monotonic() - self._since > self.unhealthy_after
        return not (self.state == "reconnecting" and stuck)

    def _show_state(self) -> None:
        for state in _STATES:
            self.state_gauge.labels(state).set(1.0 if state == self.state else 0.0)


async def serve_health(metrics: WorkerMetrics, host: str, port: int) -> asyncio.Server:
    """Start answering ``/metrics`` and ``/healthz`` on ``host:port``; close the server to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass  # headers: nothing in them matters here
            writer.write(_response(metrics, request.decode("latin-1").split()))
            await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("health request dropped: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics and health on http://%s:%d/metrics, /healthz", host, port)
    return server


def _response(metrics: WorkerMetrics, request: list[str]) -> bytes:
    path = request[1].split("?", 1)[0] if len(request) >= 2 else ""
    if path == "/metrics":
        return _http(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
    if path == "/healthz":
        ok = metrics.healthy()
        body = f"{metrics.state}\n".encode()
        return _http(200 if ok else 503, body, "text/plain; charset=utf-8")
    return _http(404, b"not found\n", "text/plain; charset=utf-8")


def _http(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
