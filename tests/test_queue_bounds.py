"""Opt-in bounds on group queues (issue 15.6): a full queue refuses publishes with
``broker.full`` (never drops a task), and on RabbitMQ a task that waits past ``message_ttl`` is
dead-lettered with its reason. Kafka bounds its topics by retention instead (docs/kafka.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers import open_transport
from brokers.amqp.settings import AmqpSettings
from pixfleet.errors import BrokerFull, InvalidURL
from tests.conftest import AMQP_OPTIONS
from tests.helpers.tasks import make_task, unique


async def _fill_then_refuse(url: str, group: str, other: str) -> None:
    """Publish until refused: exactly 2 on SQLite; RabbitMQ's quorum queues check the bound
    once the queue is over it, so they take one more."""
    async with open_transport(url) as transport:
        accepted = 0
        with pytest.raises(BrokerFull) as caught:
            for _ in range(4):
                await transport.publish(make_task(group))
                accepted += 1
        assert accepted == (3 if url.startswith("amqp") else 2)
        assert caught.value.retryable
        assert "error[broker.full]" in caught.value.one_line()
        assert (await transport.stats(group)).ready == accepted  # nothing was dropped
        sub = transport.consume(group, prefetch=1)
        delivery = await asyncio.wait_for(anext(sub), 15)
        await delivery.ack()
        await sub.aclose()
        await transport.publish(make_task(group))  # room again
        await transport.publish(make_task(other))  # other groups are not affected
        assert (await transport.stats(group)).dead == 0


async def test_sqlite_max_length_refuses_publishes_to_a_full_group(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}?max_length=2&poll=0.05"
    await _fill_then_refuse(url, unique("full"), unique("free"))


async def test_sqlite_a_refused_fan_out_stores_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}?max_length=1"
    full, free = unique("full"), unique("free")
    async with open_transport(url) as transport:
        await transport.publish(make_task(full))
        with pytest.raises(BrokerFull):
            await transport.publish(make_task(free, full))
        assert (await transport.stats(free)).ready == 0


async def test_amqp_max_length_refuses_publishes_to_a_full_queue(amqp_session_url: str) -> None:
    url = f"{amqp_session_url}?{AMQP_OPTIONS}&max_length=2&overflow=reject-publish"
    await _fill_then_refuse(url, unique("full"), unique("free"))


async def test_amqp_message_ttl_dead_letters_expired_tasks(amqp_session_url: str) -> None:
    url = f"{amqp_session_url}?{AMQP_OPTIONS}&message_ttl=0.3"
    group = unique("ttl")
    task = make_task(group)
    async with open_transport(url) as transport:
        await transport.publish(task)
        async with asyncio.timeout(15):
            # counts first: a peek at the dead letters briefly takes them out of the count
            while (stats := await transport.stats(group)).dead < 1:
                await asyncio.sleep(0.2)
        dead = await transport.dead_letters(group)
    assert (stats.ready, stats.dead) == (0, 1)
    assert len(dead) == 1 and task.id.encode() in dead[0].body
    assert "expired" in dead[0].reason


def test_amqp_bounds_options() -> None:
    s = AmqpSettings.from_url("amqp://h/v?max_length=5&message_ttl=60")
    assert (s.max_length, s.message_ttl) == (5, 60.0)
    for bad in ("overflow=drop-head", "max_length=-1", "message_ttl=-2"):
        with pytest.raises(InvalidURL):
            AmqpSettings.from_url(f"amqp://h/v?{bad}")
