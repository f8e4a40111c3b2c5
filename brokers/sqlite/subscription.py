"""The async iterator behind the SQLite transport's ``consume`` and ``replies``.

A subscription claims (leases) up to ``prefetch - unsettled`` deliveries at a time; idle, it
claims again once another connection committed (``PRAGMA data_version``, looked at every
``watch`` seconds: :mod:`brokers.sqlite.watch`) or after 5 ms doubling up to ``poll``. A heartbeat
every ``lease / 3`` seconds extends its leases while the process lives
(:mod:`brokers.sqlite.heartbeat`). A consumer that dies without closing is found by the others
within about a second (:func:`brokers.sqlite.registry.reap`) and its leases are released then;
failing that, they expire ``lease`` seconds after its last beat.

Faults never end a subscription: a database that stays locked (or a full disk) puts it in the
``reconnecting`` state (:mod:`brokers.sqlite.outage`) until the database answers again; a body
that cannot be decoded is dead-lettered with the reason; a settle that fails gives the lease
back, so the delivery comes again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, Self, TypeAlias, TypeVar

from brokers.outage import Outage, SubscriptionState
from brokers.sqlite.db import SqliteQueue
from brokers.sqlite.delivery import SqliteDelivery
from brokers.sqlite.heartbeat import Heartbeat
from brokers.sqlite.settings import SqliteSettings
from brokers.sqlite.transactions import Claimed
from brokers.sqlite.watch import ChangeWatch, until_changed
from pixfleet.envelope import Result, Task
from pixfleet.errors import BrokerError, BrokerUnavailable, PixfleetError

log = logging.getLogger(__name__)

_MIN_IDLE = 0.005

T = TypeVar("T")
M = TypeVar("M", Task, Result)


class _Host(Protocol):
    """What a subscription needs from its transport (:class:`SqliteTransport` is one)."""

    @property
    def settings(self) -> SqliteSettings: ...

    async def call(self, op: Callable[[SqliteQueue], T], *, durable: bool = True) -> T:
        """Run ``op`` on the database thread (``durable=False``: it only settles, no fsync
        waited for); raises TransportClosed once the host is closed."""
        ...

    def call_soon(self, op: Callable[[SqliteQueue], object]) -> None:
        """Run ``op`` on the database thread without waiting; nothing once closed."""
        ...

    @property
    def watch(self) -> ChangeWatch | None: ...

    def attach(self, subscription: AnySubscription) -> None:
        """Track a started subscription, to stop it and release its leases on close."""
        ...

    def detach(self, subscription: AnySubscription) -> None: ...


class SqliteSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription` of one (topic, group) of the database.

    Cancelling a pending ``__anext__`` (a timeout around it) is safe: claims run shielded and a
    claim that completes after the caller gave up is buffered for the next call, never orphaned.
    The heartbeat that renews leases runs until the iterator is closed *and* every delivery it
    yielded is settled, so in-flight work keeps its lease while a worker drains. :attr:`state`
    is ``consuming``, or ``reconnecting`` while the database is unavailable.
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
        self._held: set[int] = set()  # yielded and not settled (nor given back)
        self._changed = asyncio.Event()
        self._closed = False
        self._idle = _MIN_IDLE
        self._seen: tuple[int, int] | None = None  # the watch's version before the last claim
        self._outage = Outage(f"sqlite consumer {self.id} of {topic}/{group}")
        # Runs until the iterator is closed and every delivery it yielded is settled.
        self._heart = Heartbeat(host, self.id, topic, group, self._outage)

    @property
    def state(self) -> SubscriptionState:
        return self._outage.state

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SqliteDelivery[M]:
        if self._closed:
            raise StopAsyncIteration
        if not self._heart.started:
            await self._outage.retry(self._start, BrokerUnavailable)
        while True:
            if self._buffer:
                delivery = await self._wrap(self._buffer.popleft())
                if delivery is not None:
                    return delivery
                continue
            await self._wait_for_room()
            claimed = await self._outage.retry(self._claim, BrokerUnavailable)
            if claimed:
                self._idle = _MIN_IDLE
                self._buffer.extend(claimed)
                continue
            if self._until_empty and not await self._has_backlog():
                await self.aclose()
                raise StopAsyncIteration
            idle, self._idle = self._idle, min(self._idle * 2, self._host.settings.poll)
            busy = bool(self._held)  # its process is at work: look less often
            await until_changed(self._host.watch, self._seen, idle, busy=busy)

    async def aclose(self) -> None:
        """Stop claiming; give back claimed-but-unyielded deliveries. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        if self._buffer:
            ids = [c.delivery_id for c in self._buffer]
            self._buffer.clear()
            await self._release(ids)
        if not self._held:
            await self._finish()

    async def stop(self) -> None:
        """Called by the transport on close: stop claiming and stop the heartbeat now."""
        self._closed = True
        self._buffer.clear()
        await self._heart.stop()

    # -- settling (brokers.sqlite.delivery.Settler) -----------------------------------------

    async def ack_delivery(self, delivery_id: int) -> bool:
        try:
            held = await self._host.call(lambda db: db.ack(delivery_id, self.id), durable=False)
        except Exception:
            await self.give_back(delivery_id)
            raise
        await self._one_settled(delivery_id)
        return held

    async def nack_delivery(
        self, delivery_id: int, *, requeue: bool, delay: float, reason: str
    ) -> None:
        try:
            await self._host.call(
                lambda db: db.nack(
                    delivery_id, self.id, requeue=requeue, delay=delay, reason=reason
                ),
                durable=False,
            )
        except Exception:
            await self.give_back(delivery_id)
            raise
        self._heart.give_back.discard(delivery_id)
        await self._one_settled(delivery_id)

    async def give_back(self, delivery_id: int) -> None:
        """A settle failed: release the lease so the delivery comes again (now, or at the next
        heartbeat, which never extends it meanwhile)."""
        if await self._release([delivery_id]):
            log.warning("settling delivery %s failed; it was given back", delivery_id)
        await self._one_settled(delivery_id)

    async def _release(self, ids: list[int]) -> bool:
        try:
            await self._host.call(lambda db: db.release(self.id, ids), durable=False)
        except BrokerError as exc:
            log.warning("cannot release deliveries %s now (%s); the next beat will", ids, exc)
            self._heart.give_back.update(ids)
            return False
        return True

    async def _one_settled(self, delivery_id: int) -> None:
        self._held.discard(delivery_id)
        self._changed.set()
        if self._closed and not self._held:
            await self._finish()

    async def _finish(self) -> None:
        """Closed and nothing unsettled: stop the heartbeat and unregister now (idempotent)."""
        if self._heart.finished:
            return
        self._heart.finish()
        if self._heart.started:
            try:  # releases what a failed settle left leased, too
                await self._host.call(lambda db: db.unregister(self.id), durable=False)
            except BrokerError as exc:  # TransportClosed included: close released everything
                log.debug("unregistering consumer %s: %s", self.id, exc)
        self._host.detach(self)

    # -- claiming --------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._host.call(lambda db: db.declare(self._topic, self._group))
        await self._heart.beat()
        self._host.attach(self)
        self._heart.start()

    async def _wait_for_room(self) -> None:
        while len(self._held) + len(self._buffer) >= self._prefetch:
            self._changed.clear()
            await self._changed.wait()

    async def _claim(self) -> list[Claimed]:
        await self._heart.reap_now_and_then()
        self._seen = self._host.watch.version() if self._host.watch else None
        s = self._host.settings
        room = self._prefetch - len(self._held) - len(self._buffer)
        topic, group, owner = self._topic, self._group, self.id
        call = self._host.call(
            lambda db: db.claim(
                topic, group, owner, limit=room, lease=s.lease, delivery_limit=s.delivery_limit
            ),
            durable=False,
        )
        future = asyncio.ensure_future(call)
        try:
            claimed = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._keep_late_claim)
            raise
        self._heart.give_back.difference_update(c.delivery_id for c in claimed)  # fresh leases
        return claimed

    def _keep_late_claim(self, future: asyncio.Future[list[Claimed]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if self._closed:
            ids = [c.delivery_id for c in future.result()]
            if ids:
                self._host.call_soon(lambda db: db.release(self.id, ids))
        else:
            self._heart.give_back.difference_update(c.delivery_id for c in future.result())
            self._buffer.extend(future.result())

    async def _has_backlog(self) -> bool:
        return await self._outage.retry(
            lambda: self._host.call(
                lambda db: db.has_backlog(self._topic, self._group), durable=False
            ),
            BrokerUnavailable,
        )

    async def _wrap(self, item: Claimed) -> SqliteDelivery[M] | None:
        """The delivery of ``item``, or None once a body that is no envelope is dead-lettered."""
        try:
            message = self._decode(item.body)
        except Exception as exc:  # noqa: BLE001 - no body, however hostile, ends a consumer
            reason = _reason(exc)
            log.warning("dead-lettering undecodable delivery %s: %s", item.delivery_id, reason)
            try:
                await self._outage.retry(
                    lambda: self._host.call(
                        lambda db: db.dead_letter_now(item.delivery_id, reason), durable=False
                    ),
                    BrokerUnavailable,
                )
            except BaseException:
                self._buffer.appendleft(item)  # cancelled: still ours, handled next time
                raise
            return None
        self._held.add(item.delivery_id)
        return SqliteDelivery(message, item.deliveries, self, item.delivery_id, self._heart)


def _reason(exc: Exception) -> str:
    one_line = exc.one_line() if isinstance(exc, PixfleetError) else None
    return one_line or f"error[envelope.invalid]: {type(exc).__name__}: {str(exc)[:500]}"


#: A subscription of either kind, as its transport tracks it.
AnySubscription: TypeAlias = SqliteSubscription[Task] | SqliteSubscription[Result]
