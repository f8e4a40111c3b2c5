"""The async iterator behind the SQLite transport's ``consume`` and ``replies``.

SQLite has no cross-process notification, so a subscription polls: it claims (leases) up to
``prefetch - unsettled`` deliveries at a time, sleeping 5 ms right after work and doubling up to
the ``poll`` setting while idle. A heartbeat every ``lease / 3`` seconds extends its leases, so
long tasks keep them while the process lives and a ``kill -9``-ed consumer's deliveries become
claimable ``lease`` seconds after its last beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, Self, TypeAlias, TypeVar

from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.delivery import SqliteDelivery
from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.transactions import Claimed
from pixfleet.envelope import Result, Task
from pixfleet.errors import EnvelopeError, TransportClosed

log = logging.getLogger(__name__)

_MIN_IDLE = 0.005

T = TypeVar("T")
M = TypeVar("M", Task, Result)


class _Host(Protocol):
    """What a subscription needs from its transport (:class:`SqliteTransport` is one)."""

    @property
    def settings(self) -> SqliteSettings: ...

    async def call(self, op: Callable[[SqliteQueue], T]) -> T:
        """Run ``op`` on the database thread; raises TransportClosed once the host is closed."""
        ...

    def call_soon(self, op: Callable[[SqliteQueue], object]) -> None:
        """Run ``op`` on the database thread without waiting; nothing once closed."""
        ...

    def attach(self, subscription: AnySubscription) -> None:
        """Track a started subscription, to stop it and release its leases on close."""
        ...

    def detach(self, subscription: AnySubscription) -> None:
        """Stop tracking a finished subscription (idempotent)."""
        ...


class SqliteSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription` of one (topic, group) of the database.

    Cancelling a pending ``__anext__`` (a timeout around it) is safe: claims run shielded and a
    claim that completes after the caller gave up is buffered for the next call, never orphaned.
    The heartbeat that renews leases runs until the iterator is closed *and* every delivery it
    yielded is settled, so in-flight work keeps its lease while a worker drains.
    """

    def __init__(
        self,
        host: _Host,
        topic: str,
        group: str,
        decode: Callable[[bytes], M],
        *,
        prefetch: int,
        until_empty: bool,
    ) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._host = host
        self._topic = topic
        self._group = group
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._buffer: deque[Claimed] = deque()
        self._unsettled = 0
        self._changed = asyncio.Event()
        self._heart: asyncio.Task[None] | None = None
        self._closed = False
        self._done = asyncio.Event()  # closed and nothing unsettled: the heartbeat may stop
        self._idle = _MIN_IDLE

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SqliteDelivery[M]:
        if self._closed:
            raise StopAsyncIteration
        if self._heart is None:
            await self._start()
        while True:
            if self._buffer:
                delivery = await self._wrap(self._buffer.popleft())
                if delivery is not None:
                    self._unsettled += 1
                    return delivery
                continue
            await self._wait_for_room()
            claimed = await self._claim()
            if claimed:
                self._idle = _MIN_IDLE
                self._buffer.extend(claimed)
                continue
            if self._until_empty and not await self._has_backlog():
                await self.aclose()
                raise StopAsyncIteration
            await asyncio.sleep(self._idle)
            self._idle = min(self._idle * 2, self._host.settings.poll)

    async def aclose(self) -> None:
        """Stop claiming; give back claimed-but-unyielded deliveries. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        if self._buffer:
            ids = [c.delivery_id for c in self._buffer]
            self._buffer.clear()
            with contextlib.suppress(TransportClosed):
                await self._host.call(lambda db: db.release(self.id, ids))
        if self._unsettled <= 0:
            await self._finish()

    async def stop(self) -> None:
        """Called by the transport on close: stop claiming and stop the heartbeat now."""
        self._closed = True
        self._buffer.clear()
        if self._heart is not None and not self._heart.done():
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart

    # -- settling (brokers.sqlite.delivery.Settler) -----------------------------------------

    async def ack_delivery(self, delivery_id: int) -> bool:
        try:
            return await self._host.call(lambda db: db.ack(delivery_id, self.id))
        finally:
            await self._one_settled()

    async def nack_delivery(
        self, delivery_id: int, *, requeue: bool, delay: float, reason: str
    ) -> None:
        try:
            await self._host.call(
                lambda db: db.nack(
                    delivery_id, self.id, requeue=requeue, delay=delay, reason=reason
                )
            )
        finally:
            await self._one_settled()

    async def _one_settled(self) -> None:
        self._unsettled -= 1
        self._changed.set()
        if self._closed and self._unsettled <= 0:
            await self._finish()

    async def _finish(self) -> None:
        """Closed and nothing unsettled: stop the heartbeat and unregister now (idempotent)."""
        if self._done.is_set():
            return
        self._done.set()
        if self._heart is not None:
            with contextlib.suppress(TransportClosed):
                await self._host.call(lambda db: db.unregister(self.id))
        self._host.detach(self)

    # -- claiming --------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._host.call(lambda db: db.declare(self._topic, self._group))
        await self._beat()
        self._host.attach(self)
        self._heart = asyncio.create_task(self._heartbeat())

    async def _wait_for_room(self) -> None:
        while self._unsettled + len(self._buffer) >= self._prefetch:
            self._changed.clear()
            await self._changed.wait()

    async def _claim(self) -> list[Claimed]:
        s = self._host.settings
        room = self._prefetch - self._unsettled - len(self._buffer)
        topic, group, owner = self._topic, self._group, self.id
        call = self._host.call(
            lambda db: db.claim(
                topic, group, owner, limit=room, lease=s.lease, delivery_limit=s.delivery_limit
            )
        )
        future = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._keep_late_claim)
            raise

    def _keep_late_claim(self, future: asyncio.Future[list[Claimed]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if self._closed:
            ids = [c.delivery_id for c in future.result()]
            if ids:
                self._host.call_soon(lambda db: db.release(self.id, ids))
        else:
            self._buffer.extend(future.result())

    async def _has_backlog(self) -> bool:
        return await self._host.call(lambda db: db.has_backlog(self._topic, self._group))

    async def _wrap(self, item: Claimed) -> SqliteDelivery[M] | None:
        try:
            message = self._decode(item.body)
        except EnvelopeError as exc:
            log.warning("dead-lettering undecodable delivery %s: %s", item.delivery_id, exc)
            reason = exc.one_line()
            await self._host.call(lambda db: db.dead_letter_now(item.delivery_id, reason))
            return None
        return SqliteDelivery(message, item.deliveries, self, item.delivery_id)

    # -- heartbeat -------------------------------------------------------------------------

    async def _beat(self) -> None:
        topic, group, owner, lease = self._topic, self._group, self.id, self._host.settings.lease
        host, pid = socket.gethostname(), os.getpid()
        await self._host.call(
            lambda db: db.heartbeat(owner, topic, group, host=host, pid=pid, lease=lease)
        )

    async def _heartbeat(self) -> None:
        interval = self._host.settings.lease / 3
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._done.wait()
                break
            except TimeoutError:
                await self._beat_once()

    async def _beat_once(self) -> None:
        try:
            await self._beat()
        except TransportClosed:
            self._done.set()
        except Exception:
            # A missed beat only shortens the lease; the next one may well succeed.
            log.exception("heartbeat of consumer %s failed", self.id)


#: A subscription of either kind, as its transport tracks it.
AnySubscription: TypeAlias = SqliteSubscription[Task] | SqliteSubscription[Result]
