"""Dead letters and purges on RabbitMQ (:class:`brokers.contract.Admin`).

* **replay**: the dead messages of ``pixfleet.dead.<g>`` are taken with ``basic.get`` (unacked)
  on a channel of the consuming connection; each selected task is published to the group queue
  ``pixfleet.group.<g>`` through the default exchange - that group only, a fresh message with
  no delivery count - with a publisher confirm, and only then is its dead message acked. A crash
  in between leaves the dead message unacked, so RabbitMQ puts it back: the task may exist twice
  (the completion records make that harmless), never zero times. Messages not selected stay
  unacked until the channel closes, which puts them back (the replay waits for that). At most
  the messages that were in the dead queue when the replay began are looked at, so tasks that
  die again meanwhile are not replayed twice in one go.
* **purge**: ``queue.purge`` of the dead queue, or of the group queue and its retry queues
  (``ready`` in ``uploader status``); unacked messages are not purged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol, TypeVar

import aiormq
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers import names
from brokers.amqp.failures import confirmed
from brokers.amqp.settings import AmqpSettings
from brokers.deadletters import replayable
from pixfleet.envelope import Task

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Settler(Protocol):
    async def settle(self, queue: str, expected: int) -> None: ...


class _Channels(Protocol):
    settings: AmqpSettings

    @property
    def inspector(self) -> _Settler: ...

    async def open_channel(self) -> AbstractChannel: ...

    async def with_channel(self, op: Callable[[AbstractChannel], Awaitable[T]]) -> T: ...

    async def prepare_queue(self, queue: str, group: str | None) -> None: ...


class AmqpAdmin:
    """Replays and purges over a transport's channels."""

    def __init__(self, channels: _Channels) -> None:
        self._channels = channels
        self._timeout = channels.settings.op_timeout

    async def replay_dead_letters(self, group: str, task_ids: Collection[str] | None = None) -> int:
        await self._channels.prepare_queue(names.amqp_group_queue(group), group)
        queue = names.amqp_dead_queue(group)
        channel = await self._channels.open_channel()
        try:
            dead = await self._passive(channel, queue)
            if dead is None:
                return 0
            before = int(dead.declaration_result.message_count or 0)
            replayed = await self._replay_from(dead, before, group, task_ids)
        finally:
            if not channel.is_closed:
                await channel.close()
        await self._channels.inspector.settle(queue, before - replayed)
        return replayed

    async def _replay_from(
        self, dead: AbstractQueue, count: int, group: str, task_ids: Collection[str] | None
    ) -> int:
        replayed = 0
        for _ in range(count):
            message = await dead.get(no_ack=False, fail=False, timeout=self._timeout)
            if message is None:
                break
            task = replayable(message.body, task_ids)
            if task is None:
                continue  # stays unacked: back in the dead queue when the channel closes
            await self._publish(group, task, message)
            await message.ack()
            replayed += 1
        log.info("replayed %d dead letter(s) of %s", replayed, group)
        return replayed

    async def _publish(self, group: str, task: Task, dead: AbstractIncomingMessage) -> None:
        """Publish the task to the group queue (confirmed), as a first delivery."""
        message = Message(
            dead.body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=task.id,
            correlation_id=task.correlation_id,
            type=names.AMQP_TYPE_TASK,
            headers={names.amqp_group_header(group): "1"},
        )
        queue = names.amqp_group_queue(group)

        async def op(channel: AbstractChannel) -> None:
            publishing = channel.default_exchange.publish(message, routing_key=queue)
            await confirmed(publishing, what=f"replay of task {task.id}")

        await self._channels.with_channel(op)

    async def purge_dead_letters(self, group: str) -> int:
        return await self._purge([names.amqp_dead_queue(group)])

    async def purge(self, group: str) -> int:
        retries = [names.amqp_retry_queue(group, s) for s in names.AMQP_RETRY_DELAYS]
        return await self._purge([names.amqp_group_queue(group), *retries])

    async def _purge(self, queues: list[str]) -> int:
        """Purge each queue that exists; the number of messages removed."""
        total = 0
        channel: AbstractChannel | None = None
        try:
            for name in queues:
                if channel is None or channel.is_closed:
                    channel = await self._channels.open_channel()
                queue = await self._passive(channel, name)
                if queue is not None:
                    done: Any = await queue.purge(timeout=self._timeout)
                    total += int(done.message_count or 0)
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        return total

    async def _passive(self, channel: AbstractChannel, name: str) -> AbstractQueue | None:
        """The queue ``name``, or None if it does not exist (that closes ``channel``)."""
        try:
            return await channel.declare_queue(name, passive=True, timeout=self._timeout)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
