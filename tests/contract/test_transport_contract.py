"""The transport contract. Every transport URL in ``tests/conftest.py:BROKER_KINDS`` runs it.

Waits are deterministic: consumers drain with ``until_empty=True`` instead of sleeping, and every
blocking wait has a timeout so a broken transport fails rather than hangs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from brokers import open_transport
from brokers.contract import Delivery, TaskQueue
from pixfleet.envelope import Result, Task, decode_task
from pixfleet.errors import Unroutable
from tests.conftest import BrokerUnderTest
from tests.helpers.raw import inject_raw
from tests.helpers.tasks import make_result, make_task, unique

WAIT = 15.0


async def drain(transport: TaskQueue, group: str, *, ack: bool = True) -> list[Delivery[Task]]:
    """Consume everything ready in ``group`` (acking each unless told otherwise)."""
    got: list[Delivery[Task]] = []
    async with asyncio.timeout(WAIT):
        async with aclosing(transport.consume(group, prefetch=64, until_empty=True)) as it:
            async for delivery in it:
                got.append(delivery)
                if ack:
                    await delivery.ack()
    return got


async def next_of(iterator: AsyncIterator[Delivery[Task]]) -> Delivery[Task]:
    async with asyncio.timeout(WAIT):
        return await anext(iterator)


async def test_publish_then_consume_roundtrip(broker: BrokerUnderTest) -> None:
    group = unique()
    task = make_task(group, size=256)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
        got = await drain(transport, group)
        assert [d.message for d in got] == [task]
        assert got[0].attempt == 1
        stats = await transport.stats(group)
        assert (stats.ready, stats.dead) == (0, 0)
        assert stats.in_flight in (0, None)


async def test_fan_out_each_targeted_group_gets_every_task(broker: BrokerUnderTest) -> None:
    a, b, other = unique("a"), unique("b"), unique("c")
    tasks = [make_task(a, b) for _ in range(5)]
    async with open_transport(broker.url) as transport:
        await drain(transport, other)  # subscribed, but not targeted
        for task in tasks:
            await transport.publish(task)
        ids = {t.id for t in tasks}
        assert {d.message.id for d in await drain(transport, a)} == ids
        assert {d.message.id for d in await drain(transport, b)} == ids
        assert await drain(transport, other) == []


async def test_untargeted_task_reaches_every_subscribed_group(broker: BrokerUnderTest) -> None:
    a, b = unique("a"), unique("b")
    async with open_transport(broker.url) as transport:
        await drain(transport, a)
        await drain(transport, b)
        task = make_task()  # no groups: broadcast
        await transport.publish(task)
        assert [d.message.id for d in await drain(transport, a)] == [task.id]
        assert [d.message.id for d in await drain(transport, b)] == [task.id]
        assert {a, b} <= set(await transport.groups())


async def test_task_for_a_group_without_workers_waits_for_them(broker: BrokerUnderTest) -> None:
    late = unique("late")
    task = make_task(late)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
        assert (await transport.stats(late)).ready == 1
    async with open_transport(broker.url) as transport:
        assert [d.message for d in await drain(transport, late)] == [task]


async def test_untargeted_task_with_no_subscriber_is_refused(
    empty_broker: BrokerUnderTest,
) -> None:
    async with open_transport(empty_broker.url) as transport:
        with pytest.raises(Unroutable) as info:
            await transport.publish(make_task())
        assert info.value.code == "broker.unroutable"


async def _compete(url: str, group: str, seen: list[str]) -> None:
    async with open_transport(url) as transport:
        async with asyncio.timeout(WAIT):
            async with aclosing(transport.consume(group, prefetch=4, until_empty=True)) as it:
                async for delivery in it:
                    seen.append(delivery.message.id)
                    await asyncio.sleep(0.005)  # let the other consumer interleave
                    await delivery.ack()


async def test_competing_consumers_split_work_without_duplicates(broker: BrokerUnderTest) -> None:
    group = unique()
    tasks = [make_task(group) for _ in range(40)]
    async with open_transport(broker.url) as transport:
        for task in tasks:
            await transport.publish(task)
    first: list[str] = []
    second: list[str] = []
    await asyncio.gather(_compete(broker.url, group, first), _compete(broker.url, group, second))
    assert len(first) + len(second) == 40
    assert set(first).isdisjoint(second)
    assert set(first) | set(second) == {t.id for t in tasks}
    assert first and second, "both consumers should have received work"


async def test_consumer_killed_while_holding_a_task_gets_it_redelivered(
    broker: BrokerUnderTest,
) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.contract.crash_consumer", broker.url, group],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == task.id
    async with open_transport(broker.url) as transport:
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            redelivered = await next_of(it)
            assert redelivered.message.id == task.id
            assert redelivered.attempt == (2 if broker.counts_crash_redeliveries else 1)
            await redelivered.ack()
        assert (await transport.stats(group)).ready == 0


async def test_nack_with_requeue_redelivers_with_next_attempt(broker: BrokerUnderTest) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            first = await next_of(it)
            await first.nack(requeue=True, reason="transient")
            second = await next_of(it)
            assert second.message.id == task.id
            assert second.attempt == 2
            await second.ack()


async def test_nack_with_delay_holds_the_task_back(broker: BrokerUnderTest) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        await transport.publish(make_task(group))
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            first = await next_of(it)
            started = time.monotonic()
            await first.nack(requeue=True, delay=1.0, reason="busy")
            second = await next_of(it)
            assert time.monotonic() - started >= 0.9
            await second.ack()


async def test_nack_without_requeue_dead_letters_with_reason(broker: BrokerUnderTest) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
        [delivery] = await drain(transport, group, ack=False)
        await delivery.nack(requeue=False, reason="image.invalid: truncated")
        stats = await transport.stats(group)
        assert (stats.ready, stats.dead) == (0, 1)
        assert stats.in_flight in (0, None)
        [dead] = await transport.dead_letters(group)
        assert decode_task(dead.body).id == task.id
        assert "image.invalid" in dead.reason
        assert await drain(transport, group) == []


async def test_delivery_limit_dead_letters_a_poison_task(broker: BrokerUnderTest) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        await transport.publish(make_task(group))
        attempts = []
        for _ in range(broker.delivery_limit + 2):
            got = await drain(transport, group, ack=False)
            if not got:
                break
            attempts.append(got[0].attempt)
            await got[0].nack(requeue=True, reason="always fails")
        assert attempts == list(range(1, broker.delivery_limit + 1))
        [dead] = await transport.dead_letters(group)
        assert "limit" in dead.reason


async def test_invalid_bodies_are_dead_lettered_not_delivered(broker: BrokerUnderTest) -> None:
    group = unique()
    good = make_task(group)
    await inject_raw(broker.url, group, b"{not json")
    await inject_raw(broker.url, group, b'{"v": 99, "id": "x"}')
    await inject_raw(broker.url, group, b'{"v": 1, "id": "missing-fields"}')
    async with open_transport(broker.url) as transport:
        await transport.publish(good)
        assert [d.message.id for d in await drain(transport, group)] == [good.id]
        reasons = sorted(d.reason for d in await transport.dead_letters(group))
        assert len(reasons) == 3
        assert any("envelope.version" in r for r in reasons)
        assert sum("envelope.invalid" in r for r in reasons) == 2


async def test_prefetch_bounds_unsettled_deliveries(broker: BrokerUnderTest) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        for _ in range(5):
            await transport.publish(make_task(group))
        async with aclosing(transport.consume(group, prefetch=2)) as it:
            first = await next_of(it)
            await next_of(it)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(it)
            await first.ack()
            third = await next_of(it)
            assert third.attempt == 1


async def test_close_gives_unsettled_deliveries_back_at_once(broker: BrokerUnderTest) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(broker.url) as transport:
        await transport.publish(task)
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            held = await next_of(it)
            assert held.message.id == task.id
    # No lease wait: a clean close released it.
    async with open_transport(broker.url) as transport:
        stats = await transport.stats(group)
        assert stats.ready == 1
        assert stats.in_flight in (0, None)  # None: the broker cannot tell (AMQP)
        [again] = await drain(transport, group)
        assert again.message.id == task.id


async def test_a_delivery_is_held_until_its_transport_lets_it_go(broker: BrokerUnderTest) -> None:
    # A worker gives up a pending reply once its delivery is no longer held (the redelivery
    # answers from the record): held must turn False when the broker takes the delivery back.
    group = unique()
    async with open_transport(broker.url) as transport:
        await transport.publish(make_task(group))
        delivery = await next_of(transport.consume(group, prefetch=1))
        assert delivery.held
    assert not delivery.held  # closed: the broker has it back (it is delivered again)


async def test_backlog_counts_follow_the_lifecycle(broker: BrokerUnderTest) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        for _ in range(3):
            await transport.publish(make_task(group))
        assert (await transport.stats(group)).ready == 3
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            delivery = await next_of(it)
            stats = await transport.stats(group)
            # Where the broker reports lag, the delivered task still counts until committed.
            assert (stats.ready, stats.consumers) == (3 if broker.lag_includes_in_flight else 2, 1)
            assert stats.in_flight in (1, None)  # None: the broker cannot tell (AMQP)
        # The subscription stopped consuming (a draining worker), yet its delivery can be acked.
        await delivery.ack()
        stats = await transport.stats(group)
        assert stats.ready == 2
        assert stats.consumers == 0 or broker.stale_member_counts
        assert stats.in_flight in (0, None)


async def test_replies_reach_the_named_channel_by_correlation_id(broker: BrokerUnderTest) -> None:
    group = unique()
    tasks = [make_task(group) for _ in range(3)]
    async with open_transport(broker.url) as transport:
        channel = await transport.open_reply_channel()
        for task in tasks:
            assert await transport.reply(channel, make_result(task, group)) == channel
        got: dict[str, Result] = {}
        async with asyncio.timeout(WAIT):
            async with aclosing(transport.replies(channel, until_empty=True)) as it:
                async for delivery in it:
                    got[delivery.message.correlation_id] = delivery.message
                    await delivery.ack()
        assert set(got) == {t.correlation_id for t in tasks}
        assert all(r.group == group and r.status == "ok" for r in got.values())
        await transport.close_reply_channel(channel)


async def test_reply_to_a_closed_channel_lands_in_default_results(broker: BrokerUnderTest) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(broker.url) as transport:
        channel = await transport.open_reply_channel()
        await transport.close_reply_channel(channel)
        used = await transport.reply(channel, make_result(task, group, ok=False))
        assert used == "results"
        found = []
        async with asyncio.timeout(WAIT):
            async with aclosing(transport.replies("results", until_empty=True)) as it:
                async for delivery in it:
                    found.append(delivery.message)
                    await delivery.ack()
        mine = [(r.task_id, r.status) for r in found if r.task_id == task.id]
        assert mine == [(task.id, "error")]
