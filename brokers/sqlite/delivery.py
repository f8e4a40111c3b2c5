"""One leased SQLite delivery and the means to settle it.

Settling goes through the subscription that leased the delivery (it owns the lease and counts
what is still unsettled); the delivery limit is applied when a delivery is claimed again. A
delivery counts as settled only once its ack or nack is committed: if the database call fails,
the subscription gives the lease back (the delivery comes again) and the error propagates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pixfleet.envelope import Result, Task

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)


class Settler(Protocol):
    """What a delivery needs from its subscription. Both calls free the delivery's prefetch
    slot; when they raise, the lease has been given back (released now, or by the next
    heartbeat, which never extends it meanwhile), so the delivery is delivered again."""

    async def ack_delivery(self, delivery_id: int) -> bool:
        """Delete the delivery; False if its lease was lost (it will be redelivered)."""
        ...

    async def nack_delivery(
        self, delivery_id: int, *, requeue: bool, delay: float, reason: str
    ) -> None:
        """Make the delivery ready again after ``delay`` or dead with ``reason``."""
        ...


class Lease(Protocol):
    """The subscription's heartbeat, which renews every lease it holds."""

    def lapsed(self) -> bool:
        """Whether no beat renewed the leases for a whole lease: they may have expired."""
        ...


@dataclass(eq=False)
class SqliteDelivery(Generic[M]):
    """:class:`brokers.contract.Delivery` of a leased row; settling it twice is a no-op.

    An ack that comes after the lease was lost (no heartbeat for ``lease`` seconds) is logged:
    the message was or will be delivered again, which idempotent outputs make harmless. An ack
    or nack that raises leaves the delivery unsettled (a later nack is allowed and harmless) and
    its lease given back, so it is delivered again while the consumer lives."""

    message: M
    attempt: int
    _settler: Settler = field(repr=False)
    _delivery_id: int = field(repr=False)
    _lease: Lease = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def held(self) -> bool:
        """Its lease may still be ours: a beat renewed it less than a lease ago (a claim after
        the last beat leases for longer; a beat that failed for a whole lease says False
        early, which only costs a reply that the redelivery gives)."""
        return not self._lease.lapsed()

    async def ack(self) -> None:
        if self._settled:
            return
        held = await self._settler.ack_delivery(self._delivery_id)
        self._settled = True
        if not held:
            log.warning(
                "ack of delivery %s came after its lease was lost; it will be redelivered",
                self._delivery_id,
            )

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        await self._settler.nack_delivery(
            self._delivery_id, requeue=requeue, delay=delay, reason=reason
        )
        self._settled = True
