"""``worker``: run a pipeline group's consumer.

worker run --group thumbs [--concurrency N] [--prefetch N] [--burst]
           [--broker URL] [--blobs URL] [--pipeline NAME|module:function]
           [--delivery-limit N] [--retry-backoff S] [--drain-timeout S] [--memory-limit MB]
           [--heartbeat S]

Every number is bounded (durations: finite, at most 7 days; --concurrency <= 256, --prefetch
<= 10,000): a value out of range is one ``error[config.invalid]`` line, exit 1.
worker pipelines
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import typer

from brokers import Transport, open_transport
from consumers.events import NO_EVENTS, EventFanout, WorkerEvents, WorkerStats
from consumers.fleet import FleetMember
from consumers.metrics import WorkerMetrics, serve_health
from consumers.options import (
    ConcurrencyOpt,
    DeliveryLimitOpt,
    DrainTimeoutOpt,
    MaxBytesOpt,
    MaxPixelsOpt,
    MemoryLimitOpt,
    PrefetchOpt,
    RetryBackoffOpt,
    TimeoutOpt,
    worker_options,
    worker_settings,
)
from consumers.pipelines import BUILTIN, known, pipeline_name, resolve
from consumers.pool import PipelinePool
from consumers.signals import defer_sigterm, received_early
from consumers.worker import Worker, WorkerSettings
from pixfleet.blobs import BlobStore, open_blobstore
from pixfleet.bounds import seconds_option
from pixfleet.config import LogLevel
from pixfleet.declared import declare_pipeline
from pixfleet.envelope import is_group_name
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.fleet import HEARTBEAT, MAX_HEARTBEAT
from pixfleet.images import Limits
from pixfleet.runtime import (
    LogLevelOpt,
    checked_urls,
    configure_logging,
    effective_level,
    fail,
    guarded,
    root_options,
    run_async,
    settings_or_fail,
)

log = logging.getLogger(__name__)

app = typer.Typer(
    no_args_is_help=True,
    help="pixfleet worker: join a consumer group and process its tasks.",
)


app.callback()(root_options)


MetricsPortOpt = typer.Option(
    None,
    min=0,
    max=65535,
    help="Serve Prometheus /metrics and /healthz on this port (all interfaces); 0 (default): off.",
)
UnhealthyAfterOpt = typer.Option(
    60.0,
    callback=seconds_option("--unhealthy-after"),
    envvar="PIXFLEET_UNHEALTHY_AFTER",
    help="/healthz fails once the worker has been reconnecting for this many seconds.",
)
HeartbeatOpt = typer.Option(
    HEARTBEAT,
    min=0.1,
    max=MAX_HEARTBEAT,
    envvar="PIXFLEET_HEARTBEAT",
    help="Seconds between heartbeats (uploader workers: lost after 3 missed ones).",
)
ProgressEveryOpt = typer.Option(
    1.0,
    envvar="PIXFLEET_PROGRESS_EVERY",
    help="Seconds between a task's progress reports (the first after as long); <0: none.",
)


@app.command("run")
def run_cmd(
    group: str = typer.Option(
        None, "--group", "-g", help="Consumer group (= pipeline name); or PIXFLEET_GROUP."
    ),
    concurrency: int = ConcurrencyOpt,
    prefetch: int = PrefetchOpt,
    burst: bool = typer.Option(False, "--burst", help="Exit once the group's backlog is empty."),
    broker: str = typer.Option(None, help="Broker URL (default: $PIXFLEET_BROKER, config)."),
    blobs: str = typer.Option(None, help="Blob store URL (default: $PIXFLEET_BLOBS, config)."),
    pipeline: str = typer.Option(None, help="Built-in name or package.module:function."),
    timeout: float = TimeoutOpt,
    max_pixels: int = MaxPixelsOpt,
    max_bytes: int = MaxBytesOpt,
    delivery_limit: int = DeliveryLimitOpt,
    retry_backoff: float = RetryBackoffOpt,
    drain_timeout: float = DrainTimeoutOpt,
    metrics_port: int = MetricsPortOpt,
    unhealthy_after: float = UnhealthyAfterOpt,
    memory_limit: int = MemoryLimitOpt,
    progress_every: float = ProgressEveryOpt,
    heartbeat: float = HeartbeatOpt,
    log_level: LogLevel | None = LogLevelOpt,
    debug: bool = typer.Option(False, "--debug", help="Print tracebacks."),
) -> None:
    """Serve GROUP until SIGTERM/SIGINT (which drains) or, with --burst, its backlog is empty.
    Main options also from PIXFLEET_<OPTION> or [worker] in pixfleet.toml (flag > env > file)."""
    config = settings_or_fail(broker=broker, blobs=blobs, log_level=log_level)
    configure_logging("debug" if debug else effective_level(log_level, config.log_level, "info"))
    o = worker_options(
        group=group, pipeline=pipeline, concurrency=concurrency, prefetch=prefetch,
        timeout=timeout, delivery_limit=delivery_limit, drain_timeout=drain_timeout,
        memory_limit=memory_limit, metrics_port=metrics_port,
    )  # fmt: skip
    limits = Limits(max_pixels=max_pixels, max_bytes=max_bytes, timeout=o["timeout"])
    settings = _settings(o, limits, retry_backoff, burst=burst, progress_every=progress_every)
    urls = checked_urls(config)
    health = _Health(o["metrics_port"], unhealthy_after)
    serving = _serve(settings, *urls, o["pipeline"], health=health, heartbeat=heartbeat)
    _report(run_async(serving, debug=debug))


def _report(stats: WorkerStats) -> None:
    counts = (stats.ok, stats.failed, stats.retried, stats.duplicates)
    log.info("worker stopped: %d ok, %d failed, %d retried, %d duplicate(s)", *counts)


def _settings(
    o: dict[str, Any], limits: Limits, retry_backoff: float, *, burst: bool, progress_every: float
) -> WorkerSettings:
    _check_group(o["group"])
    return worker_settings(
        group=o["group"], concurrency=o["concurrency"], prefetch=o["prefetch"], limits=limits,
        delivery_limit=o["delivery_limit"], retry_backoff=retry_backoff,
        drain_timeout=o["drain_timeout"], burst=burst, memory_limit_mb=o["memory_limit"],
        progress_every=progress_every,
    )  # fmt: skip


def _check_group(group: str | None) -> None:
    if group is None:
        fail(ConfigError("missing --group (or PIXFLEET_GROUP, or group in [worker])").one_line())
    if not is_group_name(group):
        fail(ConfigError(f"invalid group name {group!r} (use a-z, 0-9, _ and -)").one_line())


@app.command()
def pipelines() -> None:
    """List the pipelines with a name: built-in, and registered by installed packages (entry
    point group ``pixfleet.pipelines``)."""
    for name, target in sorted(known().items()):
        typer.echo(f"{name}\t{target}\t{'built-in' if name in BUILTIN else 'entry point'}")


@dataclass(frozen=True)
class _Health:
    port: int = 0  # 0: no /metrics nor /healthz
    unhealthy_after: float = 60.0


async def _serve(
    settings: WorkerSettings,
    broker_url: str,
    blobs_url: str,
    pipeline_spec: str | None,
    events: WorkerEvents = NO_EVENTS,
    *,
    health: _Health = _Health(),
    heartbeat: float = HEARTBEAT,
) -> WorkerStats:
    """Build the transport and the blob store from their URLs and serve with one worker; the
    transport plays both of the worker's roles (task queue and reply channels). With a
    metrics port, ``/metrics`` and ``/healthz`` are served while it runs."""
    if not health.port:
        return await _serve_worker(
            settings, broker_url, blobs_url, pipeline_spec, events, heartbeat=heartbeat
        )
    metrics = WorkerMetrics(settings.group, unhealthy_after=health.unhealthy_after)
    server = await serve_health(metrics, "0.0.0.0", health.port)  # noqa: S104 - probes, scrapes
    try:
        events = EventFanout(events, metrics)
        return await _serve_worker(
            settings, broker_url, blobs_url, pipeline_spec, events, metrics=metrics,
            heartbeat=heartbeat,
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()


async def _serve_worker(
    settings: WorkerSettings,
    broker_url: str,
    blobs_url: str,
    pipeline_spec: str | None,
    events: WorkerEvents,
    *,
    metrics: WorkerMetrics | None = None,
    heartbeat: float = HEARTBEAT,
) -> WorkerStats:
    pipeline = resolve(settings.group, pipeline_spec)
    blob_store = open_blobstore(blobs_url)
    await _declare(blob_store, settings.group, pipeline_name(settings.group, pipeline_spec))
    async with open_transport(broker_url) as transport, _pool(settings, events) as pool:
        log.info("broker %s, blob store %s", transport.url, blob_store.url)
        worker = Worker(
            tasks=transport,
            replies=transport,
            blobs=blob_store,
            pipeline=pipeline,
            pool=pool,
            settings=settings,
            events=events,
        )
        _install_signal_handlers(worker)
        member = FleetMember(
            transport, worker, groups=(settings.group,), concurrency=settings.concurrency,
            transport=urlsplit(broker_url).scheme, heartbeat=heartbeat,
        )  # fmt: skip
        async with member:  # heartbeats and control requests while it runs
            return await _run(worker, transport, metrics)


async def _run(worker: Worker, transport: Transport, metrics: WorkerMetrics | None) -> WorkerStats:
    if metrics is None:
        return await worker.run()
    async with metrics.watching(
        lambda: worker.in_flight,
        lambda: worker.free_slots,
        transport,
        on_broker=worker.health.probed,
    ):
        return await worker.run()


async def _declare(store: BlobStore, group: str, pipeline: str) -> None:
    """Tell uploaders which pipeline (so which parameter model) the group runs; advisory: a
    failure is logged and the worker serves anyway."""
    try:
        await declare_pipeline(store, group, pipeline)
    except PixfleetError as exc:
        log.warning("could not declare pipeline %r of group %r: %s", pipeline, group, exc)


def _pool(settings: WorkerSettings, events: WorkerEvents) -> PipelinePool:
    return PipelinePool(
        settings.concurrency,
        shutdown_timeout=settings.drain_timeout,
        memory_limit_mb=settings.memory_limit_mb,
        on_recycle=EventFanout(events).pool_recycled,
    )


def _install_signal_handlers(worker: Worker) -> None:
    """First SIGTERM/SIGINT: finish in-flight tasks and exit. Second: give them back now."""
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("received %s: draining", signal.Signals(signum).name)
            worker.request_stop()
        else:
            log.warning("received %s again: aborting in-flight tasks", signal.Signals(signum).name)
            worker.abort()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if received_early():  # stopped while starting: nothing was taken yet
        on_signal(signal.SIGTERM)


def main() -> None:
    defer_sigterm()
    guarded(app)
