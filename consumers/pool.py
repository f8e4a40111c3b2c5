"""A process pool for CPU-bound pipelines, so the event loop keeps serving the broker.

* Time limit, twice: the child arms ``SIGALRM`` and raises :class:`TaskTimeout` inside the
  pipeline (clean, the child survives); if the child is stuck in C code past the limit plus a
  grace period, the parent kills the whole pool and starts a fresh one.
* A child that dies (OOM killer, segfault) breaks the pool: the call raises the retryable
  :class:`WorkerCrashed` and the pool is rebuilt.
* Renewal without a gap: children are replaced after ``max_tasks_per_child`` tasks each (counted
  for the pool: ``workers`` times that; a long-lived interpreter's heap only grows), but no
  sooner than ``min_child_age`` seconds after they started - so a stream of tiny tasks does not
  pay for an interpreter start every few hundred of them - and by a fresh pool that is started
  and warmed *first*, while the old one goes on taking tasks: no task waits for a start
  (``ProcessPoolExecutor``'s own ``max_tasks_per_child`` blocked the pool for a whole start-up,
  ~0.3 s, each time). The old children finish what they hold and exit. Renewals are counted in
  ``renewed``.
* Every rebuild is counted in ``recycled`` and reported to the optional ``on_recycle`` callback
  (the worker's :meth:`~consumers.events.WorkerEvents.pool_recycled`) with its reason.
* Children are started with ``spawn`` and exit by themselves when their parent dies
  (``kill -9`` of a worker leaves no orphans burning CPU).
* Children ignore SIGINT *and* SIGTERM: Ctrl-C in a terminal, ``systemctl stop`` (SIGTERM to the
  whole control group) and ``kill -TERM -<pgid>`` reach every process, and the parent drains
  in-flight tasks - a child that died of the signal would turn each of them into a retry. The
  parent ends its children itself: by closing the pool, or by SIGKILL when one is stuck or the
  pool broke (:meth:`PipelinePool._recycle`).
* The children of one generation are :class:`~consumers.children.Children`: one socket pair
  each, read and written by the event loop (no ``ProcessPoolExecutor``: its manager and feeder
  threads cost four thread switches per call).
* Closing the pool waits at most ``shutdown_timeout`` seconds (``worker run --drain-timeout``),
  then kills what is left.
* Memory, capped: each child's address space is limited (``RLIMIT_AS``, ``worker run
  --memory-limit``), so one costly image cannot take the machine's memory; a pipeline that runs
  into the cap raises the final :class:`~pixfleet.errors.MemoryLimitExceeded` (``resource.memory``)
  and the pool is *retired*: new tasks go to fresh children while the old ones finish what they
  hold and exit (a process that ran out of memory may hold a fragmented heap).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Self

from consumers.children import Children
from consumers.pipelines.base import Pipeline, PipelineOutput
from consumers.pipelines.progress import Listener, ProgressChannel
from consumers.poolchild import MIB, child_init, run_in_child
from consumers.settings import MEMORY_LIMIT_MB
from pixfleet.errors import MemoryLimitExceeded, TaskTimeout, WorkerCrashed
from pixfleet.images import Limits

log = logging.getLogger(__name__)

#: Extra seconds the parent waits beyond the limit before it kills a stuck child.
HARD_GRACE = 5.0
#: Fresh starts of a pool whose processes die while starting.
START_TRIES = 3
#: Tasks a child runs before it is replaced, and the fewest seconds it lives before that.
MAX_TASKS_PER_CHILD = 500
MIN_CHILD_AGE = 60.0


class PipelinePool:
    """``async with PipelinePool(4) as pool: out = await pool.process(fn, data, params, limits)``.

    ``on_recycle(reason)`` is called (on the event loop) each time the pool is rebuilt; it
    should not raise (the CLI passes a guarded :class:`~consumers.events.EventFanout` method)."""

    def __init__(
        self,
        workers: int,
        *,
        max_tasks_per_child: int = MAX_TASKS_PER_CHILD,
        min_child_age: float = MIN_CHILD_AGE,
        hard_grace: float = HARD_GRACE,
        shutdown_timeout: float = 30.0,
        memory_limit_mb: int = MEMORY_LIMIT_MB,
        on_recycle: Callable[[str], None] | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.hard_grace = hard_grace
        self.shutdown_timeout = shutdown_timeout
        self.memory_limit = max(0, memory_limit_mb) * MIB  # bytes; 0: no cap
        self._max_tasks = max(1, max_tasks_per_child)
        self._min_age = min_child_age
        self._submitted = 0  # tasks given to the current executor
        self._born = 0.0  # when the current executor was started (monotonic)
        self._renewal: asyncio.Task[None] | None = None
        self._on_recycle = on_recycle
        self._executor: Children | None = None
        self._progress = ProgressChannel(multiprocessing.get_context("spawn"))
        # Retired pools finishing their tasks: executor -> its shutdown.
        self._retired: dict[Children, asyncio.Future[None]] = {}
        self.recycled = 0
        self.renewed = 0

    def _new_executor(self) -> Children:
        return Children(
            self.workers,
            multiprocessing.get_context("spawn"),
            child_init,
            (os.getpid(), self.memory_limit, self._progress.writer),
        )

    async def __aenter__(self) -> Self:
        """Start the children and warm them up, so the first tasks do not pay for interpreter
        start-up. A child that dies while it starts - before it could ignore SIGTERM, a
        SIGTERM to the whole group kills it - costs a fresh start of the pool, up to
        :data:`START_TRIES` times; then :class:`WorkerCrashed`."""
        self._progress.open()
        try:
            self._executor = await self._started()
        except BaseException:
            self._progress.close()
            raise
        self._born = time.monotonic()
        return self

    async def _started(self) -> Children:
        """A new executor whose children have all started (see :meth:`__aenter__`)."""
        for _ in range(START_TRIES):
            executor = self._new_executor()
            try:
                await executor.start()
                return executor
            except BrokenProcessPool:
                log.warning("a pool process died while starting; starting the pool again")
                executor.reap()
            except BaseException:  # cancelled while starting: leave no children behind
                executor.reap()
                raise
        raise WorkerCrashed(f"the process pool did not start in {START_TRIES} tries")

    async def __aexit__(self, *exc: object) -> None:
        """Let the children (retired ones too) finish and exit; after ``shutdown_timeout``
        seconds, kill them."""
        try:
            await self._stop()
        finally:
            self._progress.close()

    async def _stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            self._retired[executor] = _shut_down(executor)
        if not self._retired:
            return
        closing = asyncio.gather(*self._retired.values())
        try:
            await asyncio.wait_for(asyncio.shield(closing), self.shutdown_timeout)
        except TimeoutError:
            log.warning("the process pool did not stop in %g s; killing it", self.shutdown_timeout)
            for executor in self._retired:
                executor.kill()
            await closing
        self._retired.clear()

    async def process(
        self,
        pipeline: Pipeline,
        data: bytes | Callable[[], bytes],
        params: Mapping[str, Any],
        limits: Limits,
        on_progress: Listener | None = None,
    ) -> PipelineOutput:
        """Run ``pipeline`` in a child on ``data`` - or on what the loader ``data`` returns
        when the child calls it (:meth:`~pixfleet.blobs.BlobStore.loader`); ``on_progress(done,
        total, message)`` hears what it reports (:mod:`consumers.pipelines.progress`). Raises
        what the pipeline (or the loader) raised (typed), ``TaskTimeout`` or ``WorkerCrashed``."""
        if self._executor is None:
            raise RuntimeError("PipelinePool is not started")
        executor = self._executor
        try:
            with self._progress.listening(on_progress) as token:
                call = executor.run(run_in_child, pipeline, data, dict(params), limits, token)
                self._count_task()
                async with asyncio.timeout(limits.timeout + self.hard_grace):
                    out: PipelineOutput = await call
                    return out
        except TimeoutError:
            self._recycle(executor, "a pipeline ignored its time limit")
            raise TaskTimeout(
                f"pipeline exceeded its time limit of {limits.timeout:g} s and was killed"
            ) from None
        except BrokenProcessPool as exc:
            self._recycle(executor, "a pool process died")
            raise WorkerCrashed(f"the pipeline process died: {exc}") from None
        except MemoryLimitExceeded:
            self._retire(executor, "a pipeline ran out of memory")
            raise

    def _count_task(self) -> None:
        """Count a task of the current executor; start its renewal when it is due."""
        self._submitted += 1
        due = self._submitted >= self._max_tasks * self.workers
        if due and self._renewal is None and time.monotonic() - self._born >= self._min_age:
            self._renewal = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        """Start and warm a fresh pool, then send new tasks to it and retire the old one."""
        try:
            fresh = await self._started()
        except WorkerCrashed as err:
            log.warning("could not renew the process pool (%s); the current one goes on", err)
            self._born = time.monotonic()  # try again after min_child_age
            return
        finally:
            self._renewal = None
        old = self._executor
        if old is None:  # closed meanwhile (cannot happen: _stop cancels us first)
            await _shut_down(fresh)
            return
        self._executor, self._submitted, self._born = fresh, 0, time.monotonic()
        self.renewed += 1
        self._close_aside(old, cancel=False)

    def _recycle(self, executor: Children, why: str) -> None:
        """Kill every child of ``executor`` and replace it (once, however many callers see it).
        A retired ``executor`` (no longer the current one) just has its children killed."""
        if executor is not self._executor:
            executor.kill()
            return
        log.warning("restarting the process pool: %s", why)
        executor.kill()
        self._close_aside(executor, cancel=True)  # reaps the killed children
        self._replace(why)

    def _retire(self, executor: Children, why: str) -> None:
        """Send new tasks to a fresh pool; ``executor``'s children finish their tasks and exit."""
        if executor is not self._executor:
            return
        log.warning("replacing the process pool: %s", why)
        self._close_aside(executor, cancel=False)
        self._replace(why)

    def _close_aside(self, executor: Children, *, cancel: bool) -> None:
        """Close ``executor`` in the background, kept in ``_retired`` until it is closed."""
        self._retired[executor] = _shut_down(executor, cancel=cancel)
        self._retired[executor].add_done_callback(lambda _: self._retired.pop(executor, None))

    def _replace(self, why: str) -> None:
        self.recycled += 1
        self._executor = self._new_executor()
        self._submitted, self._born = 0, time.monotonic()
        if self._on_recycle is not None:
            self._on_recycle(why)


def _shut_down(executor: Children, *, cancel: bool = True) -> asyncio.Future[None]:
    """Close ``executor`` in the background: its children finish their tasks (and the queued
    ones, unless ``cancel``), then exit and are reaped."""
    return asyncio.ensure_future(executor.close(cancel=cancel))
