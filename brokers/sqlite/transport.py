"""The embedded transport: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

Zero set-up and durable; several processes on one machine share the file (WAL mode). Consumers
poll with a short adaptive interval (there is no cross-process notification in SQLite), hold
leases that a heartbeat extends while they live, and lose them when they die - which is how a
``kill -9``-ed worker's task is redelivered. URL options (all optional)::

    lease=30            seconds a delivery stays leased without a heartbeat
    max_deliveries=10   deliveries before a message is dead-lettered (poison guard)
    synchronous=full    or ``normal`` (faster; survives process crashes, not power loss)
    poll=0.25           longest sleep between polls when idle, in seconds
    busy_timeout=10     seconds to wait for the write lock before ``broker.unavailable``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Generic, Self, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from brokers import names
from brokers.contract import DeadLetter, GroupStats
from brokers.sqlite.db import Claimed, SqliteQueue
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import EnvelopeError, InvalidURL, TransportClosed

log = logging.getLogger(__name__)

_MIN_IDLE = 0.005

T = TypeVar("T")
M = TypeVar("M", Task, Result)


@dataclass(frozen=True)
class SqliteSettings:
    path: Path
    lease: float = 30.0
    max_deliveries: int = 10
    synchronous: str = "FULL"
    poll: float = 0.25
    busy_timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise InvalidURL(f"expected sqlite:///path, got {url!r}")
        raw_path = unquote(parts.path[1:])
        if not raw_path:
            raise InvalidURL(f"sqlite URL has no file path: {url!r}")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        known = {"lease", "max_deliveries", "synchronous", "poll", "busy_timeout"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidURL(f"unknown sqlite URL option(s) {unknown}; known: {sorted(known)}")
        try:
            settings = cls(
                path=Path(raw_path).expanduser().resolve(),
                lease=float(options.get("lease", cls.lease)),
                max_deliveries=int(options.get("max_deliveries", cls.max_deliveries)),
                synchronous=options.get("synchronous", cls.synchronous).upper(),
                poll=float(options.get("poll", cls.poll)),
                busy_timeout=float(options.get("busy_timeout", cls.busy_timeout)),
            )
        except ValueError as exc:
            raise InvalidURL(f"bad sqlite URL option in {url!r}: {exc}") from exc
        if settings.synchronous not in ("FULL", "NORMAL"):
            raise InvalidURL("sqlite option synchronous must be 'full' or 'normal'")
        if settings.lease <= 0 or settings.max_deliveries < 1 or settings.poll <= 0:
            raise InvalidURL("sqlite options lease, poll must be > 0 and max_deliveries >= 1")
        return settings


@dataclass(eq=False)
class SqliteDelivery(Generic[M]):
    """A leased delivery; settling it twice is a no-op."""

    message: M
    attempt: int
    _transport: SqliteTransport = field(repr=False)
    _consumer: _Subscription[M] = field(repr=False)
    _delivery_id: int = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            held = await self._transport._call(
                self._transport._queue().ack, self._delivery_id, self._consumer.id
            )
        finally:
            await self._consumer.settled()
        if not held:
            log.warning(
                "ack of delivery %s came after its lease was lost; it will be redelivered",
                self._delivery_id,
            )

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        nack = partial(
            self._transport._queue().nack,
            self._delivery_id,
            self._consumer.id,
            requeue=requeue,
            delay=delay,
            reason=reason,
        )
        try:
            await self._transport._call(nack)
        finally:
            await self._consumer.settled()


class SqliteTransport:
    """:class:`brokers.contract.Transport` on one SQLite database file."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self._db: SqliteQueue | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._subs: dict[str, _Subscription[Task] | _Subscription[Result]] = {}

    @classmethod
    def from_url(cls, url: str) -> SqliteTransport:
        return cls(SqliteSettings.from_url(url))

    @property
    def url(self) -> str:
        return f"sqlite:///{self.settings.path}"

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixfleet-sqlite")
        s = self.settings
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(
            self._executor,
            partial(SqliteQueue, s.path, busy_timeout=s.busy_timeout, synchronous=s.synchronous),
        )
        await self._call(self._db.declare, names.SQLITE_REPLIES, names.DEFAULT_RESULTS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back every delivery still leased by this transport's consumers, then close."""
        if self._db is None or self._executor is None:
            return
        db = self._db
        for sub in list(self._subs.values()):
            await sub.stop()
            await self._call(db.release, sub.id)
            await self._call(db.unregister, sub.id)
        self._subs.clear()
        await self._call(db.close)
        self._db = None
        self._executor.shutdown(wait=True)
        self._executor = None

    def _queue(self) -> SqliteQueue:
        if self._db is None:
            raise TransportClosed(f"transport {self.url} is not open")
        return self._db

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if self._executor is None:
            raise TransportClosed(f"transport {self.url} is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        routed = await self._call(
            self._queue().publish, names.SQLITE_TASKS, task.id, encode(task), task.groups
        )
        log.debug("published task %s to %s", task.id, ",".join(routed))

    async def reply(self, reply_to: str, result: Result) -> str:
        return await self._call(
            self._queue().publish_to_channel,
            names.SQLITE_REPLIES,
            reply_to,
            names.DEFAULT_RESULTS,
            encode(result),
        )

    async def open_reply_channel(self) -> str:
        channel = f"{names.PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"
        await self._call(self._queue().declare, names.SQLITE_REPLIES, channel)
        return channel

    async def close_reply_channel(self, channel: str) -> None:
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")
        await self._call(self._queue().drop_subscription, names.SQLITE_REPLIES, channel)

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> _Subscription[Task]:
        return _Subscription(
            self, names.SQLITE_TASKS, group, decode_task, prefetch=prefetch, until_empty=until_empty
        )

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> _Subscription[Result]:
        return _Subscription(
            self,
            names.SQLITE_REPLIES,
            channel,
            decode_result,
            prefetch=prefetch,
            until_empty=until_empty,
        )

    # -- inspection ------------------------------------------------------------------------

    async def stats(self, group: str) -> GroupStats:
        return await self._stats(names.SQLITE_TASKS, group)

    async def _stats(self, topic: str, group: str) -> GroupStats:
        alive_after = time.time() - self.settings.lease
        counts = await self._call(self._queue().stats, topic, group, alive_after)
        return GroupStats(
            group=group,
            ready=counts["ready"],
            in_flight=counts["leased"],
            dead=counts["dead"],
            consumers=counts["consumers"],
        )

    async def groups(self) -> tuple[str, ...]:
        return await self._call(self._queue().subscriptions, names.SQLITE_TASKS)

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        rows = await self._call(self._queue().dead_letters, names.SQLITE_TASKS, group, limit)
        return [DeadLetter(body=body, reason=reason) for body, reason in rows]


class _Subscription(Generic[M]):
    """The async iterator behind ``consume``/``replies``.

    Cancelling a pending ``__anext__`` (a timeout around it) is safe: claims run shielded and a
    claim that completes after the caller gave up is buffered for the next call, never orphaned.
    The heartbeat that renews leases runs until the iterator is closed *and* every delivery it
    yielded is settled, so in-flight work keeps its lease while a worker drains.
    """

    def __init__(
        self,
        transport: SqliteTransport,
        topic: str,
        group: str,
        decode: Callable[[bytes], M],
        *,
        prefetch: int,
        until_empty: bool,
    ) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._transport = transport
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
            if self._until_empty and not await self._transport._call(
                self._transport._queue().has_backlog, self._topic, self._group
            ):
                await self.aclose()
                raise StopAsyncIteration
            await asyncio.sleep(self._idle)
            self._idle = min(self._idle * 2, self._transport.settings.poll)

    async def aclose(self) -> None:
        """Stop claiming; give back claimed-but-unyielded deliveries. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        if self._buffer and self._transport._db is not None:
            ids = [c.delivery_id for c in self._buffer]
            self._buffer.clear()
            await self._transport._call(self._transport._queue().release, self.id, ids)
        if self._unsettled <= 0:
            await self._finish()

    async def settled(self) -> None:
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
                await self._transport._call(self._transport._queue().unregister, self.id)
        self._transport._subs.pop(self.id, None)

    async def _start(self) -> None:
        db = self._transport._queue()
        await self._transport._call(db.declare, self._topic, self._group)
        await self._beat()
        self._transport._subs[self.id] = self
        self._heart = asyncio.create_task(self._heartbeat())

    async def _wait_for_room(self) -> None:
        while self._unsettled + len(self._buffer) >= self._prefetch:
            self._changed.clear()
            await self._changed.wait()

    async def _claim(self) -> list[Claimed]:
        s = self._transport.settings
        room = self._prefetch - self._unsettled - len(self._buffer)
        call = self._transport._call(
            self._transport._queue().claim,
            self._topic,
            self._group,
            self.id,
            limit=room,
            lease=s.lease,
            max_deliveries=s.max_deliveries,
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
            transport = self._transport
            if ids and transport._executor is not None and transport._db is not None:
                transport._executor.submit(transport._db.release, self.id, ids)
        else:
            self._buffer.extend(future.result())

    async def _wrap(self, item: Claimed) -> SqliteDelivery[M] | None:
        try:
            message = self._decode(item.body)
        except EnvelopeError as exc:
            log.warning("dead-lettering undecodable delivery %s: %s", item.delivery_id, exc)
            await self._transport._call(
                self._transport._queue().dead_letter_now, item.delivery_id, exc.one_line()
            )
            return None
        return SqliteDelivery(message, item.deliveries, self._transport, self, item.delivery_id)

    async def _beat(self) -> None:
        await self._transport._call(
            self._transport._queue().heartbeat,
            self.id,
            self._topic,
            self._group,
            host=socket.gethostname(),
            pid=os.getpid(),
            lease=self._transport.settings.lease,
        )

    async def _heartbeat(self) -> None:
        interval = self._transport.settings.lease / 3
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._done.wait()
                break
            except TimeoutError:
                await self._beat_once()

    async def stop(self) -> None:
        """Called by the transport on close: stop the heartbeat now."""
        self._closed = True
        self._buffer.clear()
        if self._heart is not None and not self._heart.done():
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart

    async def _beat_once(self) -> None:
        try:
            await self._beat()
        except TransportClosed:
            self._done.set()
        except Exception:
            # A missed beat only shortens the lease; the next one may well succeed.
            log.exception("heartbeat of consumer %s failed", self.id)
