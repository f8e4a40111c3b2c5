"""RabbitMQ subscriptions are tracked by their transport only while they hold a channel, so a
long-lived process that opens and closes subscriptions does not leak them."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import aclosing

from brokers.amqp import AmqpTransport
from pixfleet.envelope import BlobRef, Task
from tests.helpers.tasks import unique

N = 5
WAIT = 15.0


def _task(group: str) -> Task:
    data = b"never read by this test"
    blob = BlobRef(
        uri="uploads/amqp-subscriptions",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_type="image/jpeg",
    )
    return Task.new(blob, groups=(group,))


async def test_closed_subscriptions_are_no_longer_tracked(amqp_session_url: str) -> None:
    group = unique("subs")
    async with asyncio.timeout(WAIT), AmqpTransport.from_url(amqp_session_url) as transport:
        for _ in range(N):  # closed before it ever consumed
            await transport.consume(group).aclose()
        for _ in range(N):  # ran dry and closed itself
            async with aclosing(transport.consume(group, until_empty=True)) as sub:
                assert [d async for d in sub] == []
        for _ in range(N):  # reply channels too
            await transport.replies("results").aclose()
        assert len(transport._subs) == 0


async def test_a_closed_subscription_is_tracked_until_its_deliveries_are_settled(
    amqp_session_url: str,
) -> None:
    group = unique("subs")
    async with asyncio.timeout(WAIT), AmqpTransport.from_url(amqp_session_url) as transport:
        await transport.publish(_task(group))
        sub = transport.consume(group)
        delivery = await anext(sub)
        await sub.aclose()
        assert len(transport._subs) == 1  # its channel stays open so the delivery can be acked
        await delivery.ack()
        assert len(transport._subs) == 0
        assert (await transport.stats(group)).ready == 0
