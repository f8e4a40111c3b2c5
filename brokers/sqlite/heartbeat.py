"""The heartbeat of one SQLite consumer.

Every ``lease / 3`` seconds a live consumer records that it lives (``consumers.last_seen``) and
extends every lease it holds, so long tasks keep their leases while the process lives. A beat
first releases the deliveries queued in :attr:`Heartbeat.give_back` - those whose settle failed
and could not be released right away - so a lease that is being given back is never extended.
A beat that fails (the database stays locked) only shortens the leases; the next one may work.

Before its claims, each consumer also looks for consumers that died without closing, at most
once every :data:`REAP_INTERVAL` seconds (:func:`brokers.sqlite.registry.reap`), so a ``kill
-9``-ed worker's deliveries come again within about a second instead of a whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from brokers.outage import Outage
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.settings import SqliteSettings
from pixfleet.errors import BrokerUnavailable, TransportClosed

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two looks for dead consumers (each consumer, before a claim).
REAP_INTERVAL = 1.0


class Database(Protocol):
    """What a heartbeat needs from its transport."""

    @property
    def settings(self) -> SqliteSettings: ...

    async def call(self, op: Callable[[SqliteQueue], T], *, durable: bool = True) -> T: ...


class Heartbeat:
    """Beats for consumer ``consumer`` of ``(topic, group)`` from :meth:`start` until
    :meth:`finish` (after the current wait) or :meth:`stop` (at once)."""

    def __init__(self, db: Database, consumer: str, topic: str, group: str, outage: Outage) -> None:
        self._db = db
        self._consumer = consumer
        self._topic = topic
        self._group = group
        self._outage = outage
        self.give_back: set[int] = set()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_reap = 0.0
        self._renewed = 0.0  # time.monotonic() when the last beat that went through began

    @property
    def started(self) -> bool:
        return self._task is not None

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    async def beat(self) -> None:
        """One beat now: release :attr:`give_back`, record the consumer, extend its leases."""
        owner, topic, group = self._consumer, self._topic, self._group
        lease, give_back = self._db.settings.lease, list(self.give_back)
        host, pid = socket.gethostname(), os.getpid()
        began = time.monotonic()
        await self._db.call(
            lambda db: db.heartbeat(
                owner, topic, group, host=host, pid=pid, lease=lease, give_back=give_back
            ),
            durable=False,
        )
        self._renewed = began
        self.give_back.difference_update(give_back)

    def lapsed(self) -> bool:
        """Whether no beat renewed the leases for a whole lease (they may have expired)."""
        return time.monotonic() >= self._renewed + self._db.settings.lease

    async def reap_now_and_then(self) -> None:
        """Release the leases of consumers that died without closing (once a second)."""
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + REAP_INTERVAL
        host, stale_after = socket.gethostname(), self._db.settings.lease
        dead = await self._db.call(lambda db: db.reap(host, stale_after=stale_after), durable=False)
        if dead:
            log.warning("released the leases of dead consumer(s) %s", ", ".join(dead))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def finish(self) -> None:
        """Beat no more (the consumer closed and settled everything)."""
        self._done.set()

    async def stop(self) -> None:
        """Stop now (the transport is closing: it releases the leases)."""
        self._done.set()
        self._renewed = float("-inf")
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        interval = self._db.settings.lease / 3
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._done.wait()
                break
            except TimeoutError:
                await self._beat_once()

    async def _beat_once(self) -> None:
        try:
            await self.beat()
        except TransportClosed:
            self._done.set()
        except BrokerUnavailable as exc:
            self._outage.failed(exc)
        except Exception:
            log.exception("heartbeat of consumer %s failed", self._consumer)
        else:
            self._outage.recovered()
