"""One delivery from RabbitMQ and how it is settled (ack, requeue, delayed retry, dead letter).

A delivery counts as settled only once its settle went out, or once its channel is gone (then
RabbitMQ has put the message back itself). When the confirmed copy a nack needs cannot be
published (publishers blocked by an alarm, the broker out of reach, the copy unroutable), the
original is settled on its own consuming channel instead: a delayed retry is held for the delay
and then requeued, a dead letter is rejected and the quorum queue dead-letters it itself (the
reason is then only logged; RabbitMQ records ``rejected``). Anything unexpected while settling
(cancellation included) gives the message back at once, or closes the channel so that RabbitMQ
redelivers it: a delivery is never left unacked on a live channel.

A copy is made only while the original's channel is open, and the original is acked right after
the copy is confirmed; if that ack fails (the channel died in between) the task exists twice,
and the worker's completion record makes the second run a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError

from brokers import names
from brokers.amqp.failures import CONNECTION_ERRORS, COPY_FAILURES, RETRYABLE, describe
from brokers.policy import apply_delivery_limit
from pixfleet.envelope import Result, Task

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)

#: RabbitMQ's own header: deliveries of a quorum-queue message before this one.
DELIVERY_COUNT = "x-delivery-count"


class Republisher(Protocol):
    """Confirmed copies of a delivery to its group's dead queue or retry queue."""

    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None: ...

    async def delay(
        self, group: str, body: bytes, headers: dict[str, Any], delay: float, deliveries: int
    ) -> None: ...


def attempt_of(message: AbstractIncomingMessage, limit: int) -> int:
    """Deliveries so far, 1 on the first: quorum ``x-delivery-count`` plus deliveries before a
    delayed-retry copy was made (our ``x-pixfleet-deliveries`` header). Headers are untrusted:
    a count that is not an integer in ``[0, limit]`` means the worst case, ``limit`` (the next
    requeue dead-letters), never a fresh start."""
    headers = message.headers or {}
    before = _count(headers.get(names.AMQP_HEADER_DELIVERIES, 0), limit)
    if DELIVERY_COUNT in headers:
        returned = _count(headers[DELIVERY_COUNT], limit)
    else:
        returned = int(bool(message.redelivered))
    if before is None or returned is None:
        return max(limit, 1)
    return before + returned + 1


def _channel_open(raw: AbstractIncomingMessage) -> bool:
    try:
        return not raw.channel.is_closed
    except ChannelInvalidStateError:  # aio-pika's way of saying it is closed
        return False


def _count(value: object, limit: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


@dataclass(eq=False)
class AmqpDelivery(Generic[M]):
    """:class:`brokers.contract.Delivery` of a RabbitMQ message. Settling is idempotent: the
    first ack or nack that goes through counts. ``released`` is the subscription's (it tracks
    unsettled deliveries); ``group`` is ``None`` on reply channels, which have no dead-letter
    queue."""

    message: M
    attempt: int
    _raw: AbstractIncomingMessage = field(repr=False)
    _group: str | None = field(repr=False)
    _limit: int = field(repr=False)
    _copies: Republisher = field(repr=False)
    _released: Callable[[AmqpDelivery[Any]], Awaitable[None]] = field(repr=False)
    _settled: bool = field(default=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def held(self) -> bool:
        """Its channel is open: once it closes, RabbitMQ has requeued the message."""
        return _channel_open(self._raw)

    async def ack(self) -> None:
        async with self._lock:
            if not self._settled:
                await self._settle(self._raw.ack)

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        async with self._lock:
            if self._settled:
                return
            raw, group = self._raw, self._group
            requeue, reason = apply_delivery_limit(requeue, self.attempt, self._limit, reason)
            if group is None:  # reply channels have no dead-letter queue
                await self._settle(lambda: raw.nack(requeue=requeue))
            elif not requeue:
                await self._settle(lambda: self._dead_letter(group, reason or "rejected"))
            elif delay > 0:
                await self._settle(lambda: self._delay(group, delay))
            else:
                await self._settle(lambda: raw.nack(requeue=True))

    async def _settle(self, settling: Callable[[], Awaitable[object]]) -> None:
        """Run a settle; the delivery is settled once it went out or its channel is gone."""
        try:
            await settling()
        except CONNECTION_ERRORS as exc:
            log.warning("settling a delivery failed (%s); RabbitMQ redelivers it", describe(exc))
        except BaseException:
            await self._give_back()
            raise
        self._settled = True
        await self._released(self)

    async def _dead_letter(self, group: str, reason: str) -> None:
        raw = self._raw
        if not _channel_open(raw):
            return  # RabbitMQ has requeued it; a copy now would be a duplicate
        try:
            await self._copies.dead_letter(group, raw.body, dict(raw.headers or {}), reason)
        except COPY_FAILURES as exc:
            log.warning(
                "no dead-letter copy (%s); rejecting it to the dead queue without the reason: %s",
                describe(exc),
                reason,
            )
            await raw.reject(requeue=False)
            return
        await raw.ack()

    async def _delay(self, group: str, delay: float) -> None:
        raw = self._raw
        if not _channel_open(raw):
            return  # RabbitMQ has requeued it; a copy now would be a duplicate
        headers = dict(raw.headers or {})
        try:
            await self._copies.delay(group, raw.body, headers, delay, self.attempt)
        except COPY_FAILURES as exc:
            log.warning(
                "no delayed-retry copy (%s); holding the delivery %.1fs, then requeueing it",
                describe(exc),
                delay,
            )
            await asyncio.sleep(delay)
            await raw.nack(requeue=True)
            return
        await raw.ack()

    async def _give_back(self) -> None:
        """After an unexpected failure or a cancellation: requeue now, or close the channel
        (RabbitMQ requeues everything unacked on it). The delivery is then settled."""
        self._settled = True
        try:
            async with asyncio.timeout(1.0):
                await self._raw.nack(requeue=True)
        except BaseException as exc:  # noqa: BLE001 - any failure: fall back to closing
            log.warning("could not requeue a delivery (%s); closing its channel", describe(exc))
            with contextlib.suppress(*RETRYABLE):
                async with asyncio.timeout(1.0):
                    await self._raw.channel.close()
        await self._released(self)
