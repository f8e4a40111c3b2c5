"""The tables of the SQLite transport (one WAL-mode file shared by many processes).

* ``messages``   - one row per published body (task or result);
* ``subs``       - subscriptions: (topic, name) for every task group and reply channel;
* ``deliveries`` - one row per (message, subscription): ``ready`` (maybe delayed by
  ``available_at``), ``leased`` (owned by a consumer until ``lease_expires``) or ``dead``.
  An acked delivery row is deleted; a message row goes with its last delivery;
* ``consumers``  - live consumers and their last heartbeat.

Every write runs in ``BEGIN IMMEDIATE`` so concurrent processes serialise on the write lock
(``busy_timeout`` waits for it). A lease that expires makes its delivery claimable again, which is
how a crashed worker's task is redelivered. Each claim increments ``deliveries``; a claim that
finds a delivery already delivered ``delivery_limit`` times dead-letters it instead.
"""

from __future__ import annotations

import sqlite3

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


def create_schema(db: sqlite3.Connection) -> None:
    """Create whatever tables and indexes are missing (idempotent; run inside a transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement.strip())
