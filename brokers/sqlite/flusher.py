"""The fsync half of the SQLite transport's group commit, on its own thread.

With ``synchronous=full`` the transport commits with ``PRAGMA synchronous=NORMAL`` - each commit
is written to the write-ahead log, not fsynced - and a durable operation (a publish, a reply, a
declare: everything but what only moves a lease) returns only once :class:`Flusher` has
fsynced the log after its commit. One fsync covers every commit before it (the WAL is one file,
replayed in order up to the first torn frame), so many commits share it, and the database
thread and the write lock are never held while the disk flushes: the next transactions run
meanwhile. Durability is that of ``synchronous=FULL``: a durable operation returns after an
fsync that covers it. What changes is that other connections may read a commit a moment
before it is durable; a power loss then (not a crash of a process: the write is in the
kernel) can undo it together with everything committed after it, and its caller, who never
got an answer, publishes again.

Settles (claims, acks, nacks, releases, heartbeats) do not wait for the fsync: a power loss that
undoes one only delivers that message again - at-least-once, as for a lease that expired.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from brokers.sqlite.db import SqliteQueue

Waiting = tuple[SqliteQueue, Future[Any], Any]


class Flusher:
    """fsyncs the WAL of committed durable operations, then completes their futures."""

    def __init__(self, name: str) -> None:
        self._pending: list[Waiting] = []
        self._busy = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, waiting: list[Waiting]) -> None:
        """Complete each future with its value once the WAL is fsynced after this call."""
        with self._cond:
            self._pending.extend(waiting)
            self._cond.notify_all()

    def drain(self) -> None:
        """Return once everything added so far is fsynced (and its future completed)."""
        with self._cond:
            while self._pending or self._busy:
                self._cond.wait()

    def stop(self) -> None:
        self.drain()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._busy = True
            try:
                sync_and_complete(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def sync_and_complete(batch: list[Waiting]) -> None:
    """fsync the log of each queue in ``batch``, then complete the futures (or fail them)."""
    failed: dict[int, BaseException] = {}
    for db in {id(db): db for db, _, _ in batch}.values():
        try:
            db.sync()
        except BaseException as exc:  # noqa: BLE001 - handed to every caller that waited for it
            failed[id(db)] = exc
    for db, future, value in batch:
        if id(db) in failed:
            future.set_exception(failed[id(db)])
        else:
            future.set_result(value)
