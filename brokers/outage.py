"""Whether a subscription can reach its broker right now, and how it waits when it cannot.

Shared by the transports. A subscription never gives up on a transient failure (a write lock
held longer than ``busy_timeout``, a full disk, a broker that went away): it retries the
operation forever with the capped, jittered :data:`brokers.policy.RECONNECT` backoff, shows
``reconnecting`` in its ``state`` meanwhile, and logs one line when that state changes - not one
per try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from brokers.policy import RECONNECT, Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``consuming``: the last operation worked; ``reconnecting``: waiting out a failure.
SubscriptionState = Literal["consuming", "reconnecting"]


class Outage:
    """The state of one subscription's link to its broker (:attr:`state`)."""

    def __init__(self, what: str, backoff: Backoff = RECONNECT) -> None:
        self._what = what
        self._backoff = backoff
        self._failures = 0
        self._since = 0.0
        self.state: SubscriptionState = "consuming"

    def failed(self, exc: BaseException) -> float:
        """Note a transient failure; returns how long to wait before the next try."""
        self._failures += 1
        if self.state != "reconnecting":
            self.state = "reconnecting"
            self._since = time.monotonic()
            log.warning("%s: %s; reconnecting (retrying with backoff)", self._what, exc)
        return self._backoff.delay(self._failures)

    def recovered(self) -> None:
        """Note a success: back to ``consuming`` (logged once if it was reconnecting)."""
        if self.state == "reconnecting":
            log.warning(
                "%s: reachable again after %d failed tries in %.1fs; consuming",
                self._what,
                self._failures,
                time.monotonic() - self._since,
            )
        self.state = "consuming"
        self._failures = 0

    async def retry(
        self,
        op: Callable[[], Awaitable[T]],
        transient: type[BaseException] | tuple[type[BaseException], ...],
    ) -> T:
        """Run ``op`` until it does not raise ``transient`` (anything else propagates)."""
        while True:
            try:
                result = await op()
            except transient as exc:
                await asyncio.sleep(self.failed(exc))
                continue
            self.recovered()
            return result
