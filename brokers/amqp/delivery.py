"""One delivery from RabbitMQ and how it is settled (ack, requeue, delayed retry, dead letter)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aio_pika.abc import AbstractIncomingMessage

from brokers import names
from brokers.policy import apply_delivery_limit
from pixfleet.envelope import Result, Task

M = TypeVar("M", Task, Result)


class Republisher(Protocol):
    """Confirmed copies of a delivery to its group's dead queue or retry queue."""

    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None: ...

    async def delay(
        self, group: str, body: bytes, headers: dict[str, Any], delay: float, deliveries: int
    ) -> None: ...


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, 1 on the first: quorum ``x-delivery-count`` plus deliveries before a
    delayed-retry copy was made (our ``x-pixfleet-deliveries`` header)."""
    headers = message.headers or {}
    before = int(str(headers.get(names.AMQP_HEADER_DELIVERIES, 0)))
    count = headers.get("x-delivery-count")
    returned = int(str(count)) if count is not None else int(bool(message.redelivered))
    return before + returned + 1


@dataclass(eq=False)
class AmqpDelivery(Generic[M]):
    """:class:`brokers.contract.Delivery` of a RabbitMQ message. Settling is idempotent: only
    the first ack or nack counts. ``settle`` is the subscription's (it counts unsettled
    deliveries); ``group`` is ``None`` on reply channels, which have no dead-letter queue."""

    message: M
    attempt: int
    _raw: AbstractIncomingMessage = field(repr=False)
    _group: str | None = field(repr=False)
    _limit: int = field(repr=False)
    _copies: Republisher = field(repr=False)
    _settle: Callable[[Awaitable[object]], Awaitable[None]] = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._settle(self._raw.ack())

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        raw, group = self._raw, self._group
        requeue, reason = apply_delivery_limit(requeue, self.attempt, self._limit, reason)
        if group is None:  # reply channels have no dead-letter queue
            await self._settle(raw.nack(requeue=requeue))
            return
        headers = dict(raw.headers or {})
        if not requeue:
            await self._copies.dead_letter(group, raw.body, headers, reason or "rejected")
            await self._settle(raw.ack())
        elif delay > 0:
            await self._copies.delay(group, raw.body, headers, delay, self.attempt)
            await self._settle(raw.ack())
        else:
            await self._settle(raw.nack(requeue=True))
