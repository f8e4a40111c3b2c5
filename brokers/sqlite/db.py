"""Synchronous storage layer of the SQLite transport: one connection to one WAL-mode file.

Each operation is one ``BEGIN IMMEDIATE`` transaction (:meth:`SqliteQueue.transact`) running a
function of :mod:`brokers.sqlite.transactions`; sqlite3 errors come out as broker errors. Used
from a single thread per :class:`SqliteQueue`: the async transport runs it in a one-thread
executor.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import brokers.sqlite.registry as consumers_tx
import brokers.sqlite.transactions as tx
import brokers.sqlite.views as views_tx
from brokers.sqlite.failures import open_error, translate
from brokers.sqlite.schema import create_schema
from brokers.sqlite.transactions import Claimed
from pixfleet.errors import BrokerUnavailable
from pixfleet.private import touch_private
from pixfleet.storage import broker_storage_error

T = TypeVar("T")

_fdatasync = getattr(os, "fdatasync", os.fsync)  # what SQLite itself uses where it exists


def _open_wal(path: Path) -> int | None:
    """A descriptor of the database's write-ahead log (there once WAL mode wrote), or None."""
    try:
        return os.open(f"{path}-wal", os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # commits stay fsynced by SQLite itself


class SqliteQueue:
    """Queue operations on one database file. Not thread-safe: one thread per instance.

    Opening creates the file, its directory and missing tables; raises
    :class:`~pixfleet.errors.BrokerUnavailable` if that is impossible. A new file is created
    0600 (and missing directories 0700) whatever the umask; SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode.

    ``defer_sync`` with ``synchronous=FULL``: commits are not fsynced, the caller :meth:`sync`-s
    the log for those that must be durable (:mod:`brokers.sqlite.flusher`).
    """

    def __init__(
        self, path: Path, *, busy_timeout: float, synchronous: str, defer_sync: bool = False
    ) -> None:
        self.path = path
        try:
            touch_private(path)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise open_error(path, str(exc)) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise broker_storage_error(path, exc.errno != errno.EROFS, str(exc)) from exc
            raise BrokerUnavailable(f"cannot create {path.parent}: {exc.strerror}") from exc
        self._batching = False
        self.transact(create_schema)
        self._wal_fd = _open_wal(path) if defer_sync and synchronous == "FULL" else None
        if self._wal_fd is not None:
            self._db.execute("PRAGMA synchronous=NORMAL")  # the flusher fsyncs instead

    @property
    def sync_later(self) -> bool:
        """Commits are not fsynced: durable operations wait for :meth:`sync`."""
        return self._wal_fd is not None

    def close(self) -> None:
        self._db.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    def sync(self) -> None:
        """fsync the write-ahead log (``sync_later`` only; see :mod:`brokers.sqlite.flusher`)."""
        if self._wal_fd is None:
            return
        try:
            _fdatasync(self._wal_fd)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot fsync {self.path}-wal: {exc.strerror}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._batching:  # inside run_batch: a savepoint of the batch's transaction
            self._db.execute("SAVEPOINT op")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK TO op")
                self._db.execute("RELEASE op")
                raise
            self._db.execute("RELEASE op")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def run_batch(self, ops: list[Callable[[SqliteQueue], object]]) -> list[tuple[bool, Any]]:
        """Run ``ops`` in ONE write transaction (group commit), each in its own savepoint:
        ``(True, result)`` per op, or ``(False, exception)`` for one that raised (rolled back
        alone). If the transaction cannot start or commit, every op fails with that error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, translate(self.path, exc))] * len(ops)
        outcomes: list[tuple[bool, Any]] = []
        self._batching = True
        try:
            for op in ops:
                try:
                    outcomes.append((True, op(self)))
                except Exception as exc:  # noqa: BLE001 - handed to that op's caller
                    if not self._db.in_transaction:  # SQLite rolled the whole batch back
                        return [(False, exc)] * len(ops)
                    outcomes.append((False, exc))
        finally:
            self._batching = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            return [(False, translate(self.path, exc))] * len(ops)
        return outcomes

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` outside any write transaction (reads only: it takes no write lock)."""
        try:
            return fn(self._db)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction: committed if it returns, rolled back if it raises.

        A write lock held by others for longer than ``busy_timeout`` (or a full, failing disk)
        raises :class:`~pixfleet.errors.BrokerUnavailable`; other sqlite errors raise
        :class:`~pixfleet.errors.BrokerError` (:func:`translate`)."""
        try:
            with self._tx() as db:
                return fn(db)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    # -- subscriptions (semantics: brokers.sqlite.transactions) ------------------------------

    def declare(self, topic: str, name: str) -> None:
        self.transact(lambda db: tx.declare(db, topic, name))

    def subscriptions(self, topic: str) -> tuple[str, ...]:
        return self.transact(lambda db: tx.subscriptions(db, topic))

    def drop_subscription(self, topic: str, name: str) -> None:
        self.transact(lambda db: tx.drop_subscription(db, topic, name))

    # -- publish ---------------------------------------------------------------------------

    def publish(
        self, topic: str, key: str, body: bytes, groups: tuple[str, ...], *, max_length: int = 0
    ) -> tuple[str, ...]:
        """Store ``body`` once and a delivery for each target (all subscriptions when empty);
        with ``max_length`` refuse (:class:`~pixfleet.errors.BrokerFull`) if a target is full."""
        return self.transact(
            lambda db: tx.publish(db, topic, key, body, groups, max_length=max_length)
        )

    def publish_to_channel(self, topic: str, channel: str, fallback: str, body: bytes) -> str:
        """Publish to an existing channel, else to ``fallback``. Returns the channel used."""
        return self.transact(lambda db: tx.publish_to_channel(db, topic, channel, fallback, body))

    # -- consume ---------------------------------------------------------------------------

    def claim(
        self, topic: str, group: str, owner: str, *, limit: int, lease: float, delivery_limit: int
    ) -> list[Claimed]:
        """Lease up to ``limit`` claimable deliveries (ready and due, or with an expired lease).
        Alone, it first looks by a read (no write lock): an idle consumer woken by someone
        else's commit takes the lock only if there is something for it."""
        if not self._batching and not self.read(lambda db: tx.claimable(db, topic, group)):
            return []
        return self.transact(
            lambda db: tx.claim(
                db, topic, group, owner, limit=limit, lease=lease, delivery_limit=delivery_limit
            )
        )

    def has_backlog(self, topic: str, group: str) -> bool:
        return self.transact(lambda db: tx.has_backlog(db, topic, group))

    def ack(self, delivery_id: int, owner: str) -> bool:
        """Delete a leased delivery. False if this owner no longer holds the lease."""
        return self.transact(lambda db: tx.ack(db, delivery_id, owner))

    def nack(
        self, delivery_id: int, owner: str, *, requeue: bool, delay: float, reason: str
    ) -> bool:
        return self.transact(
            lambda db: tx.nack(db, delivery_id, owner, requeue=requeue, delay=delay, reason=reason)
        )

    def dead_letter_now(self, delivery_id: int, reason: str) -> None:
        self.transact(lambda db: tx.dead_letter(db, delivery_id, reason))

    def release(self, owner: str, delivery_ids: list[int] | None = None) -> int:
        """Give leased deliveries back at once (they stay counted as delivered)."""
        return self.transact(lambda db: tx.release(db, owner, delivery_ids))

    # -- consumers (brokers.sqlite.registry) -------------------------------------------------

    def heartbeat(
        self,
        consumer: str,
        topic: str,
        group: str,
        *,
        host: str,
        pid: int,
        lease: float,
        give_back: list[int] | None = None,
    ) -> None:
        """Record that ``consumer`` lives and extend every lease it holds, after releasing
        those of ``give_back``."""
        self.transact(
            lambda db: consumers_tx.heartbeat(
                db,
                consumer,
                topic,
                group,
                host=host,
                pid=pid,
                lease=lease,
                give_back=give_back or [],
            )
        )

    def unregister(self, consumer: str) -> None:
        self.transact(lambda db: consumers_tx.unregister(db, consumer))

    def reap(self, host: str, *, stale_after: float) -> list[str]:
        """Release the leases of dead consumers (see :func:`brokers.sqlite.registry.reap`)."""
        return self.transact(lambda db: consumers_tx.reap(db, host, stale_after=stale_after))

    # -- inspection ------------------------------------------------------------------------

    def stats(self, topic: str, group: str, alive_for: float) -> dict[str, int]:
        return self.transact(lambda db: views_tx.stats(db, topic, group, alive_for))

    def dead_letters(self, topic: str, group: str, limit: int) -> list[tuple[bytes, str]]:
        return self.transact(lambda db: views_tx.dead_letters(db, topic, group, limit))
