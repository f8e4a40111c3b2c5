"""Group commit of the SQLite transport (brokers/sqlite/committer.py): operations that queue up
together share one transaction, yet each stays atomic - one that fails is rolled back alone - and
none returns before the shared commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from brokers import names
from brokers.sqlite.committer import GroupCommitExecutor
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.transport import SqliteTransport
from pixfleet.errors import BrokerFull
from tests.helpers.tasks import make_task

TOPIC = names.SQLITE_TASKS
Op = Callable[[SqliteQueue], object]


def _publish(q: SqliteQueue, key: str) -> tuple[str, ...]:
    return q.publish(TOPIC, key, b"x", ("g",))


def ready(db: SqliteQueue, group: str) -> int:
    return db.stats(TOPIC, group, 30.0)["ready"]


def test_a_batch_commits_once_and_a_failing_op_is_rolled_back_alone(tmp_path: Path) -> None:
    db = SqliteQueue(tmp_path / "q.db", busy_timeout=1.0, synchronous="FULL")
    before = db._db.total_changes

    def publish(key: str) -> Op:
        return lambda q: q.publish(TOPIC, key, b"body", ("g",), max_length=2)

    outcomes = db.run_batch([publish("a"), publish("b"), publish("c"), publish("d")])
    assert [ok for ok, _ in outcomes] == [True, True, False, False]
    assert isinstance(outcomes[2][1], BrokerFull)  # the group was full: nothing stored for c, d
    assert ready(db, "g") == 2
    assert not db._db.in_transaction
    assert db._db.total_changes > before
    db.close()


def test_ops_queued_together_run_in_one_batch(tmp_path: Path) -> None:
    db = SqliteQueue(tmp_path / "q.db", busy_timeout=1.0, synchronous="FULL")
    batches: list[int] = []
    run_batch = db.run_batch

    def counting(ops: list[Op]) -> list[tuple[bool, Any]]:
        batches.append(len(ops))
        return run_batch(ops)

    db.run_batch = counting  # type: ignore[method-assign]  # reason: counts the batches
    executor = GroupCommitExecutor()
    gate = executor.submit(lambda: time.sleep(0.2))  # the thread is busy
    futures = [executor.submit(partial(_publish, key=k), db) for k in "abcdef"]
    gate.result()
    assert [f.result() for f in futures] == [("g",)] * 6
    executor.shutdown()
    assert batches == [6]  # six publishes, one transaction
    assert ready(db, "g") == 6
    db.close()


async def test_concurrent_publishes_are_each_durable_when_they_return(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    async with SqliteTransport(SqliteSettings.from_url(url)) as transport:
        await asyncio.gather(*(transport.publish(make_task("g")) for _ in range(50)))
    reopened = SqliteQueue(tmp_path / "t.db", busy_timeout=1.0, synchronous="FULL")
    assert ready(reopened, "g") == 50
    reopened.close()
