"""The admin role of the transport contract (:class:`brokers.contract.Admin`) and the richer
dead-letter view, on every transport URL of ``tests/conftest.py:BROKER_KINDS``."""

from __future__ import annotations

import asyncio
import importlib
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from brokers import open_transport
from brokers.contract import Transport
from pixfleet.envelope import Task
from pixfleet.errors import BrokerError, PublishFailed
from tests.conftest import BrokerUnderTest, kafka_under_test
from tests.contract.test_transport_contract import WAIT, drain
from tests.helpers.raw import inject_raw
from tests.helpers.tasks import make_task, unique


async def _kill(transport: Transport, group: str, reason: str) -> None:
    """Dead-letter every ready task of ``group`` with ``reason``."""
    for delivery in await drain(transport, group, ack=False):
        await delivery.nack(requeue=False, reason=reason)


async def test_replay_republishes_chosen_dead_tasks_to_their_group_only(
    broker: BrokerUnderTest,
) -> None:
    group, other = unique("a"), unique("b")
    first, second = make_task(group, other), make_task(group)
    async with open_transport(broker.url) as transport:
        for task in (first, second):
            await transport.publish(task)
        await inject_raw(broker.url, group, b"{not json")  # dead-lettered by the transport
        assert [d.message.id for d in await drain(transport, other)] == [first.id]
        before = datetime.now(UTC) - timedelta(seconds=5)
        await _kill(transport, group, "error[image.invalid]: truncated")
        dead = {d.task_id: d for d in await transport.dead_letters(group)}
        assert set(dead) >= {first.id, second.id}
        assert len(dead) == 3  # the bad body too, with no task id (or the broker's key)
        view = dead[first.id]
        assert view.reason == view.last_error == "error[image.invalid]: truncated"
        assert view.attempts in (1, None)  # None: the broker does not keep the count
        assert view.dead_at is not None and view.dead_at >= before

        assert await transport.replay_dead_letters(group, [first.id]) == 1
        left = await transport.dead_letters(group)
        assert second.id in {d.task_id for d in left} and first.id not in {d.task_id for d in left}
        assert await transport.replay_dead_letters(group) == 1  # every task; not the bad body
        got = await drain(transport, group)
        assert sorted((d.message.id, d.attempt) for d in got) == sorted(
            [(first.id, 1), (second.id, 1)]
        )
        assert got[0].message == {t.id: t for t in (first, second)}[got[0].message.id]
        assert await drain(transport, other) == []  # replayed to its group only

        assert (await transport.stats(group)).dead == 1  # (before a peek: AMQP counts
        [bad] = await transport.dead_letters(group)  # peeked messages back a moment later)
        assert bad.task_id not in (first.id, second.id)
        assert await transport.purge_dead_letters(group) == 1
        assert await transport.dead_letters(group) == []
        assert (await transport.stats(group)).dead == 0


async def test_delivery_limit_dead_letter_names_attempts_and_last_error(
    broker: BrokerUnderTest,
) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        await transport.publish(make_task(group))
        async with asyncio.timeout(WAIT):
            async with aclosing(transport.consume(group, prefetch=1, until_empty=True)) as it:
                async for delivery in it:  # requeued until the limit dead-letters it
                    await delivery.nack(requeue=True, reason="error[blob.unavailable]: gone")
        [dead] = await transport.dead_letters(group)
        assert dead.attempts == broker.delivery_limit
        assert dead.last_error == "error[blob.unavailable]: gone"


async def test_purge_removes_the_waiting_tasks_of_one_group(broker: BrokerUnderTest) -> None:
    group, other = unique("p"), unique("q")
    tasks: list[Task] = [make_task(group, other) for _ in range(3)]
    async with open_transport(broker.url) as transport:
        for task in tasks:
            await transport.publish(task)
        assert await transport.purge(group) == 3
        assert await transport.purge(group) == 0
        assert (await transport.stats(group)).ready == 0
        assert await drain(transport, group) == []
        assert {d.message.id for d in await drain(transport, other)} == {t.id for t in tasks}


#: Where each transport re-publishes one dead task during a replay (SQLite has no such step:
#: its replay is one transaction, interrupted here while it picks the tasks).
REPUBLISH = {
    "sqlite": ("brokers.sqlite.admin", "replayable"),
    "amqp": ("brokers.amqp.admin", "AmqpAdmin._publish"),
    "kafka": ("brokers.kafka.admin", "KafkaAdmin._republish"),
}


async def test_a_replay_that_fails_half_way_loses_no_task(
    broker: BrokerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = unique("f")
    tasks = [make_task(group) for _ in range(2)]
    async with open_transport(broker.url) as transport:
        for task in tasks:
            await transport.publish(task)
        await _kill(transport, group, "error[image.invalid]: bad")
        module_name, attr = REPUBLISH[broker.kind]
        owner: object = importlib.import_module(module_name)
        if "." in attr:
            class_name, attr = attr.split(".")
            owner = getattr(owner, class_name)
        real = getattr(owner, attr)
        calls = 0

        def second_fails(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise PublishFailed("the broker did not confirm the replay")
            return real(*args)

        monkeypatch.setattr(owner, attr, second_fails)
        with pytest.raises(PublishFailed):
            await transport.replay_dead_letters(group)
        monkeypatch.undo()
        dead = {d.task_id for d in await transport.dead_letters(group)}
        ready = {d.message.id for d in await drain(transport, group)}
        assert dead | ready == {t.id for t in tasks}  # each still dead, or ready, or both
        assert calls == 2


async def test_kafka_refuses_to_purge_a_group_with_a_live_member(
    kafka_session_url: str,
) -> None:
    broker, group = kafka_under_test(kafka_session_url), unique("live")
    async with open_transport(broker.url) as transport:
        await transport.publish(make_task(group))
        await transport.publish(make_task(group))
        async with asyncio.timeout(WAIT), aclosing(transport.consume(group, prefetch=1)) as it:
            delivery = await anext(it)  # a member of the group holds one task
            with pytest.raises(BrokerError, match="live members"):
                await transport.purge(group)
            await delivery.ack()
