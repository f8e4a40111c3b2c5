"""Synchronous storage layer of the SQLite transport (one WAL-mode file, many processes).

Tables:

* ``messages``   - one row per published body (task or result);
* ``subs``       - subscriptions: (topic, name) for every task group and reply channel;
* ``deliveries`` - one row per (message, subscription): ``ready`` (maybe delayed by
  ``available_at``), ``leased`` (owned by a consumer until ``lease_expires``) or ``dead``.
  An acked delivery row is deleted; a message row goes with its last delivery;
* ``consumers``  - live consumers and their last heartbeat.

Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialise on the write lock
(``busy_timeout`` waits for it). A lease that expires makes its delivery claimable again, which is
how a crashed worker's task is redelivered. Each claim increments ``deliveries``; a claim that
finds a delivery already delivered ``max_deliveries`` times dead-letters it instead.

This module is used from a single thread per :class:`SqliteQueue`; the async transport runs it in
a one-thread executor.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from brokers.policy import delivery_limit_reason
from pixfleet.errors import BrokerError, BrokerUnavailable, Unroutable

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS subs (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (topic, name)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ready', 'leased', 'dead')),
    available_at REAL NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_ready ON deliveries (topic, grp, state, available_at);
CREATE INDEX IF NOT EXISTS deliveries_owner ON deliveries (lease_owner);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message_id);
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    last_seen REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    body: bytes
    deliveries: int


class SqliteQueue:
    """Queue operations on one database file. Not thread-safe: one thread per instance."""

    def __init__(self, path: Path, *, busy_timeout: float, synchronous: str) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise BrokerUnavailable(f"cannot open sqlite database {path}: {exc}") from exc
        except OSError as exc:
            raise BrokerUnavailable(f"cannot create {path.parent}: {exc.strerror}") from exc
        self._create_schema()

    def _create_schema(self) -> None:
        statements = [s.strip() for s in SCHEMA.split(";") if s.strip()]

        def create(db: sqlite3.Connection) -> None:
            for statement in statements:
                db.execute(statement)

        self.run(create)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction; translate sqlite errors into broker errors."""
        try:
            with self._tx() as db:
                return fn(db)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise BrokerUnavailable(
                    f"sqlite database {self.path} stayed locked: {exc}"
                ) from exc
            raise BrokerError(f"sqlite error on {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise BrokerError(f"sqlite error on {self.path}: {exc}") from exc

    # -- subscriptions ---------------------------------------------------------------------

    def declare(self, topic: str, name: str) -> None:
        self.run(lambda db: _declare(db, topic, name))

    def subscriptions(self, topic: str) -> tuple[str, ...]:
        rows = self.run(
            lambda db: db.execute(
                "SELECT name FROM subs WHERE topic = ? ORDER BY name", (topic,)
            ).fetchall()
        )
        return tuple(r[0] for r in rows)

    def drop_subscription(self, topic: str, name: str) -> None:
        def drop(db: sqlite3.Connection) -> None:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT message_id FROM deliveries WHERE topic = ? AND grp = ?", (topic, name)
                )
            ]
            db.execute("DELETE FROM deliveries WHERE topic = ? AND grp = ?", (topic, name))
            db.execute("DELETE FROM subs WHERE topic = ? AND name = ?", (topic, name))
            for message_id in ids:
                _collect(db, message_id)

        self.run(drop)

    # -- publish ---------------------------------------------------------------------------

    def publish(
        self, topic: str, key: str, body: bytes, groups: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Store ``body`` once and a delivery for each target (all subscriptions when empty)."""

        def insert(db: sqlite3.Connection) -> tuple[str, ...]:
            targets = groups or tuple(
                r[0] for r in db.execute("SELECT name FROM subs WHERE topic = ?", (topic,))
            )
            if not targets:
                raise Unroutable(
                    f"no group is subscribed to {topic!r}: name a --group or start a worker first"
                )
            now = time.time()
            cur = db.execute(
                "INSERT INTO messages (topic, key, body, created_at) VALUES (?, ?, ?, ?)",
                (topic, key, body, now),
            )
            message_id = cur.lastrowid
            for group in targets:
                _declare(db, topic, group)
                db.execute(
                    "INSERT INTO deliveries (message_id, topic, grp, state, available_at)"
                    " VALUES (?, ?, ?, 'ready', ?)",
                    (message_id, topic, group, now),
                )
            return tuple(targets)

        return self.run(insert)

    def publish_to_channel(self, topic: str, channel: str, fallback: str, body: bytes) -> str:
        """Publish to an existing channel, else to ``fallback``. Returns the channel used."""

        def insert(db: sqlite3.Connection) -> str:
            exists = db.execute(
                "SELECT 1 FROM subs WHERE topic = ? AND name = ?", (topic, channel)
            ).fetchone()
            target = channel if exists else fallback
            _declare(db, topic, target)
            now = time.time()
            cur = db.execute(
                "INSERT INTO messages (topic, key, body, created_at) VALUES (?, ?, ?, ?)",
                (topic, target, body, now),
            )
            db.execute(
                "INSERT INTO deliveries (message_id, topic, grp, state, available_at)"
                " VALUES (?, ?, ?, 'ready', ?)",
                (cur.lastrowid, topic, target, now),
            )
            return target

        return self.run(insert)

    # -- consume ---------------------------------------------------------------------------

    def claim(
        self, topic: str, group: str, owner: str, *, limit: int, lease: float, max_deliveries: int
    ) -> list[Claimed]:
        """Lease up to ``limit`` claimable deliveries (ready and due, or with an expired lease)."""

        def claim(db: sqlite3.Connection) -> list[Claimed]:
            now = time.time()
            rows = db.execute(
                "SELECT d.id, d.deliveries, m.body, d.reason FROM deliveries d"
                " JOIN messages m ON m.id = d.message_id"
                " WHERE d.topic = ? AND d.grp = ? AND ("
                "   (d.state = 'ready' AND d.available_at <= ?)"
                "   OR (d.state = 'leased' AND d.lease_expires <= ?))"
                " ORDER BY d.available_at, d.id LIMIT ?",
                (topic, group, now, now, limit),
            ).fetchall()
            claimed = []
            for delivery_id, count, body, reason in rows:
                if count >= max_deliveries:
                    _dead(db, delivery_id, delivery_limit_reason(max_deliveries, reason))
                    continue
                db.execute(
                    "UPDATE deliveries SET state = 'leased', lease_owner = ?, lease_expires = ?,"
                    " deliveries = deliveries + 1 WHERE id = ?",
                    (owner, now + lease, delivery_id),
                )
                claimed.append(Claimed(delivery_id, bytes(body), count + 1))
            return claimed

        return self.run(claim)

    def has_backlog(self, topic: str, group: str) -> bool:
        """Anything ready (due or delayed) or leased with an expired lease?"""
        row = self.run(
            lambda db: db.execute(
                "SELECT 1 FROM deliveries WHERE topic = ? AND grp = ? AND (state = 'ready'"
                " OR (state = 'leased' AND lease_expires <= ?)) LIMIT 1",
                (topic, group, time.time()),
            ).fetchone()
        )
        return row is not None

    def ack(self, delivery_id: int, owner: str) -> bool:
        """Delete a leased delivery. False if this owner no longer holds the lease."""

        def ack(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "DELETE FROM deliveries WHERE id = ? AND lease_owner = ? AND state = 'leased'"
                " RETURNING message_id",
                (delivery_id, owner),
            ).fetchone()
            if row is None:
                return False
            _collect(db, row[0])
            return True

        return self.run(ack)

    def nack(
        self, delivery_id: int, owner: str, *, requeue: bool, delay: float, reason: str
    ) -> bool:
        def nack(db: sqlite3.Connection) -> bool:
            held = db.execute(
                "SELECT 1 FROM deliveries WHERE id = ? AND lease_owner = ? AND state = 'leased'",
                (delivery_id, owner),
            ).fetchone()
            if held is None:
                return False
            if requeue:
                db.execute(
                    "UPDATE deliveries SET state = 'ready', lease_owner = NULL,"
                    " lease_expires = NULL, available_at = ?, reason = ? WHERE id = ?",
                    (time.time() + max(delay, 0.0), reason, delivery_id),
                )
            else:
                _dead(db, delivery_id, reason or "rejected by consumer")
            return True

        return self.run(nack)

    def dead_letter_now(self, delivery_id: int, reason: str) -> None:
        self.run(lambda db: _dead(db, delivery_id, reason))

    def release(self, owner: str, delivery_ids: list[int] | None = None) -> int:
        """Give leased deliveries back at once (they stay counted as delivered)."""

        def release(db: sqlite3.Connection) -> int:
            sql = (
                "UPDATE deliveries SET state = 'ready', lease_owner = NULL, lease_expires = NULL"
                " WHERE lease_owner = ? AND state = 'leased'"
            )
            if delivery_ids is None:
                return db.execute(sql, (owner,)).rowcount
            return sum(
                db.execute(sql + " AND id = ?", (owner, delivery_id)).rowcount
                for delivery_id in delivery_ids
            )

        return self.run(release)

    def heartbeat(
        self, consumer: str, topic: str, group: str, *, host: str, pid: int, lease: float
    ) -> None:
        """Record that ``consumer`` lives and extend every lease it holds."""

        def beat(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "INSERT INTO consumers (id, topic, grp, host, pid, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                (consumer, topic, group, host, pid, now),
            )
            db.execute(
                "UPDATE deliveries SET lease_expires = ?"
                " WHERE lease_owner = ? AND state = 'leased'",
                (now + lease, consumer),
            )

        self.run(beat)

    def unregister(self, consumer: str) -> None:
        self.run(lambda db: db.execute("DELETE FROM consumers WHERE id = ?", (consumer,)))

    # -- inspection ------------------------------------------------------------------------

    def stats(self, topic: str, group: str, alive_after: float) -> dict[str, int]:
        def stats(db: sqlite3.Connection) -> dict[str, int]:
            counts: dict[str, int] = {"ready": 0, "leased": 0, "dead": 0}
            for state, count in db.execute(
                "SELECT state, COUNT(*) FROM deliveries WHERE topic = ? AND grp = ? GROUP BY state",
                (topic, group),
            ):
                counts[state] = count
            (live,) = db.execute(
                "SELECT COUNT(*) FROM consumers WHERE topic = ? AND grp = ? AND last_seen > ?",
                (topic, group, alive_after),
            ).fetchone()
            counts["consumers"] = live
            return counts

        return self.run(stats)

    def dead_letters(self, topic: str, group: str, limit: int) -> list[tuple[bytes, str]]:
        rows: list[Any] = self.run(
            lambda db: db.execute(
                "SELECT m.body, d.reason FROM deliveries d JOIN messages m ON m.id = d.message_id"
                " WHERE d.topic = ? AND d.grp = ? AND d.state = 'dead' ORDER BY d.id LIMIT ?",
                (topic, group, limit),
            ).fetchall()
        )
        return [(bytes(body), reason) for body, reason in rows]


def _declare(db: sqlite3.Connection, topic: str, name: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO subs (topic, name, created_at) VALUES (?, ?, ?)",
        (topic, name, time.time()),
    )


def _dead(db: sqlite3.Connection, delivery_id: int, reason: str) -> None:
    db.execute(
        "UPDATE deliveries SET state = 'dead', lease_owner = NULL, lease_expires = NULL,"
        " reason = ? WHERE id = ?",
        (reason[:2000], delivery_id),
    )


def _collect(db: sqlite3.Connection, message_id: int) -> None:
    """Delete a message once no delivery refers to it."""
    db.execute(
        "DELETE FROM messages WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries WHERE message_id = ?)",
        (message_id, message_id),
    )
