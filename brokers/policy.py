"""The rules every transport and the worker share: the delivery limit and the backoff.

One delivery-limit rule (a requeue on the last allowed delivery becomes a dead letter, with the
same reason text everywhere) and one backoff (exponential, capped, with full jitter) so that a
fleet reconnecting after an outage does not knock on the broker in lock-step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


def delivery_limit_reason(limit: int, last_error: str) -> str:
    """The dead-letter reason of a task that used up its deliveries (same text everywhere)."""
    return f"delivery limit {limit} reached; last error: {last_error or 'none'}"


def parse_delivery_limit_reason(reason: str) -> tuple[int, str] | None:
    """``(limit, last error)`` of a reason made by :func:`delivery_limit_reason`, else None."""
    head, sep, last_error = reason.partition("; last error: ")
    words = head.split(" ")
    if not sep or len(words) != 4 or words[:2] != ["delivery", "limit"] or words[3] != "reached":
        return None
    if not words[2].isdigit():
        return None
    return int(words[2]), "" if last_error == "none" else last_error


def apply_delivery_limit(requeue: bool, attempt: int, limit: int, reason: str) -> tuple[bool, str]:
    """The delivery-limit rule for a nack: on the last allowed attempt a requeue becomes a dead
    letter. Transports without a broker-side count (or with copies that reset it) apply it."""
    if requeue and attempt >= limit:
        return False, delivery_limit_reason(limit, reason)
    return requeue, reason


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first * 2**(n-1)`` capped at ``cap``; ``jitter`` is the fraction
    of the delay drawn at random (0: exact, 1: full jitter)."""

    first: float = 0.2
    cap: float = 5.0
    jitter: float = 0.0

    def delay(self, attempt: int) -> float:
        """The wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
        exp = min(max(attempt, 1) - 1, 32)
        base = min(self.first * 2.0**exp, self.cap)
        if self.jitter <= 0:
            return base
        return base * (1.0 - self.jitter) + random.uniform(0.0, base * self.jitter)  # noqa: S311


#: Reconnecting to a broker: 0.2 s, 0.4 s, ... at most 5 s, each with up to half of it at random.
RECONNECT = Backoff(first=0.2, cap=5.0, jitter=0.5)
