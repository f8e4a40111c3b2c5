"""The channels of a transport and everything done on them, shared by the transport and its
subscriptions: confirmed publishes that survive a reconnect and fail fast when RabbitMQ blocks
publishers, queue preparation, and the dead-letter and delayed-retry copies a subscription makes
when a delivery is nacked.

Publishing happens on one connection, consuming (and inspection) on another: during a memory or
disk alarm RabbitMQ stops reading from connections that publish, and a worker's acks must not
wait behind its replies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiormq
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel

from brokers import names
from brokers.amqp.connection import AmqpConnection
from brokers.amqp.failures import BLOCKED_GRACE, RETRYABLE, Patience, confirmed, describe
from brokers.amqp.inspector import AmqpInspector
from brokers.amqp.topology import Topology
from pixfleet.envelope import MAX_BODY_BYTES
from pixfleet.errors import BrokerBlocked, BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class AmqpChannels:
    """Channels of a transport: a publishing channel (publisher confirms, ``on_return_raises``)
    on ``publishing``, replaced after a connection loss, and fresh channels on ``consuming``
    (the same connection if none is given) for subscriptions and inspection."""

    def __init__(self, publishing: AmqpConnection, consuming: AmqpConnection | None = None) -> None:
        self.settings = publishing.settings
        self._connection = publishing
        self._consuming = consuming or publishing
        self.inspector = AmqpInspector(self._consuming)
        self.topology = Topology(self.settings, self.inspector.groups)
        self._pub: AbstractChannel | None = None
        self._pub_generation = 0
        self._was_blocked = False  # a publish ended in BrokerBlocked: look before the next one

    async def open_channel(self) -> AbstractChannel:
        """A new channel of its own on the consuming connection, one connection attempt at
        most (the caller closes it; a subscription paces its own retries)."""
        return await self._consuming.open_channel(patient=False)

    async def waiting(self, queue: str, group: str | None) -> int:
        """Ready messages of ``queue`` plus the delayed retries of ``group``."""
        return await self.inspector.waiting(queue, group)

    async def with_channel(self, op: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run ``op`` on the publishing channel within ``op_timeout``; after a connection loss,
        reconnect and run it again until ``reconnect_timeout`` (so a retried publish may
        duplicate: at-least-once). Raises :class:`BrokerBlocked` when RabbitMQ has blocked the
        connection for :data:`BLOCKED_GRACE` seconds (an alarm), :class:`BrokerError` when it
        refuses a declaration and :class:`BrokerUnavailable` when it stays out of reach."""
        patience: Patience | None = None  # made on the first failure: none on the fast path
        while True:
            try:
                return await self._unless_blocked(op)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise BrokerError(f"RabbitMQ refused a declaration: {describe(exc)}") from exc
            except RETRYABLE as exc:
                patience = patience or Patience(self.settings.reconnect_timeout)
                wait = None if self._connection.closed else patience.next_wait()
                if wait is None:
                    raise BrokerUnavailable(
                        f"lost {self._connection.url} ({describe(exc)})"
                    ) from exc
                log.warning("broker operation failed (%s); retrying in %.1fs", describe(exc), wait)
                self._pub = None
                await asyncio.sleep(wait)

    async def prepare_queue(self, queue: str, group: str | None) -> None:
        """Make sure a subscription's queue exists and its group is registered (publishing
        connection)."""

        async def op(channel: AbstractChannel) -> None:
            if group is not None:
                await self.topology.declare_group(channel, group)
            elif queue == names.amqp_reply_queue(names.DEFAULT_RESULTS):
                await self.topology.declare_results(channel)

        await self.with_channel(op)

    async def declare_for_consuming(
        self, channel: AbstractChannel, queue: str, group: str | None
    ) -> None:
        """Declare what a subscription of ``queue`` needs on its own (consuming) channel; no
        publish, so an alarm cannot block the consuming connection."""
        topology = Topology(self.settings, self.inspector.groups)
        if group is not None:
            await topology.declare_group(channel, group, register=False)
        elif queue == names.amqp_reply_queue(names.DEFAULT_RESULTS):
            await topology.declare_results(channel)

    async def register(self, group: str) -> None:
        """Add ``group`` to the registry (a publish: on the publishing connection)."""

        async def op(channel: AbstractChannel) -> None:
            await self.topology.declare_group(channel, group)

        await self.with_channel(op)

    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None:
        """Publish a copy to the group's dead queue with the reason (confirmed). A body over
        the envelope limit is cut to it (the reason says so)."""
        if len(body) > MAX_BODY_BYTES:
            reason = f"{reason} [body of {len(body)} bytes cut to {MAX_BODY_BYTES}]"
            body = body[:MAX_BODY_BYTES]
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            headers={**headers, names.AMQP_HEADER_REASON: reason[:2000]},
            timestamp=datetime.now(UTC),  # when it died (uploader dlq list)
        )

        async def op(channel: AbstractChannel) -> None:
            await self.topology.declare_group(channel, group)
            exchange = await self.topology.dead_exchange(channel)
            await confirmed(exchange.publish(message, routing_key=group), what="dead letter")

        await self.with_channel(op)

    async def delay(
        self, group: str, body: bytes, headers: dict[str, Any], delay: float, deliveries: int
    ) -> None:
        """Publish a copy to the group's retry queue for ``delay`` (rounded up to a retry
        queue's delay); it returns to the group queue when that runs out."""
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            headers={**headers, names.AMQP_HEADER_DELIVERIES: deliveries},
        )

        async def op(channel: AbstractChannel) -> None:
            await self.topology.declare_group(channel, group)
            queue = await self.topology.retry_queue(channel, group, delay)
            publishing = channel.default_exchange.publish(message, routing_key=queue)
            await confirmed(publishing, what="delayed retry")

        await self.with_channel(op)

    async def _unless_blocked(self, op: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run ``op`` on the publishing channel within ``op_timeout``, in the caller's task (no
        task or wait per publish). If it is still pending after :data:`BLOCKED_GRACE` seconds
        on a connection RabbitMQ blocks, it is cancelled and :class:`BrokerBlocked` raised (not
        confirmed: a publish already sent may still be stored once the alarm clears)."""
        if self._was_blocked:
            await self._until_unblocked()
        channel = await self._publisher()
        watch = _BlockedWatch(self._connection)
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                return await op(channel)
        except asyncio.CancelledError:
            if watch.cancelled_it():
                self._was_blocked = True
                raise self._blocked_error() from None
            raise
        finally:
            watch.stop()

    async def _until_unblocked(self) -> None:
        """After a publish ended blocked, send nothing more while the alarm lasts: RabbitMQ
        reads a blocked connection's frames once the alarm clears and stores every one, so
        each try sent now would be one more copy then. Waits up to :data:`BLOCKED_GRACE`
        seconds for the connection to be unblocked, else raises :class:`BrokerBlocked` with
        nothing sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BLOCKED_GRACE
        while await self._connection.blocked():
            if loop.time() >= deadline:
                raise self._blocked_error()
            await asyncio.sleep(0.1)
        self._was_blocked = False

    def _blocked_error(self) -> BrokerBlocked:
        return BrokerBlocked(
            f"{self._connection.url} blocks publishers (memory or disk alarm);"
            " nothing was confirmed, try again later"
        )

    async def _publisher(self) -> AbstractChannel:
        """The publishing channel, replaced (with the topology cache) when it or its
        connection died."""
        connection = self._connection
        if (
            self._pub is None
            or self._pub.is_closed
            or not connection.alive
            or self._pub_generation != connection.generation
        ):
            self._pub = await connection.open_channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._pub_generation = connection.generation
            self.topology.forget()
        return self._pub


class _BlockedWatch:
    """Started around one publishing operation: after :data:`BLOCKED_GRACE` seconds it asks
    whether RabbitMQ blocks the connection and, if so, cancels the operation's task. Costs one
    timer on the fast path (the operation done within the grace)."""

    def __init__(self, connection: AmqpConnection) -> None:
        self._connection = connection
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(BLOCKED_GRACE, self._check)
        self._probe: asyncio.Task[None] | None = None
        self._blocked = False
        self._stopped = False

    def _check(self) -> None:
        self._probe = asyncio.ensure_future(self._probe_blocked())

    async def _probe_blocked(self) -> None:
        blocked = await self._connection.blocked()
        if blocked and not self._stopped and self._task is not None:
            self._blocked = True
            self._task.cancel()

    def cancelled_it(self) -> bool:
        """Whether the cancellation being handled is this watch's (the caller's own
        cancellation goes on as one)."""
        if not self._blocked or self._task is None:
            return False
        return self._task.uncancel() == 0

    def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
