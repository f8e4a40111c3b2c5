"""Settling RabbitMQ deliveries when things go wrong (issue 9.1, 9.3, 9.8), on the shared broker.

Failures are real ones: a channel closed by the broker under a delivery (a passive declare of a
missing queue makes RabbitMQ close it), a retry copy RabbitMQ returns as unroutable (its retry
queue was deleted behind the transport's back).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from brokers import names
from brokers.amqp import AmqpTransport
from brokers.amqp.delivery import AmqpDelivery
from brokers.amqp.subscription import AmqpSubscription
from pixfleet.envelope import Task
from tests.conftest import AMQP_OPTIONS
from tests.helpers.tasks import make_task, unique

WAIT = 15.0


@pytest.fixture
def url(amqp_session_url: str) -> str:
    return f"{amqp_session_url}?{AMQP_OPTIONS}"


async def next_of(sub: AsyncIterator[AmqpDelivery[Task]]) -> AmqpDelivery[Task]:
    async with asyncio.timeout(WAIT):
        return await anext(sub)


async def break_channel(sub: AmqpSubscription[Task]) -> None:
    """Make RabbitMQ close the subscription's channel (404 on a passive declare)."""
    channel = sub._channel
    assert channel is not None
    with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
    assert channel.is_closed


async def delete_queue(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url.split("?", maxsplit=1)[0])
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


async def ids_left(transport: AmqpTransport, group: str) -> list[str]:
    """Task ids still in the group (acked as they are read)."""
    out = []
    async with asyncio.timeout(WAIT):
        async for delivery in transport.consume(group, until_empty=True):
            out.append(delivery.message.id)
            await delivery.ack()
    return out


async def test_a_delayed_retry_whose_copy_is_refused_is_requeued_not_stuck(url: str) -> None:
    """9.1: the copy fails, so the original is held for the delay and requeued - never left
    unacked on a live channel (where it would not come back while the worker lives)."""
    group = unique("settle")
    task = make_task(group)
    async with AmqpTransport.from_url(url) as transport:
        await transport.publish(task)
        sub = transport.consume(group, prefetch=1)
        assert isinstance(sub, AmqpSubscription)
        try:
            first = await next_of(sub)
            await first.nack(requeue=True, delay=1.0)  # declares (and caches) the retry queue
            second = await next_of(sub)
            assert second.attempt == 2
            await delete_queue(url, names.amqp_retry_queue(group, 1))

            started = time.monotonic()
            await second.nack(requeue=True, delay=1.0)  # the copy comes back unroutable
            third = await next_of(sub)
            held = time.monotonic() - started
        finally:
            await sub.aclose()
        assert (third.message.id, third.attempt) == (task.id, 3)
        assert 0.9 <= held < 5.0
        await third.ack()
        assert await ids_left(transport, group) == []


async def test_an_ack_on_a_channel_closed_under_it_gets_the_task_back(url: str) -> None:
    group = unique("settle")
    task = make_task(group)
    async with AmqpTransport.from_url(url) as transport:
        await transport.publish(task)
        sub = transport.consume(group, prefetch=1)
        assert isinstance(sub, AmqpSubscription)
        try:
            first = await next_of(sub)
            await break_channel(sub)
            await first.ack()  # too late: RabbitMQ took it back with the channel
            again = await next_of(sub)
            assert (again.message.id, again.attempt) == (task.id, 2)
            await again.ack()
        finally:
            await sub.aclose()
        assert await ids_left(transport, group) == []


async def test_closing_after_a_reconnect_waits_for_the_new_channels_deliveries(url: str) -> None:
    """9.3: deliveries of a dead channel settled after a re-subscribe must not make a closing
    subscription think its new deliveries are done (which would close the channel under them,
    and the task would run twice)."""
    group = unique("settle")
    tasks = {make_task(group).id for _ in range(2)}
    async with AmqpTransport.from_url(url) as transport:
        for task_id in sorted(tasks):
            await transport.publish(make_task(group).model_copy(update={"id": task_id}))
        sub = transport.consume(group, prefetch=10)
        assert isinstance(sub, AmqpSubscription)
        old = [await next_of(sub), await next_of(sub)]
        await break_channel(sub)
        running = await next_of(sub)  # redelivered on the new channel
        assert running.attempt == 2
        for delivery in old:  # their channel is gone: nothing to settle
            await delivery.ack()
        await sub.aclose()  # a graceful stop while `running` is in flight
        await running.ack()
        assert await ids_left(transport, group) == sorted(tasks - {running.message.id})


async def test_a_short_retry_does_not_wait_behind_a_long_one(url: str) -> None:
    """9.8: per-delay retry queues, so a 1 s retry is not stuck behind a 30 s one."""
    group = unique("settle")
    long_wait, short_wait = make_task(group), make_task(group)
    async with AmqpTransport.from_url(url) as transport:
        await transport.publish(long_wait)
        await transport.publish(short_wait)
        sub = transport.consume(group, prefetch=2)
        assert isinstance(sub, AmqpSubscription)
        try:
            first, second = await next_of(sub), await next_of(sub)
            by_id = {first.message.id: first, second.message.id: second}
            started = time.monotonic()
            await by_id[long_wait.id].nack(requeue=True, delay=30.0)
            await by_id[short_wait.id].nack(requeue=True, delay=1.0)
            back = await next_of(sub)
            assert back.message.id == short_wait.id
            assert 0.9 <= time.monotonic() - started < 5.0
            await back.ack()
        finally:
            await sub.aclose()
        stats = await transport.stats(group)
        assert (stats.ready, stats.dead) == (1, 0)  # the long one, still waiting
