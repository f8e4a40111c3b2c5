"""The SQLite transport's database thread, with group commit.

Every database operation of one transport runs on one thread, in the order it was asked for
(:class:`GroupCommitExecutor` is a one-thread :class:`~concurrent.futures.Executor`). Operations
on the :class:`~brokers.sqlite.db.SqliteQueue` that queue up while the thread is busy - the acks,
replies and publishes of many concurrent tasks - run together in ONE write transaction
(:meth:`SqliteQueue.run_batch`): each in its own savepoint, so one that raises is rolled back
alone and raises alone, and every caller's future completes only after the shared ``COMMIT``.
That keeps each operation atomic and durable when it returns, with one fsync per batch instead
of one per operation. An idle transport runs each operation alone, exactly as before.

With ``synchronous=full`` the fsync is not done by the commit but by a second thread,
shared by all commits before it (:mod:`brokers.sqlite.flusher`): operations submitted with
``durable=False`` (claims, acks, nacks, releases, heartbeats: what only moves a lease) return
right after their commit, durable ones once the fsync after it is done.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.flusher import Flusher, Waiting, sync_and_complete

P = ParamSpec("P")
T = TypeVar("T")

#: Most operations committed together.
MAX_BATCH = 256


@dataclass
class _Item:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    durable: bool = True
    future: Future[Any] = field(default_factory=Future)

    @property
    def db(self) -> SqliteQueue | None:
        """The queue this item operates on, if it is one operation on a SqliteQueue."""
        if len(self.args) == 1 and isinstance(self.args[0], SqliteQueue):
            return self.args[0]
        return None


class GroupCommitExecutor(Executor):
    """One thread; consecutive ``submit(op, db)`` calls on the same queue are committed together."""

    def __init__(self, name: str = "pixfleet-sqlite") -> None:
        self._items: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._flusher = Flusher(f"{name}-fsync")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if kwargs:
            raise TypeError("GroupCommitExecutor.submit takes positional arguments only")
        return self._put(_Item(fn, args))

    def submit_op(
        self, fn: Callable[[SqliteQueue], T], db: SqliteQueue, *, durable: bool = True
    ) -> Future[T]:
        """Run ``fn(db)`` in a batch; ``durable=False``: it only settles (see the module)."""
        return self._put(_Item(fn, (db,), durable))

    def _put(self, item: _Item) -> Future[Any]:
        with self._ready:
            if self._stopping:
                raise RuntimeError("cannot submit after shutdown")
            self._items.append(item)
            self._ready.notify()
        return item.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if wait:
            self._thread.join()
            self._flusher.stop()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._stopping:
                    self._ready.wait()
                if not self._items:
                    return
                batch = self._take()
            self._execute(batch)

    def _take(self) -> list[_Item]:
        """The next item, and the operations on the same queue right behind it."""
        batch = [self._items.popleft()]
        db = batch[0].db
        while db is not None and self._items and len(batch) < MAX_BATCH:
            if self._items[0].db is not db:
                break
            batch.append(self._items.popleft())
        return batch

    def _execute(self, batch: list[_Item]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        db = live[0].db if live else None
        if db is None:  # not an operation on a queue (closing it): everything fsynced first
            self._flusher.drain()
            for item in live:
                _settle(item.future, lambda item=item: item.fn(*item.args))  # type: ignore[misc]  # reason: default arg binds the loop variable
            return
        if len(live) == 1:
            outcomes = [_outcome(live[0].fn, db)]
        else:
            outcomes = db.run_batch([item.fn for item in live])
        later: list[Waiting] = []
        for item, (ok, value) in zip(live, outcomes, strict=True):
            if not ok:
                item.future.set_exception(value)
            elif item.durable and db.sync_later:
                later.append((db, item.future, value))
            else:
                item.future.set_result(value)
        if later and self._items:  # more to run: fsync on the flusher's thread meanwhile
            self._flusher.add(later)
        elif later:  # nothing waits for this thread: fsync here, without a thread switch
            sync_and_complete(later)


def _outcome(fn: Callable[[SqliteQueue], Any], db: SqliteQueue) -> tuple[bool, Any]:
    try:
        return True, fn(db)
    except Exception as exc:  # noqa: BLE001 - handed to the caller through its future
        return False, exc


def _settle(future: Future[Any], call: Callable[[], Any]) -> None:
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through its future
        future.set_exception(exc)
    else:
        future.set_result(result)
