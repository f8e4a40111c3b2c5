"""RabbitMQ's part of :mod:`bench.cleanup`: a group's queues, its registry entry and the reply
channels' queues, deleted by name on a connection of their own (raw aio-pika)."""

from __future__ import annotations

from collections.abc import Iterable

import aio_pika
from aio_pika.abc import AbstractChannel

from brokers import names
from brokers.amqp.settings import AmqpSettings


def amqp_queues(groups: Iterable[str], channels: Iterable[str]) -> list[str]:
    """Every queue pixfleet declares for ``groups`` and reply ``channels`` on RabbitMQ."""
    queues = []
    for group in groups:
        queues += [names.amqp_group_queue(group), names.amqp_dead_queue(group)]
        queues += [names.amqp_retry_queue(group, s) for s in names.AMQP_RETRY_DELAYS]
    return queues + [names.amqp_reply_queue(c) for c in channels]


async def delete_amqp(url: str, groups: Iterable[str], channels: Iterable[str]) -> None:
    """Delete the queues of ``groups`` and ``channels`` (absent ones are no error: RabbitMQ
    answers delete-ok) and take ``groups`` out of the group registry."""
    groups = list(groups)
    connection = await aio_pika.connect(AmqpSettings.from_url(url).url)
    async with connection:
        channel = await connection.channel()
        for queue in amqp_queues(groups, channels):
            await channel.queue_delete(queue)
        await _unregister(await connection.channel(), set(groups))


async def _unregister(channel: AbstractChannel, groups: set[str]) -> None:
    """Remove ``groups``' entries (one message each) from the registry queue: take every
    entry unacked, ack those of ``groups``, and close the channel - the others go back."""
    if not groups:
        return
    try:
        registry = await channel.declare_queue(names.AMQP_GROUP_REGISTRY, passive=True)
        for _ in range(int(registry.declaration_result.message_count or 0)):
            message = await registry.get(no_ack=False, fail=False)
            if message is None:
                break
            if message.body.decode() in groups:
                await message.ack()
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return  # no registry on this broker: nothing was registered
    finally:
        if not channel.is_closed:
            await channel.close()
