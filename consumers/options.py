"""The options of ``worker run`` that take numbers, each bounded at the edge
(:mod:`pixfleet.bounds`): a value out of range is one ``error[config.invalid]`` line, exit 1.

The main ones (:data:`FROM_CONFIG`) may also come from ``PIXFLEET_<KEY>`` or the config file's
``[worker]`` table (:func:`pixfleet.config.load_worker`): flag > env > file > default, each
checked with the same bounds and named by its source when it is refused."""

from __future__ import annotations

from collections.abc import Callable
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
from pixfleet.bounds import check_count, check_seconds, count_option, seconds_option
from pixfleet.config import load_worker
from pixfleet.errors import ConfigError
from pixfleet.images import Limits
from pixfleet.runtime import fail

DrainTimeoutOpt = typer.Option(
    None,
    callback=seconds_option("--drain-timeout"),
    help="On SIGTERM/SIGINT: seconds in-flight tasks get to finish, and again for the process "
    "pool to exit; what is left goes back to the broker. Default 30.",
)
DeliveryLimitOpt = typer.Option(
    None,
    "--delivery-limit",
    "--max-attempts",
    callback=count_option("--delivery-limit", low=1, high=MAX_DELIVERY_LIMIT),
    help="Deliveries before retries stop. Default 5.",
)
ConcurrencyOpt = typer.Option(
    None,
    "--concurrency",
    "-c",
    callback=count_option("--concurrency", low=1, high=MAX_CONCURRENCY),
    help="Pipeline processes (default: the CPUs this process may use). "
    "Env PIXFLEET_CONCURRENCY, config [worker] concurrency.",
)
PrefetchOpt = typer.Option(
    None,
    callback=count_option("--prefetch", high=MAX_PREFETCH),
    help="Unacked tasks to hold (0, the default: = concurrency).",
)
_MAX_SIZE = 1 << 40


def _memory_limit(mb: int | None) -> int | None:
    if mb is None:
        return None
    try:
        return check_memory_limit("--memory-limit", mb)
    except ConfigError as exc:
        fail(exc.one_line())


MemoryLimitOpt = typer.Option(
    None,
    callback=_memory_limit,
    help="MiB of address space each pipeline process may use (RLIMIT_AS); 0: no cap. An image"
    " that needs more gets a resource.memory error result. Default 2048.",
)
TimeoutOpt = typer.Option(
    None,
    callback=seconds_option("--timeout", low=0.1),
    help="Seconds of pipeline per task. Default 60.",
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


def _count(low: int, high: int) -> Callable[[str, Any], Any]:
    return lambda label, value: check_count(label, value, low=low, high=high)


def _seconds(low: float = 0.0) -> Callable[[str, Any], Any]:
    return lambda label, value: check_seconds(label, value, low=low)


def _keep(_label: str, value: Any) -> Any:
    return value


#: Each option that env/config may set: its check and its default (None: none).
FROM_CONFIG: dict[str, tuple[Callable[[str, Any], Any], Any]] = {
    "group": (_keep, None),
    "pipeline": (_keep, None),
    "concurrency": (_count(1, MAX_CONCURRENCY), None),
    "prefetch": (_count(0, MAX_PREFETCH), 0),
    "timeout": (_seconds(0.1), 60.0),
    "delivery_limit": (_count(1, MAX_DELIVERY_LIMIT), 5),
    "drain_timeout": (_seconds(), 30.0),
    "memory_limit": (check_memory_limit, MEMORY_LIMIT_MB),
    "metrics_port": (_count(0, 65535), 0),
}


def worker_options(**flags: Any) -> dict[str, Any]:
    """Every :data:`FROM_CONFIG` option: the flag if given (None: not), else env, else the
    config file, else its default - each bounded; one error line and exit 1 for a bad one."""
    try:
        effective = load_worker(**flags)
        chosen: dict[str, Any] = {}
        for key, (check, default) in FROM_CONFIG.items():
            value = effective.values.get(key)
            label = f"{key} ({effective.sources.get(key, 'default')})"
            chosen[key] = default if value is None else check(label, value)
    except ConfigError as exc:
        fail(exc.one_line())
    if chosen["concurrency"] is None:
        chosen["concurrency"] = default_concurrency()
    return chosen
