"""Nothing on the wire can stop a RabbitMQ consumer (issue 15.1, 15.2), on the shared broker.

Hostile bodies and headers are published raw (any AMQP client can do this): each is
dead-lettered once with its reason, and the same subscription goes on to deliver a good task.
Delivery-count headers are untrusted: a bad one counts as the worst case (the delivery limit),
never as a fresh start.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import pytest

from brokers import names
from brokers.amqp import AmqpTransport
from pixfleet.envelope import MAX_BODY_BYTES, decode_task, encode
from tests.conftest import AMQP_OPTIONS
from tests.helpers.tasks import make_result, make_task, unique

WAIT = 20.0
LIMIT = 3  # delivery_limit in AMQP_OPTIONS

HOSTILE_BODIES = {
    "nested": b"[" * 50_000 + b"]" * 50_000,
    "bad utf-8": b'{"v": 1, "id": "\xff\xfe"}',
    "oversize": b'{"v": 1, "pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}',
    "not json": b"\x00\x01garbage",
    "not an object": b"[1, 2, 3]",
    "unknown version": b'{"v": 99}',
    "schema violation": b'{"v": 1, "id": 5}',
}
HOSTILE_COUNTS: list[dict[str, Any]] = [
    {names.AMQP_HEADER_DELIVERIES: "abc"},
    {names.AMQP_HEADER_DELIVERIES: -5},
    {names.AMQP_HEADER_DELIVERIES: 10**12},
    {names.AMQP_HEADER_DELIVERIES: 1.5},
    {names.AMQP_HEADER_DELIVERIES: True},
    {"x-delivery-count": "zz"},
]


@pytest.fixture
def url(amqp_session_url: str) -> str:
    return f"{amqp_session_url}?{AMQP_OPTIONS}"


async def publish_raw(url: str, queue: str, body: bytes, headers: dict[str, Any]) -> None:
    connection = await aio_pika.connect(url.split("?", maxsplit=1)[0])
    async with connection:
        channel = await connection.channel()
        message = aio_pika.Message(body, headers=headers, delivery_mode=2)
        await channel.default_exchange.publish(message, routing_key=queue)


async def test_hostile_bodies_and_headers_are_dead_lettered_once_and_consuming_goes_on(
    url: str,
) -> None:
    group = unique("hostile")
    queue = names.amqp_group_queue(group)
    marked = [make_task(group) for _ in HOSTILE_COUNTS]
    good = make_task(group)
    async with AmqpTransport.from_url(url) as transport, asyncio.timeout(WAIT):
        sub = transport.consume(group, prefetch=16)
        waiting = asyncio.ensure_future(anext(sub))  # subscribes
        await asyncio.sleep(0.5)
        for body in HOSTILE_BODIES.values():
            await publish_raw(url, queue, body, {})
        for task, headers in zip(marked, HOSTILE_COUNTS, strict=True):
            await publish_raw(url, queue, encode(task), headers)
        await transport.publish(good)

        delivered = [await waiting] + [await anext(sub) for _ in range(len(marked))]
        attempts = {d.message.id: d.attempt for d in delivered}
        assert attempts == {**{t.id: LIMIT for t in marked}, good.id: 1}
        for delivery in delivered:
            if delivery.message.id == good.id:
                await delivery.ack()
            else:  # a retry at the worst case is a dead letter, not another round
                await delivery.nack(requeue=True, reason="transient")
        await sub.aclose()

        # Counts before the peek (a peek briefly takes dead letters out of the quorum queue's
        # count), and only once RabbitMQ's own dead-lettering at the delivery limit is done.
        while (stats := await transport.stats(group)).dead < len(HOSTILE_BODIES) + len(marked):
            await asyncio.sleep(0.1)
        dead = await transport.dead_letters(group)
    assert (stats.ready, stats.dead) == (0, len(HOSTILE_BODIES) + len(marked))
    refused = [d for d in dead if d.reason.startswith("error[envelope")]
    assert sorted(d.body for d in refused) == sorted(
        body[:MAX_BODY_BYTES] for body in HOSTILE_BODIES.values()
    )
    limited = [decode_task(d.body).id for d in dead if d not in refused]
    assert sorted(limited) == sorted(t.id for t in marked)
    assert all("delivery limit 3 reached" in d.reason for d in dead if d not in refused)


async def test_hostile_bodies_on_a_reply_channel_do_not_stop_replies(url: str) -> None:
    task = make_task("any")
    async with AmqpTransport.from_url(url) as transport, asyncio.timeout(WAIT):
        channel = await transport.open_reply_channel()
        queue = names.amqp_reply_queue(channel)
        for body in HOSTILE_BODIES.values():
            await publish_raw(url, queue, body, {"x-delivery-count": "zz"})
        await transport.reply(channel, make_result(task, "any"))
        got = [d async for d in transport.replies(channel, until_empty=True)]
        assert [d.message.task_id for d in got] == [task.id]
        await got[0].ack()
        await transport.close_reply_channel(channel)


def test_the_hostile_bodies_really_are_refused() -> None:
    for name, body in HOSTILE_BODIES.items():
        with pytest.raises(Exception) as caught:
            decode_task(body)
        assert type(caught.value).__name__.startswith("Envelope"), name
    assert json.dumps(HOSTILE_COUNTS[0])
