"""The embedded transport: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

Zero set-up and durable; several processes on one machine share the file (WAL mode). Consumers
poll with a short adaptive interval (there is no cross-process notification in SQLite), hold
leases that a heartbeat extends while they live, and lose them when they die - which is how a
``kill -9``-ed worker's task is redelivered. URL options: :mod:`brokers.sqlite.settings`; tables
and lease rules: :mod:`brokers.sqlite.schema`; polling and heartbeats:
:mod:`brokers.sqlite.subscription`.

All database work of one transport runs on one thread, in the order it was asked for; the
operations that queue up meanwhile are committed together (group commit:
:mod:`brokers.sqlite.committer`), and with ``synchronous=full`` a second thread fsyncs the log
for them while the next ones run (:mod:`brokers.sqlite.flusher`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import Callable, Collection
from functools import partial
from typing import Self, TypeVar

import brokers.sqlite.admin as admin_tx
from brokers import names
from brokers.contract import DeadLetter, Delivery, GroupStats, Subscription
from brokers.delegates import FleetDelegate
from brokers.sqlite.committer import GroupCommitExecutor
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.fleet import SqliteFleet
from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.subscription import AnySubscription, SqliteSubscription
from brokers.sqlite.watch import ChangeWatch
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import TransportClosed

__all__ = ["SqliteSettings", "SqliteTransport"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_TASKS = names.SQLITE_TASKS


class SqliteTransport(FleetDelegate):
    """:class:`brokers.contract.Transport` on one SQLite database file.

    Opening creates the file and the default results channel; closing gives back every
    delivery still leased by this transport's subscriptions.
    """

    def __init__(self, settings: SqliteSettings) -> None:
        self._settings = settings
        self._db: SqliteQueue | None = None
        self._executor: GroupCommitExecutor | None = None
        self._watch: ChangeWatch | None = None
        self._subs: dict[str, AnySubscription] = {}
        self._fleet = SqliteFleet(self)

    @classmethod
    def from_url(cls, url: str) -> SqliteTransport:
        return cls(SqliteSettings.from_url(url))

    @property
    def settings(self) -> SqliteSettings:
        return self._settings

    @property
    def url(self) -> str:
        return f"sqlite:///{self._settings.path}"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._executor = GroupCommitExecutor()
        s = self._settings
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(
            self._executor,
            partial(
                SqliteQueue,
                s.path,
                busy_timeout=s.busy_timeout,
                synchronous=s.synchronous,
                defer_sync=True,
            ),
        )
        if s.watch > 0:
            self._watch = await loop.run_in_executor(
                self._executor, partial(ChangeWatch, s.path, s.watch)
            )
        await self.call(lambda db: db.declare(names.SQLITE_REPLIES, names.DEFAULT_RESULTS))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back every delivery still leased by this transport's consumers, then close."""
        if self._db is None or self._executor is None:
            return
        for sub in list(self._subs.values()):
            await self._give_back(sub)
        self._subs.clear()
        db, executor = self._open()
        await asyncio.get_running_loop().run_in_executor(executor, db.close)  # alone, last
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._db = None
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _give_back(self, sub: AnySubscription) -> None:
        """Stop ``sub`` and release every lease it holds at once."""
        await sub.stop()
        owner = sub.id
        await self.call(lambda db: db.release(owner), durable=False)
        await self.call(lambda db: db.unregister(owner), durable=False)

    # -- the database thread (what a subscription needs: brokers.sqlite.subscription) -------

    async def call(self, op: Callable[[SqliteQueue], T], *, durable: bool = True) -> T:
        """Run ``op`` on the database thread; raises :class:`TransportClosed` unless open.
        ``durable=False`` for what only settles or leases (no fsync of its own:
        :mod:`brokers.sqlite.committer`)."""
        db, executor = self._open()
        return await asyncio.wrap_future(executor.submit_op(op, db, durable=durable))

    def call_soon(self, op: Callable[[SqliteQueue], object]) -> None:
        """Queue a settle ``op`` on the database thread without waiting; nothing unless open."""
        if self._db is not None and self._executor is not None:
            self._executor.submit_op(op, self._db, durable=False)

    @property
    def watch(self) -> ChangeWatch | None:
        """What tells idle subscriptions that the database changed, unless ``watch=0``."""
        return self._watch

    def attach(self, subscription: AnySubscription) -> None:
        self._subs[subscription.id] = subscription

    def detach(self, subscription: AnySubscription) -> None:
        self._subs.pop(subscription.id, None)

    def _open(self) -> tuple[SqliteQueue, GroupCommitExecutor]:
        if self._db is None or self._executor is None:
            raise TransportClosed(f"transport {self.url} is not open")
        return self._db, self._executor

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        body, s = encode(task), self._settings
        routed = await self.call(
            lambda db: db.publish(
                names.SQLITE_TASKS, task.id, body, task.groups, max_length=s.max_length
            )
        )
        log.debug("published task %s to %s", task.id, ",".join(routed))

    async def reply(self, reply_to: str, result: Result) -> str:
        body = encode(result)
        return await self.call(
            lambda db: db.publish_to_channel(
                names.SQLITE_REPLIES, reply_to, names.DEFAULT_RESULTS, body
            )
        )

    async def open_reply_channel(self) -> str:
        channel = f"{names.PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"
        await self.call(lambda db: db.declare(names.SQLITE_REPLIES, channel))
        return channel

    async def close_reply_channel(self, channel: str) -> None:
        """Delete a private reply channel; raises ValueError for the default results channel."""
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")
        await self.call(lambda db: db.drop_subscription(names.SQLITE_REPLIES, channel))

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> Subscription[Delivery[Task]]:
        return SqliteSubscription(
            self, names.SQLITE_TASKS, group, decode_task, prefetch=prefetch, until_empty=until_empty
        )

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> Subscription[Delivery[Result]]:
        return SqliteSubscription(
            self,
            names.SQLITE_REPLIES,
            channel,
            decode_result,
            prefetch=prefetch,
            until_empty=until_empty,
        )

    # -- inspection ------------------------------------------------------------------------

    async def stats(self, group: str) -> GroupStats:
        """Consumers count as live if they beat within the last ``lease`` seconds."""
        alive_for = self._settings.lease
        counts = await self.call(lambda db: db.stats(names.SQLITE_TASKS, group, alive_for))
        return GroupStats(
            group=group,
            ready=counts["ready"],
            in_flight=counts["leased"],
            dead=counts["dead"],
            consumers=counts["consumers"],
        )

    async def groups(self) -> tuple[str, ...]:
        return await self.call(lambda db: db.subscriptions(names.SQLITE_TASKS))

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self._admin(lambda c: admin_tx.dead_letters(c, _TASKS, group, limit))

    # -- administration (brokers.sqlite.admin) -----------------------------------------------

    async def replay_dead_letters(self, group: str, task_ids: Collection[str] | None = None) -> int:
        return await self._admin(lambda c: admin_tx.replay(c, _TASKS, group, task_ids))

    async def purge_dead_letters(self, group: str) -> int:
        return await self._admin(lambda c: admin_tx.purge_dead(c, _TASKS, group))

    async def purge(self, group: str) -> int:
        return await self._admin(lambda c: admin_tx.purge_ready(c, _TASKS, group))

    async def _admin(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self.call(lambda db: db.transact(op))
