"""The raw Kafka round trip: a hand-written aiokafka loop with safe commits.

One-partition task and reply topics; every produce waits for ``acks=all``; the worker fetches
up to 256 records, produces their replies (concurrently), waits for every reply's ack, and only
then commits the offset after the batch - so a crash never commits an unanswered task. The
client commits the reply offsets the same way. Fetches wait at most 10 ms for data.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.loop import RoundTrips, measure

FETCH_WAIT_MS = 10


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )


async def _batches(
    consumer: AIOKafkaConsumer,
) -> AsyncIterator[tuple[TopicPartition, list[bytes], int]]:
    while True:
        got = await consumer.getmany(timeout_ms=FETCH_WAIT_MS * 10, max_records=256)
        for tp, records in got.items():
            yield tp, [r.value or b"" for r in records], records[-1].offset + 1


async def _serve(bootstrap: str, tasks: str, replies: str, group: str) -> None:
    consumer = _consumer(bootstrap, tasks, group)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    async for tp, values, next_offset in _batches(consumer):
        sent = [await producer.send(replies, value) for value in values]
        await asyncio.gather(*sent)  # every reply acknowledged by the broker ...
        await consumer.commit({tp: next_offset})  # ... before the tasks are committed


def worker(bootstrap: str, tasks: str, replies: str, group: str) -> None:
    asyncio.run(_serve(bootstrap, tasks, replies, group))


class RawKafkaClient:
    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, tasks: str) -> None:
        self.producer, self.consumer, self.tasks = producer, consumer, tasks

    async def publish(self, n: int) -> None:
        await self.producer.send_and_wait(self.tasks, str(n).encode())

    async def replies(self) -> AsyncIterator[int]:
        async for tp, values, next_offset in _batches(self.consumer):
            await self.consumer.commit({tp: next_offset})
            for value in values:
                yield int(value)


async def raw_kafka_round_trips(url: str, tasks: int, singles: int) -> RoundTrips:
    bootstrap = urlsplit(url).netloc
    suffix = uuid.uuid4().hex[:8]
    names = (f"bench-raw-{suffix}", f"bench-raw-r-{suffix}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in names])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = _consumer(bootstrap, names[1], f"bench-raw-client-{suffix}")
    await producer.start()
    await consumer.start()
    args = (bootstrap, *names, f"bench-raw-worker-{suffix}")
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=args)
    proc.start()
    try:
        return await measure(
            RawKafkaClient(producer, consumer, names[0]), tasks=tasks, window=256, singles=singles
        )
    finally:
        proc.kill()
        proc.join()
        await consumer.stop()
        await producer.stop()
