"""How a worker runs: :class:`WorkerSettings` (``worker run`` options, frozen)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from brokers.policy import Backoff
from consumers.completion import REPLY_GRACE
from pixfleet.bounds import check_count, check_seconds
from pixfleet.errors import ConfigError
from pixfleet.images import Limits

#: Longest wait before a retry, however many deliveries a task has had.
RETRY_BACKOFF_CAP = 60.0
#: Most pipeline processes of one worker, and most unsettled tasks it may hold.
MAX_CONCURRENCY = 256
MAX_PREFETCH = 10_000
MAX_DELIVERY_LIMIT = 1_000_000
#: Default cap on each pool process's address space, in MiB; bounds of ``--memory-limit``
#: (0 turns the cap off; below the minimum a process cannot even start).
MEMORY_LIMIT_MB = 2048
MEMORY_LIMIT_MIN_MB = 256
MEMORY_LIMIT_MAX_MB = 1 << 24  # 16 TiB


def default_concurrency() -> int:
    """The CPUs this process may run on (its affinity, which containers and ``taskset``
    narrow; all CPUs where there is no affinity), at most :data:`MAX_CONCURRENCY`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_CONCURRENCY))


def check_memory_limit(option: str, mb: int) -> int:
    """``mb`` if it is 0 (no cap) or within the bounds of a pool process's memory cap."""
    if isinstance(mb, int) and (mb == 0 or MEMORY_LIMIT_MIN_MB <= mb <= MEMORY_LIMIT_MAX_MB):
        return mb
    raise ConfigError(
        f"{option} must be 0 (no cap) or MiB from {MEMORY_LIMIT_MIN_MB} to"
        f" {MEMORY_LIMIT_MAX_MB}, got {mb!r}"
    )


@dataclass(frozen=True)
class WorkerSettings:
    group: str
    concurrency: int = 2
    prefetch: int = 0  # 0: same as concurrency
    limits: Limits = field(default_factory=Limits)
    delivery_limit: int = 5  # deliveries before a retryable failure becomes final
    retry_backoff: float = 1.0  # seconds; doubles per attempt, capped at RETRY_BACKOFF_CAP
    drain_timeout: float = 30.0  # seconds in-flight tasks get to finish on a stop
    burst: bool = False
    reply_grace: float = REPLY_GRACE  # see consumers.completion
    memory_limit_mb: int = MEMORY_LIMIT_MB  # address space of each pool process; 0: no cap
    progress_every: float = 1.0  # seconds between progress reports (consumers.progress); <0: off

    def __post_init__(self) -> None:
        """Out-of-range values are a :class:`~pixfleet.errors.ConfigError`."""
        check_count("concurrency", self.concurrency, low=1, high=MAX_CONCURRENCY)
        check_count("prefetch", self.prefetch, low=0, high=MAX_PREFETCH)
        check_count("delivery_limit", self.delivery_limit, low=1, high=MAX_DELIVERY_LIMIT)
        check_seconds("retry_backoff", self.retry_backoff)
        check_seconds("drain_timeout", self.drain_timeout)
        check_seconds("reply_grace", self.reply_grace)
        check_memory_limit("memory_limit_mb", self.memory_limit_mb)

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_backoff, cap=RETRY_BACKOFF_CAP)
