"""The SQLite transport's pipelined fsync (brokers/sqlite/flusher.py): with ``synchronous=full``
commits are written without fsync, a durable operation (publish, reply) returns only after an
fsync of the write-ahead log that follows its commit, a settle (claim, ack, ...) returns without
waiting for one, and an fsync that fails fails the operations that waited for it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import brokers.sqlite.db as db_module
from brokers import names
from brokers.sqlite.committer import GroupCommitExecutor
from brokers.sqlite.db import SqliteQueue
from pixfleet.errors import BrokerUnavailable

TOPIC = names.SQLITE_TASKS


def _queue(tmp_path: Path) -> SqliteQueue:
    db = SqliteQueue(tmp_path / "q.db", busy_timeout=1.0, synchronous="FULL", defer_sync=True)
    db.declare(TOPIC, "g")
    return db


def test_commits_are_not_fsynced_by_sqlite_and_sync_fsyncs_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _queue(tmp_path)
    assert db.sync_later
    assert db._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL: the flusher syncs
    synced: list[int] = []
    monkeypatch.setattr(db_module, "_fdatasync", lambda fd: synced.append(os.fstat(fd).st_ino))
    db.sync()
    assert synced == [os.stat(f"{tmp_path / 'q.db'}-wal").st_ino]  # the log, not the database
    db.close()
    plain = SqliteQueue(tmp_path / "p.db", busy_timeout=1.0, synchronous="FULL")
    assert not plain.sync_later  # used directly, a queue commits fsynced as before
    assert plain._db.execute("PRAGMA synchronous").fetchone() == (2,)
    plain.close()


def test_a_durable_op_returns_after_the_fsync_and_the_next_ones_run_meanwhile(
    tmp_path: Path,
) -> None:
    db = _queue(tmp_path)
    released, syncing, running = threading.Event(), threading.Event(), threading.Event()
    sync = db.sync

    def slow_sync() -> None:
        syncing.set()
        assert released.wait(5)
        sync()

    def publish(q: SqliteQueue) -> tuple[str, ...]:
        running.set()
        time.sleep(0.1)  # the claim below queues up meanwhile
        return q.publish(TOPIC, "k", b"x", ("g",))

    db.sync = slow_sync  # type: ignore[method-assign]  # reason: holds the fsync
    executor = GroupCommitExecutor()
    published = executor.submit_op(publish, db)
    assert running.wait(5)
    claimed = executor.submit_op(
        lambda q: q.claim(TOPIC, "g", "me", limit=1, lease=30, delivery_limit=5), db, durable=False
    )
    assert syncing.wait(5)
    assert len(claimed.result(timeout=5)) == 1  # committed and answered during the fsync
    assert not published.done()  # not before its fsync
    released.set()
    assert published.result(timeout=5) == ("g",)
    executor.shutdown()
    db.close()


def test_a_lone_durable_op_is_fsynced_on_the_database_thread(tmp_path: Path) -> None:
    db = _queue(tmp_path)
    threads: list[str] = []
    sync = db.sync

    def recording() -> None:
        threads.append(threading.current_thread().name)
        sync()

    db.sync = recording  # type: ignore[method-assign]  # reason: records where it runs
    executor = GroupCommitExecutor(name="db-thread")
    executor.submit_op(lambda q: q.publish(TOPIC, "k", b"x", ("g",)), db).result(timeout=5)
    executor.submit_op(lambda q: q.ack(1, "nobody"), db, durable=False).result(timeout=5)
    executor.shutdown()
    assert threads == ["db-thread"]  # no thread switch when nothing else waits; acks: no fsync
    db.close()


def test_an_fsync_that_fails_fails_the_durable_ops_that_waited(tmp_path: Path) -> None:
    db = _queue(tmp_path)

    def failing() -> None:
        raise BrokerUnavailable("injected: fsync failed")

    db.sync = failing  # type: ignore[method-assign]  # reason: a disk that fails its fsync
    executor = GroupCommitExecutor()
    published = executor.submit_op(lambda q: q.publish(TOPIC, "k", b"x", ("g",)), db)
    with pytest.raises(BrokerUnavailable, match="fsync"):
        published.result(timeout=5)
    executor.shutdown()
    db.close()
