"""The SQLite transport's operations, each the body of one write transaction.

Every function takes an open connection inside ``BEGIN IMMEDIATE`` (see
:meth:`brokers.sqlite.db.SqliteQueue.transact`) and does its whole job in it, so each one is
atomic across processes. Table layout and lease rules: :mod:`brokers.sqlite.schema`; the
consumers table: :mod:`brokers.sqlite.registry`; read-only views: :mod:`brokers.sqlite.views`.

**One clock.** Every time stored or compared here (``available_at``, ``lease_expires``,
``last_seen``) is read from the database with :func:`db_now` - SQLite's own ``'now'``, the
operating system's clock read by the SQLite library - never from a process's ``time.time()``.
Every process that shares the file runs on the machine that holds it, so they all read the same
clock, and a process whose Python clock is off (or patched) can neither steal a lease nor release
a delayed retry early.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from brokers.policy import delivery_limit_reason
from pixfleet.errors import BrokerFull, Unroutable

_REASON_MAX = 2000  # characters of a dead-letter reason that are kept


def db_now(db: sqlite3.Connection) -> float:
    """The database's clock in epoch seconds (millisecond resolution): the one time source of
    every lease, delay and heartbeat."""
    (now,) = db.execute("SELECT (julianday('now') - 2440587.5) * 86400.0").fetchone()
    return float(now)


@dataclass(frozen=True)
class Claimed:
    """A delivery leased by a claim: its row id, the body, and the deliveries so far (>= 1)."""

    delivery_id: int
    body: bytes
    deliveries: int


# -- subscriptions -------------------------------------------------------------------------


def declare(db: sqlite3.Connection, topic: str, name: str) -> None:
    """Create the subscription ``(topic, name)`` unless it exists."""
    db.execute(
        "INSERT OR IGNORE INTO subs (topic, name, created_at) VALUES (?, ?, ?)",
        (topic, name, db_now(db)),
    )


def subscriptions(db: sqlite3.Connection, topic: str) -> tuple[str, ...]:
    """The names subscribed to ``topic``, sorted."""
    rows = db.execute("SELECT name FROM subs WHERE topic = ? ORDER BY name", (topic,))
    return tuple(r[0] for r in rows)


def drop_subscription(db: sqlite3.Connection, topic: str, name: str) -> None:
    """Delete a subscription, its deliveries in every state and messages nobody else needs."""
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


# -- publish -------------------------------------------------------------------------------


def publish(
    db: sqlite3.Connection,
    topic: str,
    key: str,
    body: bytes,
    groups: tuple[str, ...],
    *,
    max_length: int = 0,
) -> tuple[str, ...]:
    """Store ``body`` once and a ready delivery for each of ``groups`` (declaring them), or for
    every subscription of ``topic`` when ``groups`` is empty. Returns the groups reached;
    raises :class:`Unroutable` (storing nothing) if that is none, and :class:`BrokerFull`
    (storing nothing) if ``max_length`` is set and a target already holds that many ready."""
    targets = groups or subscriptions(db, topic)
    if not targets:
        raise Unroutable(
            f"no group is subscribed to {topic!r}: name a --group or start a worker first"
        )
    for target in targets if max_length else ():
        (ready,) = db.execute(
            "SELECT count(*) FROM deliveries WHERE topic = ? AND grp = ? AND state = 'ready'",
            (topic, target),
        ).fetchone()
        if ready >= max_length:
            raise BrokerFull(
                f"group {target!r} holds {ready} ready tasks (max_length={max_length}); "
                "nothing was published, try again once its workers caught up"
            )
    return _store(db, topic, key, body, tuple(targets))


def publish_to_channel(
    db: sqlite3.Connection, topic: str, channel: str, fallback: str, body: bytes
) -> str:
    """Store ``body`` for ``channel`` if it is subscribed, else for ``fallback`` (declared if
    need be). Returns the channel used."""
    exists = db.execute(
        "SELECT 1 FROM subs WHERE topic = ? AND name = ?", (topic, channel)
    ).fetchone()
    target = channel if exists else fallback
    _store(db, topic, target, body, (target,))
    return target


def _store(
    db: sqlite3.Connection, topic: str, key: str, body: bytes, targets: tuple[str, ...]
) -> tuple[str, ...]:
    """Insert the message and a ready delivery for each target, declaring the targets."""
    now = db_now(db)
    message_id = db.execute(
        "INSERT INTO messages (topic, key, body, created_at) VALUES (?, ?, ?, ?)",
        (topic, key, body, now),
    ).lastrowid
    for target in targets:
        declare(db, topic, target)
        db.execute(
            "INSERT INTO deliveries (message_id, topic, grp, state, available_at)"
            " VALUES (?, ?, ?, 'ready', ?)",
            (message_id, topic, target, now),
        )
    return targets


# -- consume -------------------------------------------------------------------------------


def claim(
    db: sqlite3.Connection,
    topic: str,
    group: str,
    owner: str,
    *,
    limit: int,
    lease: float,
    delivery_limit: int,
) -> list[Claimed]:
    """Lease to ``owner`` for ``lease`` seconds up to ``limit`` claimable deliveries (ready and
    due, or leased with an expired lease), oldest first, counting each as one more delivery.
    One already delivered ``delivery_limit`` times is dead-lettered instead of returned."""
    now = db_now(db)
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
        if count >= delivery_limit:
            dead_letter(db, delivery_id, delivery_limit_reason(delivery_limit, reason))
            continue
        db.execute(
            "UPDATE deliveries SET state = 'leased', lease_owner = ?, lease_expires = ?,"
            " deliveries = deliveries + 1 WHERE id = ?",
            (owner, now + lease, delivery_id),
        )
        claimed.append(Claimed(delivery_id, bytes(body), count + 1))
    return claimed


def claimable(db: sqlite3.Connection, topic: str, group: str) -> bool:
    """Is a delivery ready and due, or leased with an expired lease? (What :func:`claim` takes.)"""
    now = db_now(db)
    row = db.execute(
        "SELECT 1 FROM deliveries WHERE topic = ? AND grp = ? AND ("
        "   (state = 'ready' AND available_at <= ?) OR (state = 'leased' AND lease_expires <= ?))"
        " LIMIT 1",
        (topic, group, now, now),
    ).fetchone()
    return row is not None


def has_backlog(db: sqlite3.Connection, topic: str, group: str) -> bool:
    """Anything ready (due or delayed) or leased with an expired lease?"""
    row = db.execute(
        "SELECT 1 FROM deliveries WHERE topic = ? AND grp = ? AND (state = 'ready'"
        " OR (state = 'leased' AND lease_expires <= ?)) LIMIT 1",
        (topic, group, db_now(db)),
    ).fetchone()
    return row is not None


def ack(db: sqlite3.Connection, delivery_id: int, owner: str) -> bool:
    """Delete a delivery leased by ``owner`` (and its message if that was the last delivery).
    False, changing nothing, if ``owner`` no longer holds the lease."""
    row = db.execute(
        "DELETE FROM deliveries WHERE id = ? AND lease_owner = ? AND state = 'leased'"
        " RETURNING message_id",
        (delivery_id, owner),
    ).fetchone()
    if row is None:
        return False
    _collect(db, row[0])
    return True


def nack(
    db: sqlite3.Connection,
    delivery_id: int,
    owner: str,
    *,
    requeue: bool,
    delay: float,
    reason: str,
) -> bool:
    """Make a delivery leased by ``owner`` ready again after ``delay`` seconds (``requeue``),
    or dead with ``reason``. False, changing nothing, if ``owner`` no longer holds the lease."""
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
            (db_now(db) + max(delay, 0.0), reason, delivery_id),
        )
    else:
        dead_letter(db, delivery_id, reason or "rejected by consumer")
    return True


def dead_letter(db: sqlite3.Connection, delivery_id: int, reason: str) -> None:
    """Make a delivery dead, whoever holds it, keeping the first 2000 characters of ``reason``;
    its ``available_at`` becomes the time it died."""
    db.execute(
        "UPDATE deliveries SET state = 'dead', lease_owner = NULL, lease_expires = NULL,"
        " reason = ?, available_at = ? WHERE id = ?",
        (reason[:_REASON_MAX], db_now(db), delivery_id),
    )


def release(db: sqlite3.Connection, owner: str, delivery_ids: list[int] | None = None) -> int:
    """Make deliveries leased by ``owner`` (all, or those of ``delivery_ids``) ready at once;
    they stay counted as delivered. Returns how many were released."""
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


def _collect(db: sqlite3.Connection, message_id: int) -> None:
    """Delete a message once no delivery refers to it."""
    db.execute(
        "DELETE FROM messages WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM deliveries WHERE message_id = ?)",
        (message_id, message_id),
    )
