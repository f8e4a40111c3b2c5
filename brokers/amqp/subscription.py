"""Consuming from RabbitMQ: the subscription iterator and its deliveries.

The subscription owns one channel with ``basic.qos(prefetch)`` and one consumer on its queue.
When the channel or connection dies it reconnects with backoff and consumes again - it never
relies on aio-pika's robust connection to restore consumers. Messages from a dead channel are
dropped locally: RabbitMQ has already put them back in the queue (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers import names
from brokers.policy import apply_delivery_limit
from pixfleet.envelope import Result, Task
from pixfleet.errors import BrokerError, EnvelopeError

if TYPE_CHECKING:
    from brokers.amqp.transport import AmqpTransport

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)

#: What a lost connection or channel looks like from aio-pika / aiormq.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)

#: Worth retrying after a reconnect.
RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)

_BROKEN = object()  # inbox sentinel: the channel died


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Deliveries so far, 1 on the first: quorum ``x-delivery-count`` plus deliveries before a
    delayed-retry copy was made (our ``x-pixfleet-deliveries`` header)."""
    headers = message.headers or {}
    before = int(str(headers.get("x-pixfleet-deliveries", 0)))
    count = headers.get("x-delivery-count")
    returned = int(str(count)) if count is not None else int(bool(message.redelivered))
    return before + returned + 1


@dataclass(eq=False)
class AmqpDelivery(Generic[M]):
    message: M
    attempt: int
    _sub: AmqpSubscription[M] = field(repr=False)
    _raw: AbstractIncomingMessage = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._sub.settle(self._raw.ack())

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        sub, raw = self._sub, self._raw
        requeue, reason = apply_delivery_limit(
            requeue, self.attempt, sub.transport.settings.delivery_limit, reason
        )
        if sub.group is None:  # reply channels have no dead-letter queue
            await sub.settle(raw.nack(requeue=requeue))
            return
        headers = dict(raw.headers or {})
        if not requeue:
            await sub.transport.dead_letter(sub.group, raw.body, headers, reason or "rejected")
            await sub.settle(raw.ack())
        elif delay > 0:
            await sub.transport.delay(sub.group, raw.body, headers, delay, self.attempt)
            await sub.settle(raw.ack())
        else:
            await sub.settle(raw.nack(requeue=True))


class AmqpSubscription(Generic[M]):
    """Async iterator of validated deliveries from one queue."""

    def __init__(
        self,
        transport: AmqpTransport,
        *,
        queue: str,
        group: str | None,
        decode: Callable[[bytes], M],
        prefetch: int,
        until_empty: bool,
    ) -> None:
        self.transport = transport
        self.queue = queue
        self.group = group
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._generation = 0
        self._unsettled = 0
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AmqpDelivery[M]:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._channel is None or self._channel.is_closed:
                await self._reopen()
                continue
            item = await self._next_item()
            if item is None:
                await self.aclose()
                raise StopAsyncIteration
            generation, raw = item
            if raw is _BROKEN or generation != self._generation:
                continue  # stale: RabbitMQ requeued it when the channel died
            delivery = await self._wrap(raw)
            if delivery is not None:
                self._unsettled += 1
                return delivery

    async def _next_item(self) -> tuple[int, Any] | None:
        """The next inbox item; None when ``until_empty`` and the queue has run dry."""
        if not self._until_empty:
            return await self._inbox.get()
        while True:
            try:
                async with asyncio.timeout(0.3):
                    return await self._inbox.get()
            except TimeoutError:
                if await self._is_empty():
                    return None

    async def _is_empty(self) -> bool:
        ready, _ = await self.transport.queue_counts(self.queue)
        if ready or not self._inbox.empty():
            return False
        if self.group is not None:
            delayed, _ = await self.transport.queue_counts(names.amqp_retry_queue(self.group))
            return delayed == 0
        return True

    async def _reopen(self) -> None:
        delay = 0.2
        while not self._closed:
            try:
                await self._open()
                return
            except BrokerError:
                raise
            except RETRYABLE as exc:
                log.warning(
                    "subscription to %s lost (%s); reconnecting in %.1fs",
                    self.queue,
                    exc or type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _open(self) -> None:
        await self.transport.prepare_queue(self.queue, self.group)
        channel = await self.transport.open_channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.declare_queue(self.queue, passive=True)
        self._generation += 1
        generation = self._generation

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._inbox.put_nowait((generation, message))

        def on_close(*_: object) -> None:
            self._inbox.put_nowait((generation, _BROKEN))

        channel.close_callbacks.add(on_close)
        tag = await queue.consume(on_message, no_ack=False)
        self._consumer = (queue, tag)
        self._unsettled = 0  # deliveries of the old channel can no longer be settled
        self._channel = channel
        if generation > 1:
            log.info("re-subscribed to %s", self.queue)

    async def _wrap(self, raw: AbstractIncomingMessage) -> AmqpDelivery[M] | None:
        try:
            message = self._decode(raw.body)
        except EnvelopeError as exc:
            log.warning("dead-lettering undecodable message on %s: %s", self.queue, exc)
            if self.group is not None:
                await self.transport.dead_letter(
                    self.group, raw.body, dict(raw.headers or {}), exc.one_line()
                )
                await self.settle(raw.ack(), yielded=False)
            else:
                await self.settle(raw.reject(requeue=False), yielded=False)
            return None
        return AmqpDelivery(message, attempt_of(raw), self, raw)

    async def settle(self, settling: Any, *, yielded: bool = True) -> None:
        """Await an ack/nack; on a dead channel the broker has already requeued the message."""
        try:
            await settling
        except CONNECTION_ERRORS as exc:
            log.warning(
                "settling a delivery on %s failed (%s); RabbitMQ redelivers it",
                self.queue,
                exc or type(exc).__name__,
            )
        if yielded:
            self._unsettled -= 1
            if self._closed and self._unsettled <= 0:
                await self._close_channel()

    async def aclose(self) -> None:
        """Stop consuming now. The channel stays open until every delivery already yielded is
        settled (a draining worker can still ack); prefetched, unyielded messages go back to
        the queue when it closes."""
        if self._closed:
            return
        self._closed = True
        self.transport.forget(self)
        if self._consumer is not None and self._channel is not None:
            queue, tag = self._consumer
            try:
                await queue.cancel(tag)
            except CONNECTION_ERRORS as exc:
                log.debug("cancelling consumer on %s: %s", self.queue, exc)
        if self._unsettled <= 0:
            await self._close_channel()

    async def force_close(self) -> None:
        """Transport shutdown: close the channel whatever is unsettled (it is requeued)."""
        self._closed = True
        await self._close_channel()

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except CONNECTION_ERRORS as exc:
                log.debug("closing channel of %s: %s", self.queue, exc)
