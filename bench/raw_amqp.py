"""The raw RabbitMQ round trip: a hand-written aio-pika loop with pixfleet's guarantees.

Quorum queues for tasks and replies, persistent messages, publisher confirms on every publish
(awaited; the worker's replies are confirmed concurrently, one task per delivery), prefetch 256,
and the worker acks a task only after its reply is confirmed. No envelopes, records, blob store
or process pool: the ceiling of the client library and the broker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from bench.loop import RoundTrips, measure

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


async def _serve(url: str, queue_name: str) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=256)
    queue = await channel.declare_queue(queue_name, durable=True, arguments=QUORUM)
    running: set[asyncio.Task[None]] = set()

    async def handle(message: Any) -> None:
        reply = aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(reply, routing_key=message.reply_to)
        await message.ack()

    async with queue.iterator() as it:
        async for message in it:
            task = asyncio.create_task(handle(message))
            running.add(task)
            task.add_done_callback(running.discard)


def worker(url: str, queue_name: str) -> None:
    asyncio.run(_serve(url, queue_name))


class RawAmqpClient:
    def __init__(self, channel: Any, tasks: str, replies: Any) -> None:
        self.channel, self.tasks, self.reply_queue = channel, tasks, replies

    async def publish(self, n: int) -> None:
        message = aio_pika.Message(
            str(n).encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            reply_to=self.reply_queue.name,
        )
        await self.channel.default_exchange.publish(message, routing_key=self.tasks)

    async def replies(self) -> AsyncIterator[int]:
        async with self.reply_queue.iterator() as it:
            async for message in it:
                await message.ack()
                yield int(message.body)


async def raw_amqp_round_trips(url: str, tasks: int, singles: int) -> RoundTrips:
    suffix = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=256)
    task_queue = await channel.declare_queue(f"bench-raw-{suffix}", durable=True, arguments=QUORUM)
    reply_queue = await channel.declare_queue(
        f"bench-raw-r-{suffix}", durable=True, arguments=QUORUM
    )
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=(url, task_queue.name))
    proc.start()
    try:
        client = RawAmqpClient(channel, task_queue.name, reply_queue)
        return await measure(client, tasks=tasks, window=256, singles=singles)
    finally:
        proc.kill()
        proc.join()
        await task_queue.delete(if_unused=False, if_empty=False)
        await reply_queue.delete(if_unused=False, if_empty=False)
        await connection.close()
