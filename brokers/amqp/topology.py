"""Declaring pixfleet's RabbitMQ topology (names in :mod:`brokers.names`, see docs/rabbitmq.md).

* ``pixfleet.tasks`` - headers exchange. A task carries ``pixfleet-group-<g>: 1`` per target
  group, or ``pixfleet-all: 1`` when untargeted; each group queue is bound with ``x-match: any``
  on its own header and the ``all`` header, so one publish reaches every target.
* ``pixfleet.group.<g>`` - durable quorum queue with ``x-delivery-limit`` and at-least-once
  dead-lettering to ``pixfleet.dead`` (routing key ``<g>``) -> ``pixfleet.dead.<g>``; opt-in
  ``x-max-length`` (with ``x-overflow: reject-publish``) and ``x-message-ttl``.
* ``pixfleet.retry.<g>.<n>s`` - delayed retries, one quorum queue per delay in
  :data:`brokers.names.AMQP_RETRY_DELAYS` (declared when first used): a queue-wide TTL of ``n``
  seconds, then dead-lettered (at-least-once) back into the group queue. Every message of one
  queue has the same TTL, so none waits behind a longer one (RabbitMQ has no native delay).
* ``pixfleet.reply.<channel>`` - reply queues, durable; private ones expire when unused.
* ``pixfleet.groups`` - registry of every group ever declared (one message per group).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange

from brokers import names
from brokers.amqp.settings import AmqpSettings


class Topology:
    """Idempotent declarations, cached for the life of one publishing channel (the exchange
    objects are bound to it): :meth:`forget` when that channel is replaced."""

    def __init__(
        self, settings: AmqpSettings, registered: Callable[[], Awaitable[tuple[str, ...]]]
    ) -> None:
        self._settings = settings
        self._registered = registered  # the groups already in the registry
        self._exchanges: dict[str, AbstractExchange] = {}
        self._declared: set[str] = set()

    def forget(self) -> None:
        self._exchanges.clear()
        self._declared.clear()

    async def task_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        return await self._exchange(channel, names.AMQP_TASK_EXCHANGE, ExchangeType.HEADERS)

    async def dead_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        return await self._exchange(channel, names.AMQP_DEAD_EXCHANGE, ExchangeType.DIRECT)

    async def declare_group(
        self, channel: AbstractChannel, group: str, *, register: bool = True
    ) -> None:
        """Declare a group's queues and bindings, and (``register``) add the group to the
        registry - a publish, so a consuming connection passes ``register=False``."""
        if group in self._declared:
            return
        await self._declare_dead_queue(channel, group)
        await self._declare_group_queue(channel, group)
        if register:
            await self._register(channel, group)
        self._declared.add(group)

    async def retry_queue(self, channel: AbstractChannel, group: str, delay: float) -> str:
        """The retry queue that holds a copy for at least ``delay`` seconds (the next delay
        up in :data:`~brokers.names.AMQP_RETRY_DELAYS`, at most the longest), declared."""
        seconds = retry_bucket(delay)
        queue = names.amqp_retry_queue(group, seconds)
        if queue not in self._declared:
            await channel.declare_queue(
                queue,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": seconds * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": names.amqp_group_queue(group),
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            self._declared.add(queue)
        return queue

    async def declare_results(self, channel: AbstractChannel) -> None:
        """Declare the durable default results channel."""
        if names.DEFAULT_RESULTS not in self._declared:
            await channel.declare_queue(
                names.amqp_reply_queue(names.DEFAULT_RESULTS),
                durable=True,
                arguments={"x-queue-type": "quorum"},
            )
            self._declared.add(names.DEFAULT_RESULTS)

    async def _exchange(
        self, channel: AbstractChannel, name: str, kind: ExchangeType
    ) -> AbstractExchange:
        if name not in self._exchanges:
            self._exchanges[name] = await channel.declare_exchange(name, kind, durable=True)
        return self._exchanges[name]

    async def _declare_dead_queue(self, channel: AbstractChannel, group: str) -> None:
        dead = await self.dead_exchange(channel)
        queue = await channel.declare_queue(
            names.amqp_dead_queue(group), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(dead, routing_key=group)

    async def _declare_group_queue(self, channel: AbstractChannel, group: str) -> None:
        tasks = await self.task_exchange(channel)
        queue = await channel.declare_queue(
            names.amqp_group_queue(group),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self._settings.delivery_limit,
                "x-dead-letter-exchange": names.AMQP_DEAD_EXCHANGE,
                "x-dead-letter-routing-key": group,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                **self._bounds(),
            },
        )
        await queue.bind(
            tasks,
            routing_key="",
            arguments={
                "x-match": "any",
                names.amqp_group_header(group): "1",
                names.AMQP_HEADER_ALL: "1",
            },
        )

    def _bounds(self) -> dict[str, int]:
        """Opt-in bounds of a group queue: a full queue refuses publishes (they are nacked:
        ``broker.full``), an expired task is dead-lettered like a poison one."""
        bounds = {}
        if self._settings.max_length:
            bounds["x-max-length"] = self._settings.max_length
        if self._settings.message_ttl:
            bounds["x-message-ttl"] = int(self._settings.message_ttl * 1000)
        return bounds

    async def _register(self, channel: AbstractChannel, group: str) -> None:
        if group in await self._registered():
            return
        await channel.declare_queue(names.AMQP_GROUP_REGISTRY, durable=True)
        await channel.default_exchange.publish(
            Message(group.encode(), delivery_mode=DeliveryMode.PERSISTENT),
            routing_key=names.AMQP_GROUP_REGISTRY,
            mandatory=True,
        )


def retry_bucket(delay: float) -> int:
    """The shortest retry-queue delay not below ``delay`` (the longest if none is)."""
    for seconds in names.AMQP_RETRY_DELAYS:
        if seconds >= delay:
            return seconds
    return names.AMQP_RETRY_DELAYS[-1]
