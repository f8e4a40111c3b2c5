"""The one reader of a waiting submission's reply channel, for many concurrent waiters.

A reply channel may have one reader only (a second would take, and drop, results meant for the
first), so :class:`ReplyRouter` runs one background task over
:meth:`~producer.submission.Submission.results` whenever something is pending and hands each
result to whoever waits for it: :meth:`ReplyRouter.wait` (one task and group) and
:meth:`ReplyRouter.stream` (every result, in arrival order).

With :attr:`ReplyRouter.on_progress` set (and a blob store), a second background task follows
the progress reports of pending pairs (:mod:`pixfleet.progress`: advisory, never a result) every
:data:`PROGRESS_POLL` seconds - at most :data:`PROGRESS_PAIRS` pairs a look - and hands each new
one to it, typed as :class:`~pixfleet.progress.Progress`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from datetime import datetime

from pixfleet.blobs import BlobStore
from pixfleet.envelope import Result
from pixfleet.errors import PixfleetError, ResultTimeout
from pixfleet.progress import Progress, read_progress
from producer.submission import Submission

log = logging.getLogger(__name__)

Pair = tuple[str, str]  # (task id, group)

#: Seconds between two looks at the progress reports of pending pairs, and most pairs a look.
PROGRESS_POLL = 2.0
PROGRESS_PAIRS = 64


class ReplyRouter:
    """Fans the results of one waiting :class:`Submission` out to its waiters."""

    def __init__(self, submission: Submission, *, store: BlobStore | None = None) -> None:
        self._sub = submission
        self._store = store
        self.on_progress: Callable[[Progress], None] | None = None
        self._following: asyncio.Task[None] | None = None
        self.done: dict[Pair, Result] = {}
        self._waiters: dict[Pair, list[asyncio.Future[Result]]] = {}
        self._arrivals: asyncio.Queue[Result | Exception] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> frozenset[Pair]:
        """Pairs submitted whose result has not arrived."""
        return frozenset(p for p in self._sub.pending if p not in self.done)

    async def wait(self, pair: Pair, *, timeout: float) -> Result:
        """The result of ``pair``; :class:`ResultTimeout` after ``timeout`` seconds."""
        if pair in self.done:
            return self.done[pair]
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(pair, []).append(future)
        self.start()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            task_id, group = pair
            raise ResultTimeout(
                f"no result of task {task_id} in group {group!r} within {timeout:g} s"
            ) from None
        finally:
            waiting = self._waiters.get(pair, [])
            if future in waiting:
                waiting.remove(future)

    async def stream(self, *, timeout: float = math.inf) -> AsyncGenerator[Result, None]:
        """Each result as it arrives, each once, until nothing submitted so far is pending;
        :class:`ResultTimeout` after ``timeout`` seconds in all."""
        self.start()
        deadline = asyncio.get_running_loop().time() + timeout
        total = len(self.pending) + self._arrivals.qsize()
        while self.pending or not self._arrivals.empty():
            try:
                async with asyncio.timeout_at(deadline):
                    item = await self._arrivals.get()
            except TimeoutError:
                raise ResultTimeout(
                    f"{len(self.pending)} of {total} result(s) did not arrive within {timeout:g} s"
                    " (late results go to the default results channel: `uploader results`)"
                ) from None
            if isinstance(item, Exception):
                raise item
            yield item

    def start(self) -> None:
        """Make sure the reader runs and looks at what is pending now."""
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._read(), name="pixfleet-client-replies")
            self._pump.add_done_callback(self._ended)
        if self.on_progress is not None and (self._following is None or self._following.done()):
            self._following = asyncio.create_task(self._follow_progress())

    async def stop(self) -> None:
        """Stop the reader: it returns at its next look, and a wait under way is cancelled -
        again if need be: a broker client may swallow a cancellation while it closes (aiokafka
        does), which must not leave the reader waiting for ever. The progress follower (blob
        reads only) is cancelled."""
        pump, self._pump = self._pump, None
        self._closing = True
        while pump is not None and not pump.done():
            self._wake.set()
            pump.cancel()
            await asyncio.wait([pump], timeout=1.0)
        following, self._following = self._following, None
        if following is not None:
            following.cancel()
            await asyncio.wait([following])  # its CancelledError stays in it

    async def _follow_progress(self) -> None:
        """Hand each new progress report of a pending pair to :attr:`on_progress`."""
        seen: dict[Pair, datetime] = {}
        while self.pending and self._store is not None:
            await asyncio.sleep(PROGRESS_POLL)
            for pair in sorted(self.pending)[:PROGRESS_PAIRS]:
                try:
                    progress = await read_progress(self._store, *pair)
                except PixfleetError as exc:  # advisory: the next look tries again
                    log.debug("progress of %s unreadable: %s", pair, exc.one_line())
                    continue
                if progress is None or seen.get(pair) == progress.at or pair in self.done:
                    continue
                seen[pair] = progress.at
                if self.on_progress is not None:
                    self.on_progress(progress)

    async def _read(self) -> None:
        """Read the reply channel whenever something is pending. A broker error fails the
        current waiters; the next :meth:`start` tries again."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if not self._sub.pending:
                continue  # no subscription opened (and closed) for nothing
            try:
                async with aclosing(self._sub.results(timeout=math.inf)) as results:
                    async for result in results:
                        self._deliver(result)
            except PixfleetError as exc:
                self._fail(exc)

    def _ended(self, pump: asyncio.Task[None]) -> None:
        """A bug in the reader fails the waiters at once instead of leaving them hanging."""
        if not pump.cancelled() and (exc := pump.exception()) is not None:
            self._fail(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))

    def _deliver(self, result: Result) -> None:
        pair = (result.task_id, result.group)
        self.done[pair] = result
        self._arrivals.put_nowait(result)
        for future in self._waiters.pop(pair, []):
            if not future.done():
                future.set_result(result)

    def _fail(self, exc: Exception) -> None:
        self._arrivals.put_nowait(exc)
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
