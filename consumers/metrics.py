"""A worker's Prometheus ``/metrics`` and ``/healthz`` (``worker run --metrics-port P``).

:class:`WorkerMetrics` is a :class:`~consumers.events.WorkerEvents` listener: it counts tasks by
group and outcome, times each step of a run, counts reconnects, failed settles and pool
recycles, and remembers the worker's state. :meth:`WorkerMetrics.watching` adds what only the
running worker and its broker know: tasks in flight and free pipeline slots (read at each
scrape) and the group's backlog from the :class:`~brokers.contract.Inspector` (read every
``backlog_every`` seconds, so a scrape never waits on the broker). :func:`serve_health` answers
two paths on a small asyncio HTTP server (no extra thread):

* ``/metrics`` - the listener's registry in the Prometheus text format (names ``pixfleet_``);
* ``/healthz`` - 200 while the worker is starting, consuming or draining; 503 once it has been
  reconnecting for longer than ``unhealthy_after`` seconds, or has stopped - so an orchestrator
  restarts a worker that cannot reach its broker rather than one that briefly lost it.

The metric names are listed in ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from brokers.contract import GroupStats, Inspector
from consumers.events import NoEvents, WorkerState
from pixfleet.envelope import Result, Task
from pixfleet.errors import BrokerError, BrokerUnavailable, PixfleetError

log = logging.getLogger(__name__)

_STATES: tuple[WorkerState, ...] = (
    "starting",
    "consuming",
    "reconnecting",
    "paused",
    "draining",
    "stopped",
)


#: Seconds between two looks at the group's backlog.
BACKLOG_EVERY = 5.0
#: Buckets of the step histogram, in seconds (a thumbnail step takes milliseconds).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _zero() -> float:
    return 0.0


def _ignore(error: PixfleetError | None) -> None:
    return None


class WorkerMetrics(NoEvents):
    """Counts what a worker does, in its own registry (several workers per process are fine)."""

    def __init__(self, group: str, *, unhealthy_after: float = 60.0) -> None:
        self.group = group
        self.unhealthy_after = unhealthy_after
        self.registry = r = CollectorRegistry()
        self.tasks = Counter(
            "pixfleet_worker_tasks",
            "Tasks handled, by outcome (ok, failed, retried, duplicate).",
            ["group", "outcome"],
            registry=r,
        )
        self.steps = Histogram(
            "pixfleet_worker_step_seconds",
            "Seconds per step of a run: queue, fetch, process, store, reply.",
            ["group", "step"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter(
            "pixfleet_worker_reconnects", "Times the worker lost its broker.", ["group"], registry=r
        )
        self.settle_failures = Counter(
            "pixfleet_worker_settle_failures",
            "Replies, acks or nacks that failed (the delivery went back to the broker).",
            ["group"],
            registry=r,
        )
        self.recycles = Counter(
            "pixfleet_worker_pool_recycles", "Process pools rebuilt.", registry=r
        )
        self.state_gauge = Gauge(
            "pixfleet_worker_state", "1 for the current state.", ["state"], registry=r
        )
        self._in_flight_of: Callable[[], float] = _zero
        self._free_slots_of: Callable[[], float] = _zero
        self._readings(r)
        self.backlog = _backlog_gauges(r)
        self.state: WorkerState = "starting"
        self._since = time.monotonic()
        self._show_state()

    def _readings(self, r: CollectorRegistry) -> None:
        Gauge(
            "pixfleet_worker_in_flight",
            "Deliveries being handled (received, not settled).",
            ["group"],
            registry=r,
        ).labels(self.group).set_function(self._read_in_flight)
        Gauge(
            "pixfleet_worker_free_slots",
            "Pipeline processes not running a task.",
            ["group"],
            registry=r,
        ).labels(self.group).set_function(self._read_free_slots)

    def _read_in_flight(self) -> float:
        return self._in_flight_of()

    def _read_free_slots(self) -> float:
        return self._free_slots_of()

    @asynccontextmanager
    async def watching(
        self,
        in_flight: Callable[[], float],
        free_slots: Callable[[], float],
        inspector: Inspector,
        *,
        on_broker: Callable[[PixfleetError | None], None] | None = None,
        backlog_every: float = BACKLOG_EVERY,
    ) -> AsyncIterator[None]:
        """Read ``in_flight`` and ``free_slots`` at each scrape and the group's backlog from
        ``inspector`` every ``backlog_every`` seconds, while the block runs. Each look is also
        a probe of the broker: ``on_broker`` hears None when it answered, else the error (a
        transport whose subscription cannot tell an unreachable broker from an idle one, as
        Kafka's cannot, is found out this way)."""
        self._in_flight_of, self._free_slots_of = in_flight, free_slots
        probe = on_broker or _ignore
        looking = asyncio.create_task(self._watch_backlog(inspector, backlog_every, probe))
        try:
            yield
        finally:
            looking.cancel()
            await asyncio.gather(looking, return_exceptions=True)

    async def _watch_backlog(
        self,
        inspector: Inspector,
        every: float,
        probe: Callable[[PixfleetError | None], None],
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(max(every, 1.0)):
                    stats = await inspector.stats(self.group)
            except TimeoutError:
                probe(BrokerUnavailable(f"no backlog of {self.group} within {every:g} s"))
            except BrokerError as exc:
                log.debug("backlog of %s unknown for now: %s", self.group, exc.one_line())
                probe(exc if exc.retryable else None)
            else:
                probe(None)
                show_backlog(self.backlog, stats)
            await asyncio.sleep(every)

    def task_ok(self, task: Task, result: Result) -> None:
        self.tasks.labels(self.group, "ok").inc()

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        self.tasks.labels(self.group, "retried").inc()

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        self.tasks.labels(self.group, "failed").inc()

    def task_duplicate(self, task: Task, result: Result) -> None:
        self.tasks.labels(self.group, "duplicate").inc()

    def step_timed(self, task: Task, step: str, seconds: float) -> None:
        self.steps.labels(self.group, step).observe(seconds)

    def settle_failed(self, task: Task, error: PixfleetError) -> None:
        self.settle_failures.labels(self.group).inc()

    def pool_recycled(self, reason: str) -> None:
        self.recycles.inc()

    def state_changed(self, old: WorkerState, new: WorkerState) -> None:
        self.state, self._since = new, time.monotonic()
        if new == "reconnecting":
            self.reconnects.labels(self.group).inc()
        self._show_state()

    def healthy(self) -> bool:
        if self.state == "stopped":
            return False
        stuck = time.monotonic() - self._since > self.unhealthy_after
        return not (self.state == "reconnecting" and stuck)

    def _show_state(self) -> None:
        for state in _STATES:
            self.state_gauge.labels(state).set(1.0 if state == self.state else 0.0)


@dataclass(frozen=True)
class BacklogGauges:
    """A group's backlog as its broker reports it (``uploader status`` shows the same)."""

    ready: Gauge
    in_flight: Gauge
    dead: Gauge
    consumers: Gauge


def _backlog_gauges(r: CollectorRegistry) -> BacklogGauges:
    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(f"pixfleet_group_{name}", doc, ["group"], registry=r)

    return BacklogGauges(
        gauge("ready", "Tasks waiting for a worker of the group (Kafka: its lag)."),
        gauge("in_flight", "Tasks delivered to the group and not settled (-1: unknown)."),
        gauge("dead", "Dead-lettered tasks of the group."),
        gauge("consumers", "Live consumers of the group."),
    )


def show_backlog(gauges: BacklogGauges, stats: GroupStats) -> None:
    g = stats.group
    gauges.ready.labels(g).set(stats.ready)
    gauges.in_flight.labels(g).set(-1 if stats.in_flight is None else stats.in_flight)
    gauges.dead.labels(g).set(stats.dead)
    gauges.consumers.labels(g).set(stats.consumers)


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
