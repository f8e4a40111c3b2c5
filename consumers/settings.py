"""How a worker runs: :class:`WorkerSettings` (``worker run`` options, frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field

from brokers.policy import Backoff
from consumers.completion import REPLY_GRACE
from pixfleet.images import Limits

#: Longest wait before a retry, however many deliveries a task has had.
RETRY_BACKOFF_CAP = 60.0


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

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_backoff, cap=RETRY_BACKOFF_CAP)
