"""The RabbitMQ transport (aio-pika): ``amqp://`` and ``amqps://``.

Topology: :mod:`brokers.amqp.topology` (names in :mod:`brokers.names`; see ``docs/rabbitmq.md``).

Delivery: persistent messages, publisher confirms, ``mandatory`` publishing (unroutable or nacked
publishes raise), manual acks, ``basic.qos`` = prefetch. Connections: two per transport
(:class:`~brokers.amqp.connection.AmqpConnection`), one that publishes (a channel with confirms,
:class:`~brokers.amqp.channels.AmqpChannels`) and one that consumes and inspects (a channel per
subscription), so a memory or disk alarm, which blocks publishing connections, never holds up
acks. pixfleet reconnects itself (no ``connect_robust``) and re-subscribes, so a broker that
drops every connection cannot leave a worker connected with zero consumers.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Self, TypeVar

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel

from brokers import names
from brokers.amqp.admin import AmqpAdmin
from brokers.amqp.channels import AmqpChannels
from brokers.amqp.connection import AmqpConnection
from brokers.amqp.fleet import AmqpFleet
from brokers.amqp.publishing import publish
from brokers.amqp.settings import AmqpSettings
from brokers.amqp.subscription import AmqpSubscription
from brokers.contract import DeadLetter, Delivery, GroupStats, Subscription
from brokers.delegates import AdminDelegate, FleetDelegate
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import BrokerFull, PublishFailed, Unroutable

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)


class AmqpTransport(AdminDelegate, FleetDelegate):
    """:class:`brokers.contract.Transport` on RabbitMQ."""

    def __init__(self, settings: AmqpSettings) -> None:
        self.settings = settings
        self._connection = AmqpConnection(settings, role="publish")
        self._consuming = AmqpConnection(settings, role="consume")
        self._channels = AmqpChannels(self._connection, self._consuming)
        self._inspector = self._channels.inspector
        self._admin = AmqpAdmin(self._channels)
        self._fleet = AmqpFleet(self._channels)
        self._subs: set[AmqpSubscription[Any]] = set()  # open ones, closed by close()

    @classmethod
    def from_url(cls, url: str) -> AmqpTransport:
        return cls(AmqpSettings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.safe_url

    async def __aenter__(self) -> Self:
        await self._connection.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel subscriptions (their unacked deliveries return to the queue) and disconnect."""
        await self._consuming.close(first=self._close_subscriptions)
        await self._connection.close()

    async def _close_subscriptions(self) -> None:
        for sub in list(self._subs):
            await sub.force_close()

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        message = _task_message(task)
        topology = self._channels.topology

        async def op(channel: AbstractChannel) -> None:
            for group in task.groups:
                await topology.declare_group(channel, group)
            exchange = await topology.task_exchange(channel)
            await publish(
                channel, message, exchange=exchange.name, routing_key="", what=f"task {task.id}"
            )

        try:
            await self._channels.with_channel(op)
        except PublishFailed as exc:  # a nack: with max_length, a full group queue
            if not self.settings.max_length:
                raise
            raise BrokerFull(f"a group queue is full (max_length): {exc.message}") from exc

    async def reply(self, reply_to: str, result: Result) -> str:
        message = _result_message(result)

        async def op(channel: AbstractChannel) -> str:
            await self._channels.topology.declare_results(channel)
            try:
                queue = names.amqp_reply_queue(reply_to)
                await publish(channel, message, exchange="", routing_key=queue, what="result")
                return reply_to
            except Unroutable:
                log.info(
                    "reply channel %s is gone; result goes to %s", reply_to, names.DEFAULT_RESULTS
                )
            fallback = names.amqp_reply_queue(names.DEFAULT_RESULTS)
            await publish(channel, message, exchange="", routing_key=fallback, what="result")
            return names.DEFAULT_RESULTS

        return await self._channels.with_channel(op)

    async def open_reply_channel(self) -> str:
        """A private reply queue: quorum (its results, and the reader's acks, survive a broker
        restart - even a ``kill -9``, at which a classic queue can forget acks and hand read
        results back), expiring after ``reply_ttl`` unused, named with 128 random bits. It is
        not exclusive (a quorum queue cannot be): the unguessable name is what keeps others out
        (see docs/rabbitmq.md)."""
        channel_name = f"{names.PRIVATE_REPLY_PREFIX}{secrets.token_hex(16)}"

        async def op(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                names.amqp_reply_queue(channel_name),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-expires": int(self.settings.reply_ttl * 1000),
                },
            )

        await self._channels.with_channel(op)
        return channel_name

    async def close_reply_channel(self, channel: str) -> None:
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")

        async def op(ch: AbstractChannel) -> None:  # no if-unused/if-empty: quorum refuses them
            await ch.queue_delete(names.amqp_reply_queue(channel))

        await self._channels.with_channel(op)

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> Subscription[Delivery[Task]]:
        queue = names.amqp_group_queue(group)
        return self._subscribe(queue, group, decode_task, prefetch, until_empty)

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> Subscription[Delivery[Result]]:
        queue = names.amqp_reply_queue(channel)
        return self._subscribe(queue, None, decode_result, prefetch, until_empty)

    def _subscribe(
        self,
        queue: str,
        group: str | None,
        decode: Callable[[bytes], M],
        prefetch: int,
        until_empty: bool,
    ) -> AmqpSubscription[M]:
        """A tracked subscription; it drops out of ``_subs`` once it gives up its channel."""
        sub = AmqpSubscription(
            self._channels,
            queue=queue,
            group=group,
            decode=decode,
            prefetch=prefetch,
            until_empty=until_empty,
            on_release=self._subs.discard,
        )
        self._subs.add(sub)
        return sub

    # -- inspection ------------------------------------------------------------------------

    async def stats(self, group: str) -> GroupStats:
        return await self._inspector.stats(group)

    async def groups(self) -> tuple[str, ...]:
        return await self._inspector.groups()

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self._inspector.dead_letters(group, limit=limit)


def _task_message(task: Task) -> Message:
    """A task as a persistent message with one header per target group (or the all header)."""
    if task.groups:
        headers: dict[str, Any] = {names.amqp_group_header(g): "1" for g in task.groups}
    else:
        headers = {names.AMQP_HEADER_ALL: "1"}
    return Message(
        encode(task),
        delivery_mode=DeliveryMode.PERSISTENT,
        content_type="application/json",
        message_id=task.id,
        correlation_id=task.correlation_id,
        type=names.AMQP_TYPE_TASK,
        headers=headers,
    )


def _result_message(result: Result) -> Message:
    return Message(
        encode(result),
        delivery_mode=DeliveryMode.PERSISTENT,
        content_type="application/json",
        message_id=f"{result.task_id}:{result.group}",
        correlation_id=result.correlation_id,
        type=names.AMQP_TYPE_RESULT,
    )
