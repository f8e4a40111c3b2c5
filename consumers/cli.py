"""``worker``: run a pipeline group's consumer.

worker run --group thumbs [--concurrency N] [--prefetch N] [--burst]
           [--broker URL] [--blobs URL] [--pipeline NAME|module:function]
worker pipelines
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal

import typer

from brokers import open_transport
from consumers.pipelines import BUILTIN, resolve
from consumers.pipelines.base import Limits
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings, WorkerStats
from pixfleet.blobs import open_blobstore
from pixfleet.errors import ConfigError
from pixfleet.runtime import configure_logging, fail, run_async
from pixfleet.settings import ENV_BLOBS, ENV_BROKER, default_blobs_url, default_broker_url

log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pixfleet worker: join a consumer group and process its tasks.",
)


@app.callback()
def _root() -> None:
    """pixfleet worker."""


@app.command()
def run(
    group: str = typer.Option(..., "--group", "-g", help="Consumer group (= pipeline name)."),
    concurrency: int = typer.Option(
        os.cpu_count() or 1, "--concurrency", "-c", min=1, help="Pipeline processes."
    ),
    prefetch: int = typer.Option(0, min=0, help="Unacked tasks to hold (0: = concurrency)."),
    burst: bool = typer.Option(False, "--burst", help="Exit once the group's backlog is empty."),
    broker: str = typer.Option(None, envvar=ENV_BROKER, help="Broker URL."),
    blobs: str = typer.Option(None, envvar=ENV_BLOBS, help="Blob store URL."),
    pipeline: str = typer.Option(None, help="Built-in name or package.module:function."),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds of pipeline time per task."),
    max_pixels: int = typer.Option(Limits.max_pixels, min=1, help="Largest source image."),
    max_bytes: int = typer.Option(Limits.max_bytes, min=1, help="Largest source blob."),
    max_attempts: int = typer.Option(
        5, min=1, help="Deliveries before a retryable failure becomes final."
    ),
    retry_backoff: float = typer.Option(1.0, min=0.0, help="First retry delay in seconds."),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
    debug: bool = typer.Option(False, "--debug", help="Print tracebacks."),
) -> None:
    """Serve GROUP until SIGTERM/SIGINT (which drain in-flight tasks) or, with --burst, until
    its backlog is empty."""
    configure_logging("debug" if debug else log_level)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", group):
        fail(ConfigError(f"invalid group name {group!r} (use a-z, 0-9, _ and -)").one_line())
    settings = WorkerSettings(
        group=group,
        concurrency=concurrency,
        prefetch=prefetch,
        limits=Limits(max_pixels=max_pixels, max_bytes=max_bytes, timeout=timeout),
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        burst=burst,
    )
    stats = run_async(
        _serve(settings, broker or default_broker_url(), blobs or default_blobs_url(), pipeline),
        debug=debug,
    )
    log.info("worker stopped: %d ok, %d failed, %d retried", stats.ok, stats.failed, stats.retried)


@app.command()
def pipelines() -> None:
    """List the built-in pipelines."""
    for name, target in sorted(BUILTIN.items()):
        typer.echo(f"{name}\t{target}")


async def _serve(
    settings: WorkerSettings, broker_url: str, blobs_url: str, pipeline_spec: str | None
) -> WorkerStats:
    pipeline = resolve(settings.group, pipeline_spec)
    blob_store = open_blobstore(blobs_url)
    async with open_transport(broker_url) as transport, PipelinePool(settings.concurrency) as pool:
        worker = Worker(transport, blob_store, pipeline, pool, settings)
        _install_signal_handlers(worker)
        return await worker.run()


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


def main() -> None:
    app()
