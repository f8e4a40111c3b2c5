"""Consuming from RabbitMQ: the subscription iterator.

The subscription owns one channel with ``basic.qos(prefetch)`` and one consumer on its queue.
When the channel or connection dies it reconnects with backoff and consumes again - it never
relies on aio-pika's robust connection to restore consumers. Messages from a dead channel are
dropped locally: RabbitMQ has already put them back in the queue (at-least-once).

It needs only :class:`_Channels` from its transport, never the transport class itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, Self

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers import names
from brokers.amqp.delivery import AmqpDelivery, M, Republisher, attempt_of
from brokers.amqp.failures import CONNECTION_ERRORS, RETRYABLE, describe
from brokers.amqp.settings import AmqpSettings
from brokers.policy import RECONNECT
from pixfleet.errors import BrokerError, EnvelopeError

log = logging.getLogger(__name__)

_BROKEN = object()  # inbox sentinel: the channel died


class _Channels(Republisher, Protocol):
    """What a subscription needs from its transport."""

    @property
    def settings(self) -> AmqpSettings: ...

    async def open_channel(self) -> AbstractChannel: ...

    async def prepare_queue(self, queue: str, group: str | None) -> None: ...

    async def queue_counts(self, queue: str) -> tuple[int, int]: ...


class AmqpSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription`: an async iterator of validated deliveries from
    one queue. ``on_release`` is called once its channel is given up for good, after
    :meth:`aclose` (once every yielded delivery is settled) or :meth:`force_close`."""

    def __init__(
        self,
        channels: _Channels,
        *,
        queue: str,
        group: str | None,
        decode: Callable[[bytes], M],
        prefetch: int,
        until_empty: bool,
        on_release: Callable[[AmqpSubscription[Any]], None],
    ) -> None:
        self.queue = queue
        self.group = group
        self._channels = channels
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._on_release = on_release
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
        ready, _ = await self._channels.queue_counts(self.queue)
        if ready or not self._inbox.empty():
            return False
        if self.group is not None:
            delayed, _ = await self._channels.queue_counts(names.amqp_retry_queue(self.group))
            return delayed == 0
        return True

    async def _reopen(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self._open()
            except BrokerError:
                raise
            except RETRYABLE as exc:
                attempt += 1
                wait = RECONNECT.delay(attempt)
                log.warning(
                    "subscription to %s lost (%s); reconnecting in %.1fs",
                    self.queue,
                    describe(exc),
                    wait,
                )
                await asyncio.sleep(wait)
            else:
                if self._closed:  # closed while the channel was being opened
                    await self._close_channel()
                return

    async def _open(self) -> None:
        await self._channels.prepare_queue(self.queue, self.group)
        channel = await self._channels.open_channel()
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
                await self._channels.dead_letter(
                    self.group, raw.body, dict(raw.headers or {}), exc.one_line()
                )
                await self._settle(raw.ack(), yielded=False)
            else:
                await self._settle(raw.reject(requeue=False), yielded=False)
            return None
        return AmqpDelivery(
            message,
            attempt_of(raw),
            raw,
            self.group,
            self._channels.settings.delivery_limit,
            self._channels,
            self._settle,
        )

    async def _settle(self, settling: Awaitable[object], *, yielded: bool = True) -> None:
        """Await an ack/nack; on a dead channel the broker has already requeued the message."""
        try:
            await settling
        except CONNECTION_ERRORS as exc:
            log.warning(
                "settling a delivery on %s failed (%s); RabbitMQ redelivers it",
                self.queue,
                describe(exc),
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
        """Give the channel up for good (the subscription is closed)."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await channel.close()
            except CONNECTION_ERRORS as exc:
                log.debug("closing channel of %s: %s", self.queue, exc)
        self._on_release(self)
