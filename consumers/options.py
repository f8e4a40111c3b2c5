"""The options of ``worker run`` that take numbers, each bounded at the edge
(:mod:`pixfleet.bounds`): a value out of range is one ``error[config.invalid]`` line, exit 1."""

from __future__ import annotations

from typing import Any

import typer

from consumers.settings import (
    MAX_CONCURRENCY,
    MAX_DELIVERY_LIMIT,
    MAX_PREFETCH,
    MEMORY_LIMIT_MB,
    WorkerSettings,
    check_memory_limit,
    default_concurrency,
)
from pixfleet.bounds import count_option, seconds_option
from pixfleet.errors import ConfigError
from pixfleet.images import Limits
from pixfleet.runtime import fail

DrainTimeoutOpt = typer.Option(
    30.0,
    callback=seconds_option("--drain-timeout"),
    help="On SIGTERM/SIGINT: seconds in-flight tasks get to finish, and again for the process "
    "pool to exit; what is left goes back to the broker.",
)
DeliveryLimitOpt = typer.Option(
    5,
    "--delivery-limit",
    "--max-attempts",
    callback=count_option("--delivery-limit", low=1, high=MAX_DELIVERY_LIMIT),
    help="Deliveries before retries stop.",
)
ConcurrencyOpt = typer.Option(
    default_concurrency(),
    "--concurrency",
    "-c",
    callback=count_option("--concurrency", low=1, high=MAX_CONCURRENCY),
    help="Pipeline processes (default: the CPUs this process may use).",
)
PrefetchOpt = typer.Option(
    0,
    callback=count_option("--prefetch", high=MAX_PREFETCH),
    help="Unacked tasks to hold (0: = concurrency).",
)
_MAX_SIZE = 1 << 40


def _memory_limit(mb: int) -> int:
    try:
        return check_memory_limit("--memory-limit", mb)
    except ConfigError as exc:
        fail(exc.one_line())


MemoryLimitOpt = typer.Option(
    MEMORY_LIMIT_MB,
    envvar="PIXFLEET_MEMORY_LIMIT",
    callback=_memory_limit,
    help="MiB of address space each pipeline process may use (RLIMIT_AS); 0: no cap. An image"
    " that needs more gets a resource.memory error result.",
)
TimeoutOpt = typer.Option(
    60.0, callback=seconds_option("--timeout", low=0.1), help="Seconds of pipeline per task."
)
RetryBackoffOpt = typer.Option(
    1.0, callback=seconds_option("--retry-backoff"), help="First retry delay in seconds."
)
MaxPixelsOpt = typer.Option(
    Limits.max_pixels,
    callback=count_option("--max-pixels", low=1, high=_MAX_SIZE),
    help="Largest source image.",
)
MaxBytesOpt = typer.Option(
    Limits.max_bytes,
    callback=count_option("--max-bytes", low=1, high=_MAX_SIZE),
    help="Largest source blob.",
)


def worker_settings(**options: Any) -> WorkerSettings:
    """``WorkerSettings(**options)``, or one error line and exit 1."""
    try:
        return WorkerSettings(**options)
    except ConfigError as exc:
        fail(exc.one_line())
