"""An idle SQLite consumer wakes on another connection's commit (``PRAGMA data_version``,
brokers/sqlite/watch.py) instead of sleeping up to ``poll``; ``watch=0`` turns that off; a
claim that finds nothing takes no write lock (every commit wakes every idle consumer)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import aclosing
from pathlib import Path

import pytest

from brokers import names, open_transport
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.settings import SqliteSettings
from pixfleet.errors import BrokerUnavailable, InvalidURL
from tests.helpers.tasks import make_task, unique


async def _publish_after_idle(url: str, idle: float) -> float:
    """Seconds from a publish on another connection to the delivery of a consumer idle ``idle``."""
    group = unique()
    async with (
        open_transport(url) as consumer,
        open_transport(url) as producer,
        aclosing(consumer.consume(group, prefetch=1)) as it,
    ):
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(idle)  # the consumer backs off towards `poll`
        started = time.perf_counter()
        await producer.publish(make_task(group))
        delivery = await asyncio.wait_for(pending, 10)
        took = time.perf_counter() - started
        await delivery.ack()
    return took


async def test_an_idle_consumer_wakes_on_a_commit_not_after_poll(tmp_path: Path) -> None:
    took = await _publish_after_idle(f"sqlite:///{tmp_path / 'b.db'}?poll=5", 1.5)
    assert took < 0.5  # without the watch the consumer sleeps 1.3-2.6 s here


async def test_without_the_watch_a_consumer_claims_every_poll(tmp_path: Path) -> None:
    took = await _publish_after_idle(f"sqlite:///{tmp_path / 'b.db'}?poll=0.05&watch=0", 0.3)
    assert took < 2.0


def test_the_watch_option() -> None:
    assert SqliteSettings.from_url("sqlite:///x.db").watch == 0.001
    assert SqliteSettings.from_url("sqlite:///x.db?watch=0").watch == 0.0
    with pytest.raises(InvalidURL):
        SqliteSettings.from_url("sqlite:///x.db?watch=-1")


def test_a_claim_that_finds_nothing_takes_no_write_lock(tmp_path: Path) -> None:
    """Every commit wakes every idle consumer: those with nothing to claim only read."""
    path = tmp_path / "b.db"
    queue = SqliteQueue(path, busy_timeout=0.2, synchronous="FULL")
    queue.publish(names.SQLITE_TASKS, "k", b"x", ("busy",))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing for longer than busy_timeout
    try:
        claimed = queue.claim(names.SQLITE_TASKS, "idle", "me", limit=8, lease=30, delivery_limit=5)
        assert claimed == []  # no BrokerUnavailable: it never asked for the lock
        with pytest.raises(BrokerUnavailable):  # a group with a task does need the lock
            queue.claim(names.SQLITE_TASKS, "busy", "me", limit=8, lease=30, delivery_limit=5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (
        len(queue.claim(names.SQLITE_TASKS, "busy", "me", limit=8, lease=30, delivery_limit=5)) == 1
    )
    queue.close()
