"""One confirmed, mandatory publish on a channel with publisher confirms, pipelined.

aio-pika's ``Exchange.publish`` asks aiormq to wait, under the channel's lock, until the frame
has been written and the socket drained before the next publish on that channel may queue its
frame: with many publishes in flight (a worker's replies, an uploader's batch) they go out one
per event-loop step or two. Here the frame is queued without that wait and only the broker's
confirm is awaited, so concurrent publishes queue back to back; aiormq's bounded write queue
still pushes back when the socket cannot keep up. What counts is unchanged: the publish is
durable once confirmed (:func:`~brokers.amqp.failures.confirmed` turns a return or a nack into
pixfleet's errors).
"""

from __future__ import annotations

import aiormq
from aio_pika import Message
from aio_pika.abc import AbstractChannel

from brokers.amqp.failures import confirmed


async def publish(
    channel: AbstractChannel, message: Message, *, exchange: str, routing_key: str, what: str
) -> None:
    """Publish ``message`` (mandatory) to ``exchange`` and await RabbitMQ's confirm."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    underlay = await channel.get_underlay_channel()
    if not isinstance(underlay, aiormq.Channel):  # aio-pika's channels are aiormq's
        raise TypeError(f"expected an aiormq channel under {channel!r}, got {underlay!r}")
    publishing = underlay.basic_publish(
        message.body,
        exchange=exchange,
        routing_key=routing_key,
        properties=message.properties,
        mandatory=True,
        wait=False,
    )
    await confirmed(publishing, what=what)
