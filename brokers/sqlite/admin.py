"""Dead letters and purges of the SQLite transport (:class:`brokers.contract.Admin`).

Each function is the body of one write transaction (:meth:`brokers.sqlite.db.SqliteQueue.transact`),
so a replay or a purge is atomic: a replayed delivery turns from ``dead`` into ``ready`` in
place - same message, same task id, its delivery count back to zero - and can neither be lost
nor doubled. A dead delivery's ``available_at`` holds the time it died (``dead_at``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from datetime import UTC, datetime

from brokers.contract import DeadLetter
from brokers.deadletters import dead_letter, replayable
from brokers.sqlite.transactions import db_now


def dead_letters(db: sqlite3.Connection, topic: str, group: str, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead deliveries of ``group``, oldest first (nothing is removed)."""
    rows = db.execute(
        "SELECT m.body, m.key, d.reason, d.deliveries, d.available_at FROM deliveries d"
        " JOIN messages m ON m.id = d.message_id"
        " WHERE d.topic = ? AND d.grp = ? AND d.state = 'dead' ORDER BY d.id LIMIT ?",
        (topic, group, limit),
    ).fetchall()
    return [
        dead_letter(
            bytes(body),
            reason,
            key=key,
            attempts=deliveries,
            dead_at=datetime.fromtimestamp(died, UTC),
        )
        for body, key, reason, deliveries, died in rows
    ]


def replay(db: sqlite3.Connection, topic: str, group: str, task_ids: Collection[str] | None) -> int:
    """Make the dead deliveries of ``group`` that hold a selected task ready again, as if
    never delivered. Returns how many."""
    rows = db.execute(
        "SELECT d.id, m.body FROM deliveries d JOIN messages m ON m.id = d.message_id"
        " WHERE d.topic = ? AND d.grp = ? AND d.state = 'dead' ORDER BY d.id",
        (topic, group),
    ).fetchall()
    now = db_now(db)
    replayed = 0
    for delivery_id, body in rows:
        if replayable(bytes(body), task_ids) is None:
            continue
        db.execute(
            "UPDATE deliveries SET state = 'ready', available_at = ?, deliveries = 0,"
            " reason = '', lease_owner = NULL, lease_expires = NULL WHERE id = ?",
            (now, delivery_id),
        )
        replayed += 1
    return replayed


def purge_dead(db: sqlite3.Connection, topic: str, group: str) -> int:
    """Delete every dead delivery of ``group`` (and messages nobody else needs)."""
    return _delete(db, topic, group, "dead")


def purge_ready(db: sqlite3.Connection, topic: str, group: str) -> int:
    """Delete every ready delivery of ``group``, delayed ones included; leased ones stay."""
    return _delete(db, topic, group, "ready")


def _delete(db: sqlite3.Connection, topic: str, group: str, state: str) -> int:
    gone = db.execute(
        "DELETE FROM deliveries WHERE topic = ? AND grp = ? AND state = ? RETURNING message_id",
        (topic, group, state),
    ).fetchall()
    for (message_id,) in gone:
        db.execute(
            "DELETE FROM messages WHERE id = ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries WHERE message_id = ?)",
            (message_id, message_id),
        )
    return len(gone)
