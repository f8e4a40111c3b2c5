"""RabbitMQ faults on a private node (never the shared broker): an outage, a restart, a disk
alarm (issue 9.2, 9.5, 9.7). Each test gets its own vhost on one node started for the module.

The outage lasts ``$PIXFLEET_TEST_OUTAGE`` seconds (default 20, well past ``reconnect_timeout``
here); the 75 s row of issue 9 belongs to the fault suite (tests/reliability), which can reuse
:func:`idle_subscription_through_an_outage` with ``outage=75``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from brokers import names
from brokers.amqp import AmqpTransport
from brokers.amqp.subscription import AmqpSubscription, SubscriptionState
from pixfleet.envelope import Task
from pixfleet.errors import BrokerBlocked
from tests.conftest import missing_broker
from tests.e2e.conftest import Fleet
from tests.harness.rabbitmq import PrivateRabbit, can_run_private_node, private_vhost
from tests.helpers import images
from tests.helpers.tasks import make_result, make_task, unique

pytestmark = pytest.mark.e2e

OUTAGE = float(os.environ.get("PIXFLEET_TEST_OUTAGE", "20"))
#: Short budgets, so that giving up after them would show within the test.
OPTIONS = "reconnect_timeout=5&op_timeout=5&connect_timeout=5"


@pytest.fixture(scope="module")
def node(amqp_session_url: str) -> Iterator[PrivateRabbit]:
    if not can_run_private_node():
        missing_broker("a local rabbitmq-server (run as root) for a private fault-test node")
    rabbit = PrivateRabbit()
    rabbit.start()
    try:
        yield rabbit
    finally:
        rabbit.stop()


@pytest.fixture
def url(node: PrivateRabbit) -> Iterator[str]:
    node.ensure_app()
    with private_vhost(node.url, node=node.name) as vhost_url:
        yield f"{vhost_url}?{OPTIONS}"
        node.ensure_app()  # before the vhost is deleted


def recorded(sub: AmqpSubscription[Task]) -> list[tuple[SubscriptionState, float]]:
    changes: list[tuple[SubscriptionState, float]] = []
    sub.state_listeners.append(lambda _, new: changes.append((new, time.monotonic())))
    return changes


async def until(predicate: object, what: str, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def idle_subscription_through_an_outage(
    node: PrivateRabbit, url: str, outage: float
) -> tuple[list[SubscriptionState], float]:
    """An idle subscription rides out ``outage`` seconds of a stopped broker and then gets a
    task published after it. Returns its state changes and the seconds from the broker's
    return to consuming again."""
    group = unique("outage")
    async with AmqpTransport.from_url(url) as transport:
        sub = transport.consume(group, prefetch=1)
        assert isinstance(sub, AmqpSubscription)
        changes = recorded(sub)
        waiting = asyncio.ensure_future(anext(sub))
        await until(lambda: sub.state == "consuming", "the first subscribe")
        await asyncio.to_thread(node.stop_app)
        await asyncio.sleep(outage)
        assert not waiting.done(), waiting  # still waiting: it did not give up
        assert changes[-1][0] == "reconnecting"
        await asyncio.to_thread(node.start_app)
        back = time.monotonic()
        await until(lambda: sub.state == "consuming", "re-subscribing", timeout=30)
        recovery = changes[-1][1] - back
        task = make_task(group)
        await transport.publish(task)
        async with asyncio.timeout(30):
            delivery = await waiting
        assert delivery.message.id == task.id
        await delivery.ack()
        await sub.aclose()
    return [state for state, _ in changes], recovery


async def test_an_idle_subscription_outlives_a_broker_outage(
    node: PrivateRabbit, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="brokers.amqp")
    states, recovery = await idle_subscription_through_an_outage(node, url, OUTAGE)

    assert states == ["consuming", "reconnecting", "consuming", "closed"]
    print(f"outage {OUTAGE:.0f}s: consuming again {recovery:.2f}s after the broker was back")
    assert recovery < 10.0  # the backoff is capped at 5 s (plus jitter below it)
    lines = [r.getMessage() for r in caplog.records if r.name == "brokers.amqp.subscription"]
    assert sum("lost" in line for line in lines) == 1, lines  # one line per state change
    assert sum("re-subscribed" in line for line in lines) == 1, lines


async def test_a_private_reply_queue_and_its_waiter_survive_a_broker_restart(
    node: PrivateRabbit, url: str
) -> None:
    before, after = make_task("g"), make_task("g")
    async with AmqpTransport.from_url(url) as transport:
        channel = await transport.open_reply_channel()
        await transport.reply(channel, make_result(before, "g"))
        replies = transport.replies(channel)  # what `uploader enqueue --wait` holds
        async with asyncio.timeout(30):
            first = await anext(replies)
            await asyncio.to_thread(node.stop_app)  # with `first` unacked: it comes back
            await asyncio.to_thread(node.start_app)
            await transport.reply(channel, make_result(after, "g"))
            got = [await anext(replies), await anext(replies)]
        assert first.message.task_id == before.id
        assert sorted(d.message.task_id for d in got) == sorted([before.id, after.id])
        for delivery in got:
            await delivery.ack()
        await replies.aclose()
        await transport.close_reply_channel(channel)


async def test_a_private_reply_queue_is_quorum_and_expires(url: str) -> None:
    """Quorum (a ``kill -9`` cannot lose its reader's acks: docs/rabbitmq.md), and ``x-expires``
    still deletes it once unused (``reply_ttl=1``; RabbitMQ takes ~5 s)."""
    async with AmqpTransport.from_url(f"{url}&reply_ttl=1") as transport:
        queue = names.amqp_reply_queue(await transport.open_reply_channel())
    connection = await aio_pika.connect(url.partition("?")[0])
    try:
        channel = await connection.channel()  # the same arguments: a classic queue refuses them
        arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-expires": 1000}
        await channel.declare_queue(queue, durable=True, arguments=arguments)
        async with asyncio.timeout(20):
            while await _exists(connection, queue):
                await asyncio.sleep(0.25)
    finally:
        await connection.close()


async def _exists(connection: aio_pika.abc.AbstractConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_a_disk_alarm_fails_publishes_fast_and_leaves_acks_flowing(
    node: PrivateRabbit, url: str, tmp_path: Path
) -> None:
    group = unique("alarm")
    async with AmqpTransport.from_url(url) as transport:
        for _ in range(2):
            await transport.publish(make_task(group))
        sub = transport.consume(group, prefetch=1)
        first = await anext(sub)
        await asyncio.to_thread(node.disk_alarm, True)
        try:
            started = time.monotonic()
            with pytest.raises(BrokerBlocked):
                await transport.publish(make_task(group))  # sent: stored once the alarm clears
            blocked_after = time.monotonic() - started
            with pytest.raises(BrokerBlocked):  # a retry while blocked sends nothing
                await transport.publish(make_task(group))
            async with asyncio.timeout(5):
                await first.ack()  # on the consuming connection: not blocked
                second = await anext(sub)  # prefetch 1: only after RabbitMQ took the ack
            # A retry copy cannot be published now: the delivery is held, then requeued.
            await second.nack(requeue=True, delay=1.0)
            async with asyncio.timeout(10):
                third = await anext(sub)
            assert (third.message.id, third.attempt) == (second.message.id, 2)
            await third.ack()
            closed_after = await _close_blocked(url, unique("alarm-close"))
            cli_after, cli_error = await asyncio.to_thread(uploader_during_alarm, url, tmp_path)
        finally:
            await asyncio.to_thread(node.disk_alarm, False)
        await sub.aclose()
        print(f"broker.blocked after {blocked_after:.2f}s (transport), {cli_after:.2f}s (CLI)")
        assert blocked_after < 5.0
        assert cli_error.startswith("error[broker.blocked]: "), cli_error
        assert cli_after < 8.0  # 5 s for the publish, the rest is the interpreter starting
        # A blocked connection is dropped, not closed by a handshake RabbitMQ would never read
        # (that waited out CLOSE_TIMEOUT, 2 s, before the uploader could exit).
        assert closed_after < 1.0, f"closing a blocked transport took {closed_after:.2f} s"
        await transport.publish(make_task(group))  # publishing works again
        # Its confirm comes after every earlier frame of the connection was read: the first
        # blocked publish and this one are stored; the publish and the nack's retry copy tried
        # during the alarm were never sent (each would be one more copy now).
        assert (await transport.stats(group)).ready == 2


async def _close_blocked(url: str, group: str) -> float:
    """Seconds to close a transport whose publish RabbitMQ blocked."""
    transport = await AmqpTransport.from_url(url).__aenter__()
    with pytest.raises(BrokerBlocked):
        await transport.publish(make_task(group))
    started = time.monotonic()
    await transport.close()
    return time.monotonic() - started


def uploader_during_alarm(url: str, tmp_path: Path) -> tuple[float, str]:
    """``uploader enqueue`` of one photo while the alarm is on: seconds and last stderr line."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(images.jpeg_bytes())
    home = tmp_path / "home"
    home.mkdir()
    started = time.monotonic()
    done = Fleet(home, url).uploader("enqueue", str(photo), timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout
    return elapsed, done.stderr.strip().splitlines()[-1]
