"""Put raw bytes on a broker, bypassing envelope encoding (what a foreign producer might send)."""

from __future__ import annotations

from urllib.parse import urlsplit

from brokers import names
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.transport import SqliteSettings


def _sqlite_publish(url: str, topic: str, target: str, body: bytes) -> None:
    s = SqliteSettings.from_url(url)
    queue = SqliteQueue(s.path, busy_timeout=s.busy_timeout, synchronous=s.synchronous)
    try:
        queue.publish(topic, "raw", body, (target,))
    finally:
        queue.close()


async def inject_raw_reply(url: str, channel: str, body: bytes) -> None:
    """Put raw bytes on a reply channel (sqlite only), as a hostile peer might."""
    assert urlsplit(url).scheme == "sqlite", url
    _sqlite_publish(url, names.SQLITE_REPLIES, channel, body)


async def inject_raw(url: str, group: str, body: bytes) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        _sqlite_publish(url, names.SQLITE_TASKS, group, body)
        return
    if scheme in ("amqp", "amqps"):
        await _inject_amqp(url, group, body)
        return
    if scheme == "kafka":
        from brokers.kafka.transport import KafkaTransport  # noqa: PLC0415

        async with KafkaTransport.from_url(url) as transport:
            await transport.send_raw(body, groups=(group,))
        return
    raise AssertionError(f"no raw injector for {scheme}")


async def _inject_amqp(url: str, group: str, body: bytes) -> None:
    from aio_pika import DeliveryMode, Message  # noqa: PLC0415 - only for amqp runs
    from aio_pika.abc import AbstractChannel  # noqa: PLC0415

    from brokers.amqp.channels import AmqpChannels  # noqa: PLC0415
    from brokers.amqp.connection import AmqpConnection  # noqa: PLC0415
    from brokers.amqp.settings import AmqpSettings  # noqa: PLC0415

    async with AmqpConnection(AmqpSettings.from_url(url)) as connection:
        channels = AmqpChannels(connection)
        await channels.prepare_queue(names.amqp_group_queue(group), group)

        async def op(channel: AbstractChannel) -> None:
            await channel.default_exchange.publish(
                Message(body, delivery_mode=DeliveryMode.PERSISTENT),
                routing_key=names.amqp_group_queue(group),
            )

        await channels.with_channel(op)
