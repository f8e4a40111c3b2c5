"""Put raw bytes on a broker, bypassing envelope encoding (what a foreign producer might send)."""

from __future__ import annotations

from collections.abc import Sequence
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


async def inject_kafka_record(
    url: str,
    topic: str,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] = (),
    *,
    key: bytes | None = b"raw",
) -> None:
    """Produce one record with any headers (``None`` values included) onto ``topic`` (a base
    name from :mod:`brokers.names`, put in the URL's namespace here), as a hostile producer
    might. The topic must exist."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - only for kafka runs

    from brokers.kafka.settings import KafkaSettings  # noqa: PLC0415

    s = KafkaSettings.from_url(url)
    producer = AIOKafkaProducer(acks="all", enable_idempotence=s.idempotence, **s.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(s.name(topic), value, key=key, headers=list(headers))
    finally:
        await producer.stop()


async def read_kafka_topic(url: str, topic: str) -> list[tuple[bytes | None, dict[str, bytes]]]:
    """Every record of ``topic`` (a base name, namespaced here) from the beginning: value and
    headers (the last value of each header name; ``None`` values left out)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    from brokers.kafka.settings import KafkaSettings  # noqa: PLC0415

    s = KafkaSettings.from_url(url)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **s.client_options())
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # aiokafka: no public refresh
        found = consumer.partitions_for_topic(s.name(topic)) or ()
        tps = [TopicPartition(s.name(topic), p) for p in found]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, dict[str, bytes]]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(
                    (r.value, {k: v for k, v in r.headers if v is not None}) for r in records
                )
        return out
    finally:
        await consumer.stop()
