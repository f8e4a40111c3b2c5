"""The publishing channel and everything done on it, shared by a transport and its
subscriptions: confirmed publishes that survive a reconnect, queue preparation, and the dead-letter
and delayed-retry copies a subscription makes when a delivery is nacked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiormq
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel

from brokers import names
from brokers.amqp.connection import AmqpConnection
from brokers.amqp.failures import RETRYABLE, Patience, confirmed, describe
from brokers.amqp.inspector import AmqpInspector
from brokers.amqp.topology import Topology
from pixfleet.errors import BrokerError, BrokerUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class AmqpChannels:
    """Channels on one :class:`AmqpConnection`: a publishing channel (publisher confirms,
    ``on_return_raises``) that is replaced after a connection loss, and fresh ones on request."""

    def __init__(self, connection: AmqpConnection) -> None:
        self.settings = connection.settings
        self.inspector = AmqpInspector(connection)
        self.topology = Topology(self.settings, self.inspector.groups)
        self._connection = connection
        self._pub: AbstractChannel | None = None
        self._pub_generation = 0

    async def open_channel(self) -> AbstractChannel:
        """A new channel of its own (the caller closes it)."""
        return await self._connection.open_channel()

    async def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; (0, 0) if it does not exist."""
        return await self.inspector.queue_counts(queue)

    async def with_channel(self, op: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run ``op`` on the publishing channel within ``op_timeout``; after a connection loss,
        reconnect and run it again until ``reconnect_timeout`` (so a retried publish may
        duplicate: at-least-once). Raises :class:`BrokerError` when RabbitMQ refuses a
        declaration and :class:`BrokerUnavailable` when the broker stays out of reach."""
        patience = Patience(self.settings.reconnect_timeout)
        while True:
            try:
                channel = await self._publisher()
                async with asyncio.timeout(self.settings.op_timeout):
                    return await op(channel)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise BrokerError(f"RabbitMQ refused a declaration: {describe(exc)}") from exc
            except RETRYABLE as exc:
                wait = None if self._connection.closed else patience.next_wait()
                if wait is None:
                    raise BrokerUnavailable(
                        f"lost {self._connection.url} ({describe(exc)})"
                    ) from exc
                log.warning("broker operation failed (%s); retrying in %.1fs", describe(exc), wait)
                self._pub = None
                await asyncio.sleep(wait)

    async def prepare_queue(self, queue: str, group: str | None) -> None:
        """Make sure a subscription's queue exists before consuming from it."""

        async def op(channel: AbstractChannel) -> None:
            if group is not None:
                await self.topology.declare_group(channel, group)
            elif queue == names.amqp_reply_queue(names.DEFAULT_RESULTS):
                await self.topology.declare_results(channel)

        await self.with_channel(op)

    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None:
        """Publish a copy to the group's dead queue with the reason (confirmed)."""
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            headers={**headers, names.AMQP_HEADER_REASON: reason[:2000]},
        )

        async def op(channel: AbstractChannel) -> None:
            await self.topology.declare_group(channel, group)
            exchange = await self.topology.dead_exchange(channel)
            await confirmed(exchange.publish(message, routing_key=group), what="dead letter")

        await self.with_channel(op)

    async def delay(
        self, group: str, body: bytes, headers: dict[str, Any], delay: float, deliveries: int
    ) -> None:
        """Publish a copy to the group's retry queue; it returns to the group after ``delay``."""
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            expiration=max(delay, 0.001),
            headers={**headers, names.AMQP_HEADER_DELIVERIES: deliveries},
        )

        async def op(channel: AbstractChannel) -> None:
            await self.topology.declare_group(channel, group)
            await confirmed(
                channel.default_exchange.publish(
                    message, routing_key=names.amqp_retry_queue(group)
                ),
                what="delayed retry",
            )

        await self.with_channel(op)

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
