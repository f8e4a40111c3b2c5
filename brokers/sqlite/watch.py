"""How an idle SQLite subscription notices new rows without claiming in a loop.

``PRAGMA data_version`` on a connection of its own changes whenever any other connection - of
this process or another one on the machine - committed to the database. Reading it costs about
10 microseconds and takes no lock (a WAL read of shared memory), so an idle subscription reads
it every ``watch`` seconds (1 ms by default, 8 ms once idle for a quarter of a second: about 2 %
of a core on the 2-core test VM, where claiming every 0.25 s costs 0.3 %) and claims only when
it changed, or at the latest every ``poll`` seconds (delayed retries and expired leases change
no data). No wake-up outside the database file is needed: whoever can open it can be woken.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

#: A consumer idle for long looks every ``SLOWEST * watch`` seconds (8 ms by default).
SLOWEST = 8


#: Seconds between two looks of a consumer that holds deliveries (as the plain poll's first sleep).
BUSY = 0.005


class ChangeWatch:
    """The database's ``data_version``, read at most every ``tick / 2`` seconds.

    Used from the event loop: the read never waits (``timeout=0``); one that fails counts as a
    change, so the subscription claims and meets the error where it is handled."""

    def __init__(self, path: Path, tick: float) -> None:
        self._tick = tick
        self._conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self._read_at = 0.0
        self._failures = 0
        self._version = 0
        self._value = self._read()

    @property
    def tick(self) -> float:
        return self._tick

    def version(self) -> tuple[int, int]:
        """A value that differs from an earlier one if a commit happened in between."""
        now = time.monotonic()
        if now - self._read_at >= self._tick / 2:
            self._read_at = now
            self._value = self._read()
        return self._value

    def _read(self) -> tuple[int, int]:
        try:
            (self._version,) = self._conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self._failures += 1
        return self._version, self._failures

    def close(self) -> None:
        self._conn.close()


async def until_changed(
    watch: ChangeWatch | None, seen: tuple[int, int] | None, seconds: float, *, busy: bool
) -> None:
    """Sleep ``seconds``, or only until the database's version differs from ``seen``, looking
    every ``tick`` for a short sleep and up to :data:`SLOWEST` ticks for the longest ones
    (``seconds`` grows while a consumer stays idle): an idle consumer costs little CPU. A
    ``busy`` one (holding deliveries: its process is at work) looks every :data:`BUSY` seconds
    at most - each look is a wake of the event loop its tasks need, and waiting a little lets
    the next claim take more at once."""
    if watch is None:
        await asyncio.sleep(seconds)
        return
    every = min(max(watch.tick, seconds / 32), SLOWEST * watch.tick)
    every = max(every, BUSY) if busy else every
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while (left := until - loop.time()) > 0:
        await asyncio.sleep(min(every, left))
        if watch.version() != seen:
            return
