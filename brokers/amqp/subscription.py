"""Consuming from RabbitMQ: the subscription iterator.

The subscription owns one channel (on the transport's consuming connection) with
``basic.qos(prefetch)`` and one consumer on its queue. When the channel or connection dies it
reconnects with :data:`brokers.policy.RECONNECT` backoff and consumes again, for as long as it
takes - a consumer never gives up on a broker that is merely away; only configuration errors
(credentials, vhost, a refused declaration, a missing reply queue) are raised. It never relies
on aio-pika's robust connection to restore consumers. Deliveries of a dead channel are dropped
locally: RabbitMQ has already put them back in the queue (at-least-once).

Nothing on the wire can stop it: a message that cannot be decoded or wrapped is dead-lettered
with the reason (:mod:`brokers.amqp.refusal`) and the iterator goes on.

It needs only :class:`_Channels` from its transport, never the transport class itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, Self

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers.amqp.delivery import AmqpDelivery, M, Republisher, attempt_of
from brokers.amqp.failures import COPY_FAILURES, REFUSALS, RETRYABLE, TRANSIENT, describe, refusal
from brokers.amqp.refusal import refusal_reason, refuse
from brokers.amqp.settings import AmqpSettings
from brokers.policy import RECONNECT
from pixfleet.errors import BrokerError, TransportClosed

log = logging.getLogger(__name__)

_BROKEN = object()  # inbox sentinel: the channel died

#: ``connecting`` (first subscribe) -> ``consuming`` <-> ``reconnecting`` -> ``closed``.
SubscriptionState = Literal["connecting", "consuming", "reconnecting", "closed"]


class _Channels(Republisher, Protocol):
    """What a subscription needs from its transport."""

    @property
    def settings(self) -> AmqpSettings: ...

    async def open_channel(self) -> AbstractChannel: ...

    async def declare_for_consuming(
        self, channel: AbstractChannel, queue: str, group: str | None
    ) -> None: ...

    async def register(self, group: str) -> None: ...

    async def waiting(self, queue: str, group: str | None) -> int: ...


class AmqpSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription`: an async iterator of validated deliveries from
    one queue. :attr:`state` says whether it is consuming (``state_listeners`` hear every
    change). ``on_release`` is called once its channel is given up for good, after
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
        self.state_listeners: list[Callable[[SubscriptionState, SubscriptionState], None]] = []
        self._channels = channels
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._on_release = on_release
        self._inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._generation = 0
        self._held: set[AmqpDelivery[M]] = set()  # yielded, unsettled, of the live channel
        self._state: SubscriptionState = "connecting"
        self._lost = "not connected yet"  # why the last channel closed
        self._registered = group is None
        self._closed = False

    @property
    def state(self) -> SubscriptionState:
        return self._state

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
                self._held.add(delivery)
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
        try:
            waiting = await self._channels.waiting(self.queue, self.group)
        except TRANSIENT as exc:
            log.debug("cannot count %s (%s)", self.queue, describe(exc))
            return False
        return waiting == 0 and self._inbox.empty()

    async def _reopen(self) -> None:
        """Subscribe again, retrying transient trouble forever with capped, jittered backoff."""
        self._held.clear()  # the dead channel's deliveries are back in the queue
        if self._state == "consuming":
            self._set_state("reconnecting", self._lost)
        attempt = 0
        while not self._closed:
            try:
                await self._open()
            except TransportClosed:
                self._closed = True  # the transport is closing
            except TRANSIENT as exc:
                attempt += 1
                wait = RECONNECT.delay(attempt)
                if self._state != "reconnecting":
                    self._set_state("reconnecting", describe(exc))
                log.debug("subscribing to %s: %s; again in %.1fs", self.queue, exc, wait)
                await asyncio.sleep(wait)
            else:
                await self._after_open()
                return

    async def _after_open(self) -> None:
        if self._closed:  # closed while the channel was being opened
            await self._close_channel()
            return
        self._set_state("consuming")
        if not self._registered and self.group is not None:
            try:
                await self._channels.register(self.group)
                self._registered = True
            except COPY_FAILURES as exc:
                log.warning("group %s is not registered yet (%s)", self.group, describe(exc))

    async def _open(self) -> None:
        channel = await self._channels.open_channel()
        try:
            async with asyncio.timeout(self._channels.settings.op_timeout):
                self._consumer = await self._start(channel)
        except REFUSALS as exc:  # a configuration error: raised, not waited out
            await _close_quietly(channel)
            raise refusal(exc) from exc
        except BaseException:
            await _close_quietly(channel)
            raise
        self._channel = channel

    async def _start(self, channel: AbstractChannel) -> tuple[AbstractQueue, str]:
        await self._channels.declare_for_consuming(channel, self.queue, self.group)
        await channel.set_qos(prefetch_count=self._prefetch)
        try:
            queue = await channel.declare_queue(self.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BrokerError(f"queue {self.queue} does not exist (expired?)") from exc
        self._generation += 1
        generation = self._generation

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._inbox.put_nowait((generation, message))

        def on_close(_: object, exc: BaseException | None = None) -> None:
            self._lost = describe(exc) if exc is not None else "channel closed"
            self._inbox.put_nowait((generation, _BROKEN))

        channel.close_callbacks.add(on_close)
        return queue, await queue.consume(on_message, no_ack=False)

    def _set_state(self, new: SubscriptionState, why: str = "") -> None:
        old, self._state = self._state, new
        if new == "reconnecting":
            log.warning(
                "subscription to %s lost (%s); reconnecting until it is back", self.queue, why
            )
        elif new == "consuming" and old == "reconnecting":
            log.info("re-subscribed to %s", self.queue)
        else:
            log.debug("subscription to %s: %s -> %s", self.queue, old, new)
        for listener in self.state_listeners:
            listener(old, new)

    async def _wrap(self, raw: AbstractIncomingMessage) -> AmqpDelivery[M] | None:
        """A delivery of ``raw``, or None after dead-lettering it (nothing may stop us)."""
        limit = self._channels.settings.delivery_limit
        try:
            message = self._decode(raw.body)
            attempt = attempt_of(raw, limit)
        except Exception as exc:  # noqa: BLE001 - a hostile message, never a crash
            await refuse(raw, self.group, self._channels, refusal_reason(exc), self.queue)
            return None
        return AmqpDelivery(
            message, attempt, raw, self.group, limit, self._channels, self._released
        )

    async def _released(self, delivery: AmqpDelivery[Any]) -> None:
        """A delivery was settled (or given back): close a closed subscription's channel once
        none of its deliveries is left."""
        self._held.discard(delivery)
        if self._closed and not self._held:
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
                async with asyncio.timeout(self._channels.settings.op_timeout):
                    await queue.cancel(tag)
            except RETRYABLE as exc:
                log.debug("cancelling consumer on %s: %s", self.queue, exc)
        if not self._held:
            await self._close_channel()

    async def force_close(self) -> None:
        """Transport shutdown: close the channel whatever is unsettled (it is requeued)."""
        self._closed = True
        await self._close_channel()

    async def _close_channel(self) -> None:
        """Give the channel up for good (the subscription is closed)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await _close_quietly(channel)
        if self._state != "closed":
            self._set_state("closed")
        self._on_release(self)


async def _close_quietly(channel: AbstractChannel) -> None:
    if channel.is_closed:
        return
    try:
        async with asyncio.timeout(2.0):
            await channel.close()
    except RETRYABLE as exc:
        log.debug("closing a channel: %s", describe(exc))
