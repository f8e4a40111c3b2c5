"""The fleet on SQLite (:class:`brokers.contract.Fleet`): three tables beside the queues.

* ``fleet_workers``  - one row per worker id: its latest status and ``last_seen`` from the
  database clock (:func:`~brokers.sqlite.transactions.db_now`), deleted when it leaves or once
  older than ``ROSTER_WINDOW``;
* ``fleet_control``  - control requests, an increasing id each; a worker's subscription reads
  the rows after the newest one it saw when it opened (kept :data:`CONTROL_KEEP` seconds);
* ``fleet_replies``  - control replies by inbox address, read by their requester and deleted
  when it closes its inbox (else after :data:`REPLY_KEEP` seconds).

The ``consumers`` table (:mod:`brokers.sqlite.registry`) stays what it is: one row per
subscription, for releasing leases; a worker's status is a different thing with a different
life (it outlives reconnects and names groups, counts and state). Subscriptions poll like task
subscriptions do (no cross-process notification in SQLite).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, Protocol, Self, TypeVar

from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.transactions import db_now
from pixfleet.errors import EnvelopeError
from pixfleet.fleet import (
    ROSTER_WINDOW,
    ControlReply,
    ControlRequest,
    WorkerStatus,
    decode_reply,
    decode_request,
    decode_status,
    encode_fleet,
    new_inbox,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", ControlRequest, ControlReply)

#: Seconds a control request and a control reply stay in their tables.
CONTROL_KEEP = 60.0
REPLY_KEEP = 300.0
#: Shortest pause between two polls of a control subscription or an inbox.
MIN_POLL = 0.1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fleet_workers ("
    " id TEXT PRIMARY KEY, body BLOB NOT NULL, last_seen REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_control ("
    " id INTEGER PRIMARY KEY, body BLOB NOT NULL, created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fleet_replies (id INTEGER PRIMARY KEY, inbox TEXT NOT NULL,"
    " body BLOB NOT NULL, created_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fleet_replies_inbox ON fleet_replies (inbox, id)",
)


class Database(Protocol):
    """What the fleet needs from its transport."""

    @property
    def settings(self) -> SqliteSettings: ...

    async def call(self, op: Callable[[SqliteQueue], T]) -> T: ...


class SqliteFleet:
    """The fleet role of one :class:`~brokers.sqlite.transport.SqliteTransport`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ready = False

    async def tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one transaction on the database thread (fleet tables created first)."""
        if not self._ready:
            await self._db.call(lambda q: q.transact(_create))
            self._ready = True
        return await self._db.call(lambda q: q.transact(fn))

    @property
    def poll(self) -> float:
        return max(self._db.settings.poll, MIN_POLL)

    async def heartbeat(self, status: WorkerStatus) -> None:
        body = encode_fleet(status)

        def op(db: sqlite3.Connection) -> None:
            now = db_now(db)
            db.execute(
                "INSERT INTO fleet_workers (id, body, last_seen) VALUES (?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET body = excluded.body, last_seen = excluded.last_seen",
                (status.id, body, now),
            )
            db.execute("DELETE FROM fleet_workers WHERE last_seen < ?", (now - ROSTER_WINDOW,))

        await self.tx(op)

    async def leave(self, worker_id: str) -> None:
        await self.tx(lambda db: db.execute("DELETE FROM fleet_workers WHERE id = ?", (worker_id,)))

    async def roster(self) -> list[WorkerStatus]:
        def op(db: sqlite3.Connection) -> list[tuple[bytes, float]]:
            oldest = db_now(db) - ROSTER_WINDOW
            sql = "SELECT body, last_seen FROM fleet_workers WHERE last_seen >= ? ORDER BY id"
            return [(bytes(b), float(t)) for b, t in db.execute(sql, (oldest,))]

        out = []
        for body, seen in await self.tx(op):
            try:
                status = decode_status(body)
            except EnvelopeError as exc:
                log.warning("dropped a worker status that is not valid: %s", exc)
                continue
            out.append(status.model_copy(update={"last_seen": datetime.fromtimestamp(seen, UTC)}))
        return out

    async def open_commands(self, worker_id: str, groups: tuple[str, ...]) -> SqliteCommands:
        (start,) = await self.tx(
            lambda db: db.execute("SELECT COALESCE(MAX(id), 0) FROM fleet_control").fetchone()
        )
        return SqliteCommands(self, worker_id, groups, int(start))

    async def send_control(self, request: ControlRequest) -> None:
        body = encode_fleet(request)

        def op(db: sqlite3.Connection) -> None:
            now = db_now(db)
            db.execute("DELETE FROM fleet_control WHERE created_at < ?", (now - CONTROL_KEEP,))
            db.execute("INSERT INTO fleet_control (body, created_at) VALUES (?, ?)", (body, now))

        await self.tx(op)

    async def reply_control(self, reply: ControlReply, reply_to: str) -> None:
        body = encode_fleet(reply)

        def op(db: sqlite3.Connection) -> None:
            now = db_now(db)
            db.execute("DELETE FROM fleet_replies WHERE created_at < ?", (now - REPLY_KEEP,))
            db.execute(
                "INSERT INTO fleet_replies (inbox, body, created_at) VALUES (?, ?, ?)",
                (reply_to, body, now),
            )

        await self.tx(op)

    async def open_control_inbox(self) -> SqliteInbox:
        return SqliteInbox(self, new_inbox())


def _create(db: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        db.execute(statement)


class _Polled(Generic[M]):
    """Messages other processes append to a table, polled in order: :meth:`_read` fills the
    buffer; an empty read waits ``poll`` seconds; iteration ends once closed."""

    def __init__(self, fleet: SqliteFleet) -> None:
        self._fleet = fleet
        self._last = 0  # the highest row id read
        self._buffer: list[M] = []
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> M:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._read()
            if not self._buffer:
                await asyncio.sleep(self._fleet.poll)
        return self._buffer.pop(0)

    async def _read(self) -> None:
        raise NotImplementedError


class SqliteCommands(_Polled[ControlRequest]):
    """The control requests for one worker, polled from ``fleet_control`` after ``start``."""

    def __init__(
        self, fleet: SqliteFleet, worker_id: str, groups: tuple[str, ...], start: int
    ) -> None:
        super().__init__(fleet)
        self._worker = worker_id
        self._groups = groups
        self._last = start

    async def _read(self) -> None:
        last = self._last
        rows = await self._fleet.tx(
            lambda db: db.execute(
                "SELECT id, body FROM fleet_control WHERE id > ? ORDER BY id LIMIT 100", (last,)
            ).fetchall()
        )
        for row_id, body in rows:
            self._last = max(self._last, int(row_id))
            try:
                request = decode_request(bytes(body))
            except EnvelopeError as exc:
                log.warning("dropped a control request that is not valid: %s", exc)
                continue
            if request.target.reaches(self._worker, self._groups):
                self._buffer.append(request)

    async def aclose(self) -> None:
        self._closed = True
        self._buffer.clear()


class SqliteInbox(_Polled[ControlReply]):
    """One requester's replies, polled from ``fleet_replies``; closing deletes them."""

    def __init__(self, fleet: SqliteFleet, address: str) -> None:
        super().__init__(fleet)
        self.address = address

    async def _read(self) -> None:
        last, address = self._last, self.address
        rows = await self._fleet.tx(
            lambda db: db.execute(
                "SELECT id, body FROM fleet_replies WHERE inbox = ? AND id > ? ORDER BY id",
                (address, last),
            ).fetchall()
        )
        for row_id, body in rows:
            self._last = max(self._last, int(row_id))
            try:
                self._buffer.append(decode_reply(bytes(body)))
            except EnvelopeError as exc:
                log.warning("dropped a control reply that is not valid: %s", exc)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        address = self.address
        await self._fleet.tx(
            lambda db: db.execute("DELETE FROM fleet_replies WHERE inbox = ?", (address,))
        )
