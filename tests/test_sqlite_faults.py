"""The SQLite transport under faults (issues 9 and 15), on real database files and processes.

* a settle that fails gives the delivery back (9.1);
* a write lock held longer than ``busy_timeout`` never ends an idle subscription (9.2);
* a process whose wall clock is five minutes ahead neither steals a lease nor releases a delayed
  retry early, and a delay it asks for is not stretched by its clock (9.9);
* a consumer killed with SIGKILL holding a task: the task comes again within seconds, not after
  the 30 s lease (9.10);
* hostile bodies on task and reply channels are dead-lettered once each (15.1).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from brokers import names, open_transport
from brokers.contract import Delivery, Subscription
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.registry import reap
from brokers.sqlite.subscription import SqliteSubscription
from pixfleet.envelope import MAX_BODY_BYTES, Task
from pixfleet.errors import BrokerUnavailable
from tests.helpers.raw import inject_raw, inject_raw_reply
from tests.helpers.tasks import make_result, make_task, unique

WAIT = 10.0


async def next_of(it: AsyncIterator[Delivery[Task]], timeout: float = WAIT) -> Delivery[Task]:
    async with asyncio.timeout(timeout):
        return await anext(it)


def fail(monkeypatch: pytest.MonkeyPatch, method: str, times: int) -> None:
    """Make ``SqliteQueue.<method>`` raise ``broker.unavailable`` the next ``times`` calls."""
    original: Callable[..., Any] = getattr(SqliteQueue, method)
    left = [times]

    def failing(self: SqliteQueue, *args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise BrokerUnavailable(f"injected: {method} failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SqliteQueue, method, failing)


# -- 9.1: settle only after it succeeded -----------------------------------------------------

SETTLE_FAULTS = {
    # what fails (and how often); the worker's fallback nack follows each failure
    "ack": {"ack": 1},
    "nack": {"nack": 1},
    "ack-and-release": {"ack": 1, "release": 1},
    "ack-release-and-fallback": {"ack": 1, "release": 2, "nack": 1},  # only a heartbeat left
}


@pytest.mark.parametrize("fault", list(SETTLE_FAULTS))
async def test_a_settle_that_fails_gives_the_delivery_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(f"sqlite:///{tmp_path / 'b.db'}?lease=1&poll=0.05") as transport:
        await transport.publish(task)
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            first = await next_of(it)
            for method, times in SETTLE_FAULTS[fault].items():
                fail(monkeypatch, method, times)
            with pytest.raises(BrokerUnavailable):
                if fault == "nack":
                    await first.nack(requeue=True, reason="transient")
                else:
                    await first.ack()
            with pytest.raises(BrokerUnavailable) if fault.endswith("fallback") else nullcontext():
                await first.nack(requeue=True, reason="fallback")  # what the worker does next
            again = await next_of(it, timeout=5.0)  # the lease is renewed every 0.33 s
            assert (again.message.id, again.attempt) == (task.id, 2)
            await again.ack()
        stats = await transport.stats(group)
        assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


# -- 9.2: never exit on transient unavailability ----------------------------------------------


async def test_an_idle_subscription_outlives_a_write_lock_longer_than_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    group = unique()
    task = make_task(group)
    async with open_transport(f"sqlite:///{path}?busy_timeout=0.2&poll=0.05") as transport:
        await transport.publish(task)
        _lease_to_a_ghost(path, group, seconds=0.8)  # claimable once the lock below is held
        sub = transport.consume(group, prefetch=1)
        assert isinstance(sub, SqliteSubscription)
        async with aclosing(sub) as it:
            waiter = asyncio.ensure_future(anext(it))
            await asyncio.sleep(0.3)  # subscribed, polling: nothing claimable yet
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                await asyncio.sleep(2.0)  # ten times busy_timeout: several claims failed
                assert not waiter.done(), waiter
                assert state_of(sub) == "reconnecting"
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            async with asyncio.timeout(WAIT):
                got = await waiter
            assert got.message.id == task.id
            assert state_of(sub) == "consuming"
            await got.ack()


def _lease_to_a_ghost(path: Path, group: str, *, seconds: float) -> None:
    """Lease the group's deliveries to a consumer that never existed, for ``seconds`` more: a
    claim that finds nothing claimable only reads, so the lock must meet one that needs it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "UPDATE deliveries SET state = 'leased', lease_owner = 'ghost', lease_expires ="
        " (julianday('now') - 2440587.5) * 86400.0 + ? WHERE grp = ?",
        (seconds, group),
    )
    db.close()


def state_of(sub: SqliteSubscription[Any]) -> str:
    return sub.state  # a function: mypy would keep the first assert's narrowing of the property


# -- 9.9: one clock ---------------------------------------------------------------------------


async def test_a_wall_clock_five_minutes_ahead_steals_no_lease_and_releases_no_retry_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = unique()
    real_time = time.time
    async with open_transport(f"sqlite:///{tmp_path / 'b.db'}?poll=0.05") as transport:
        await transport.publish(make_task(group))
        await transport.publish(make_task(group))
        async with aclosing(transport.consume(group, prefetch=2)) as honest:
            held = await next_of(honest)  # leased for 30 s
            delayed = await next_of(honest)
            await delayed.nack(requeue=True, delay=60.0)
            monkeypatch.setattr(time, "time", lambda: real_time() + 300.0)
            async with aclosing(transport.consume(group, prefetch=2)) as skewed:
                with pytest.raises(TimeoutError):
                    await next_of(skewed, timeout=1.5)
            # The skewed process asks for a short delay: its clock must not stretch it.
            await held.nack(requeue=True, delay=0.3)
            monkeypatch.undo()
            started = time.monotonic()
            again = await next_of(honest, timeout=5.0)
            assert again.message.id == held.message.id
            assert 0.2 <= time.monotonic() - started < 3.0
            await again.ack()
        assert (await transport.stats(group)).ready == 1  # the 60 s retry, still waiting


# -- 9.10: a killed consumer's leases come back within seconds ------------------------------


async def test_a_consumer_killed_holding_a_task_gives_it_up_within_seconds(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}?poll=0.05"  # the default 30 s lease
    group = unique()
    task = make_task(group)
    async with open_transport(url) as transport:
        await transport.publish(task)
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.contract.crash_consumer", url, group],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    assert crashed.stdout.strip() == task.id
    started = time.monotonic()
    async with open_transport(url) as transport, aclosing(transport.consume(group)) as it:
        again = await next_of(it, timeout=5.0)
        recovered = time.monotonic() - started
        assert (again.message.id, again.attempt) == (task.id, 2)
        await again.ack()
    assert recovered < 3.0, f"took {recovered:.2f}s"


def test_reap_releases_dead_and_silent_consumers_only(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "b.db", busy_timeout=1.0, synchronous="NORMAL")
    me, elsewhere = socket.gethostname(), "another-container"
    rows = {
        "alive-here": (me, os.getpid(), 0.0),
        "dead-here": (me, _dead_pid(), 0.0),
        "fresh-elsewhere": (elsewhere, os.getpid(), 0.0),
        "silent-elsewhere": (elsewhere, os.getpid(), 120.0),
    }
    try:
        for consumer, (host, pid, age) in rows.items():
            queue.heartbeat(consumer, "tasks", "g", host=host, pid=pid, lease=30.0)
            queue.transact(partial(_age, consumer=consumer, seconds=age))
        dead = queue.transact(lambda db: reap(db, me, stale_after=30.0))
        assert sorted(dead) == ["dead-here", "silent-elsewhere"]
    finally:
        queue.close()


def _age(db: sqlite3.Connection, *, consumer: str, seconds: float) -> None:
    db.execute("UPDATE consumers SET last_seen = last_seen - ? WHERE id = ?", (seconds, consumer))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 15.1: nothing on the wire stops a consumer ---------------------------------------------

HOSTILE = [
    b"[" * 200_000,  # deeply nested JSON
    b'{"a":' * 40_000,
    b"\xff\xfe\xfa not UTF-8",
    b'{"v": 1, "id": "\xc3\x28"}',  # invalid UTF-8 inside a string
    b"x" * (MAX_BODY_BYTES + 1),  # over the size limit
    b"",
    b"null",
    b"[]",
    b'"just a string"',
    b"1e999999",
    b'{"v": 1e999}',
    b'{"v": "1"}',
    b'{"v": -1}',
    b'{"v": 1, "id": "\\ud800"}',  # a lone surrogate
    b'{"v": 1}\x00\x00',
    b'{"v": 1, "id": "x", "groups": [' + b'"a",' * 10_000 + b'"a"]}',
]


async def test_hostile_task_bodies_are_dead_lettered_once_and_consuming_goes_on(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}?poll=0.05"
    group = unique()
    for body in HOSTILE:
        await inject_raw(url, group, body)
    good = make_task(group)
    async with open_transport(url) as transport:
        await transport.publish(good)
        got = await _drain(transport.consume(group, prefetch=4, until_empty=True))
        assert got == [good.id]
        dead = await transport.dead_letters(group, limit=1000)
    assert sorted(d.body for d in dead) == sorted(HOSTILE)
    assert all(d.reason.startswith("error[envelope.") for d in dead), [d.reason for d in dead]


async def test_hostile_result_bodies_are_dead_lettered_once_and_replies_go_on(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}?poll=0.05"
    group = unique()
    async with open_transport(url) as transport:
        channel = await transport.open_reply_channel()
        for body in HOSTILE:
            await inject_raw_reply(url, channel, body)
        task = make_task(group, reply_to=channel)
        await transport.reply(channel, make_result(task, group))
        got = await _drain(transport.replies(channel, prefetch=4, until_empty=True))
        assert got == [task.id]
    queue = SqliteQueue(tmp_path / "b.db", busy_timeout=1.0, synchronous="NORMAL")
    try:
        dead = queue.dead_letters(names.SQLITE_REPLIES, channel, 1000)
    finally:
        queue.close()
    assert sorted(body for body, _ in dead) == sorted(HOSTILE)
    assert all(reason.startswith("error[envelope.") for _, reason in dead)


async def _drain(sub: Subscription[Any]) -> list[str]:
    """Ids (task id or result task id) of everything delivered, each acked."""
    seen = []
    async with asyncio.timeout(WAIT), aclosing(sub) as it:
        async for delivery in it:
            message = delivery.message
            seen.append(message.id if isinstance(message, Task) else message.task_id)
            await delivery.ack()
    return seen
