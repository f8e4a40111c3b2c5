"""The raw SQLite round trip: what one file, WAL mode and ``synchronous=FULL`` allow by hand.

Same durability as ``brokers/sqlite``: every publish is its own committed (fsynced) transaction,
a worker leases tasks before it works on them and deletes a task only in the transaction that
stores its reply. Unlike pixfleet it leases and answers whole batches (one transaction each)
and polls every millisecond; it has no heartbeats, delivery counts, dead letters or routing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from bench.loop import RoundTrips, measure

T = TypeVar("T")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, n INTEGER, leased REAL)",
    "CREATE TABLE IF NOT EXISTS replies (id INTEGER PRIMARY KEY, n INTEGER)",
)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for statement in SCHEMA:
        db.execute(statement)
    return db


def transact(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        out = fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return out


def _lease(db: sqlite3.Connection) -> list[tuple[int, int]]:
    rows = db.execute(
        "SELECT id, n FROM tasks WHERE leased IS NULL ORDER BY id LIMIT 256"
    ).fetchall()
    db.executemany("UPDATE tasks SET leased = ? WHERE id = ?", [(time.time(), r[0]) for r in rows])
    return rows


def _answer(db: sqlite3.Connection, rows: list[tuple[int, int]]) -> None:
    db.executemany("INSERT INTO replies (n) VALUES (?)", [(n,) for _, n in rows])
    db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i, _ in rows])


def worker(path: str) -> None:
    db = connect(Path(path))
    while True:
        rows = transact(db, _lease)
        if not rows:
            time.sleep(0.001)
            continue
        transact(db, partial(_answer, rows=rows))  # the no-op "pipeline" ran in between


def _take_replies(db: sqlite3.Connection) -> list[int]:
    rows = db.execute("SELECT id, n FROM replies ORDER BY id LIMIT 256").fetchall()
    db.executemany("DELETE FROM replies WHERE id = ?", [(r[0],) for r in rows])
    return [r[1] for r in rows]


class RawSqliteClient:
    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.thread = ThreadPoolExecutor(1)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, transact, self.db, fn)

    async def publish(self, n: int) -> None:
        await self._call(lambda db: db.execute("INSERT INTO tasks (n) VALUES (?)", (n,)))

    async def replies(self) -> AsyncIterator[int]:
        while True:
            got = await self._call(_take_replies)
            for n in got:
                yield n
            if not got:
                await asyncio.sleep(0.001)


async def raw_sqlite_round_trips(path: Path, tasks: int, singles: int) -> RoundTrips:
    client = RawSqliteClient(path)
    proc = multiprocessing.get_context("spawn").Process(target=worker, args=(str(path),))
    proc.start()
    try:
        return await measure(client, tasks=tasks, window=256, singles=singles)
    finally:
        proc.kill()
        proc.join()
        client.thread.shutdown()
        client.db.close()
