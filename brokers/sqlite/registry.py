"""The ``consumers`` table: who is consuming, from which process, and whether it still lives.

A subscription registers itself (id, host, pid) and beats every ``lease / 3`` seconds; each beat
extends the leases it holds. When a consumer dies without closing (``kill -9``, OOM kill) its
leases would block its deliveries for up to ``lease`` seconds; :func:`reap` finds such consumers
sooner and releases their leases at once:

* **same host** (the host name a consumer registered with equals ours): its process is gone -
  ``os.kill(pid, 0)`` says no such process, or ``/proc`` shows a zombie;
* **other hosts** (another container sharing the file through a volume: another pid namespace,
  so its pid means nothing here): no heartbeat for ``stale_after`` seconds.

A reused pid only makes a dead consumer look alive: its leases then expire as before. Times come
from the database clock (:func:`brokers.sqlite.transactions.db_now`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from brokers.sqlite.transactions import db_now, release


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host (this pid namespace) exists and is not a zombie.
    A pid that cannot be a process (<= 0) counts as alive: the lease decides then."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS) or gone just now: os.kill said it exists
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] == "Z"


def heartbeat(
    db: sqlite3.Connection,
    consumer: str,
    topic: str,
    group: str,
    *,
    host: str,
    pid: int,
    lease: float,
    give_back: list[int],
) -> None:
    """Record that ``consumer`` lives and extend every lease it holds to ``lease`` from now,
    after releasing those of ``give_back`` (deliveries whose settle failed: never extended)."""
    now = db_now(db)
    if give_back:
        release(db, consumer, give_back)
    db.execute(
        "INSERT INTO consumers (id, topic, grp, host, pid, last_seen)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        (consumer, topic, group, host, pid, now),
    )
    db.execute(
        "UPDATE deliveries SET lease_expires = ? WHERE lease_owner = ? AND state = 'leased'",
        (now + lease, consumer),
    )


def unregister(db: sqlite3.Connection, consumer: str) -> None:
    """Forget a consumer that closed, releasing any lease it still holds (one whose settle
    failed); a closed consumer has nothing else leased."""
    release(db, consumer)
    db.execute("DELETE FROM consumers WHERE id = ?", (consumer,))


def reap(
    db: sqlite3.Connection,
    host: str,
    *,
    stale_after: float,
    alive: Callable[[int], bool] = process_alive,
) -> list[str]:
    """Release every lease of dead consumers and forget them; returns their ids. Dead: on
    ``host``, ``alive(pid)`` is false; elsewhere, silent for ``stale_after`` seconds."""
    oldest = db_now(db) - stale_after
    rows = db.execute("SELECT id, host, pid, last_seen FROM consumers").fetchall()
    dead = [
        consumer
        for consumer, their_host, pid, last_seen in rows
        if (not alive(int(pid)) if their_host == host else float(last_seen) < oldest)
    ]
    for consumer in dead:
        unregister(db, consumer)
    return dead
