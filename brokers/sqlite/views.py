"""Read-only views of the SQLite transport's tables, for ``uploader status`` and autoscalers.

Each function runs inside one transaction of :meth:`brokers.sqlite.db.SqliteQueue.transact`;
times come from the database clock (:func:`brokers.sqlite.transactions.db_now`).
"""

from __future__ import annotations

import sqlite3

from brokers.sqlite.transactions import db_now


def stats(db: sqlite3.Connection, topic: str, group: str, alive_for: float) -> dict[str, int]:
    """Deliveries per state (``ready``, ``leased``, ``dead``) and ``consumers`` that beat within
    the last ``alive_for`` seconds."""
    counts: dict[str, int] = {"ready": 0, "leased": 0, "dead": 0}
    for state, count in db.execute(
        "SELECT state, COUNT(*) FROM deliveries WHERE topic = ? AND grp = ? GROUP BY state",
        (topic, group),
    ):
        counts[state] = count
    (live,) = db.execute(
        "SELECT COUNT(*) FROM consumers WHERE topic = ? AND grp = ? AND last_seen > ?",
        (topic, group, db_now(db) - alive_for),
    ).fetchone()
    counts["consumers"] = live
    return counts


def dead_letters(
    db: sqlite3.Connection, topic: str, group: str, limit: int
) -> list[tuple[bytes, str]]:
    """Body and reason of up to ``limit`` dead deliveries, oldest first (nothing is removed)."""
    rows = db.execute(
        "SELECT m.body, d.reason FROM deliveries d JOIN messages m ON m.id = d.message_id"
        " WHERE d.topic = ? AND d.grp = ? AND d.state = 'dead' ORDER BY d.id LIMIT ?",
        (topic, group, limit),
    ).fetchall()
    return [(bytes(body), reason) for body, reason in rows]
