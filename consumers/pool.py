"""A process pool for CPU-bound pipelines, so the event loop keeps serving the broker.

* Time limit, twice: the child arms ``SIGALRM`` and raises :class:`TaskTimeout` inside the
  pipeline (clean, the child survives); if the child is stuck in C code past the limit plus a
  grace period, the parent kills the whole pool and starts a fresh one.
* A child that dies (OOM killer, segfault) breaks the pool: the call raises the retryable
  :class:`WorkerCrashed` and the pool is rebuilt.
* Every rebuild is counted in ``recycled`` and reported to the optional ``on_recycle`` callback
  (the worker's :meth:`~consumers.events.WorkerEvents.pool_recycled`) with its reason.
* Children are started with ``spawn`` and exit by themselves when their parent dies
  (``kill -9`` of a worker leaves no orphans burning CPU).
* Children ignore SIGINT *and* SIGTERM: Ctrl-C in a terminal, ``systemctl stop`` (SIGTERM to the
  whole control group) and ``kill -TERM -<pgid>`` reach every process, and the parent drains
  in-flight tasks - a child that died of the signal would turn each of them into a retry. The
  parent ends its children itself: by closing the pool, or by SIGKILL when one is stuck or the
  pool broke (ProcessPoolExecutor's own SIGTERM to the survivors of a broken pool is ignored,
  so :meth:`PipelinePool._recycle` kills them).
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
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Self

from consumers.pipelines import progress as pipeline_progress
from consumers.pipelines.base import Pipeline, PipelineOutput
from consumers.pipelines.progress import Listener, ProgressChannel
from consumers.settings import MEMORY_LIMIT_MB
from pixfleet.errors import (
    MemoryLimitExceeded,
    PipelineError,
    PixfleetError,
    TaskTimeout,
    WorkerCrashed,
)
from pixfleet.images import Limits

log = logging.getLogger(__name__)

#: Extra seconds the parent waits beyond the limit before it kills a stuck child.
HARD_GRACE = 5.0
#: Fresh starts of a pool whose processes die while starting.
START_TRIES = 3
MIB = 1 << 20


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(70)


def _child_init(parent_pid: int, memory_limit: int, progress: Connection | None = None) -> None:
    # The parent handles Ctrl-C and SIGTERM (also when sent to the whole group) and drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pipeline_progress.install(progress)
    if memory_limit:
        _limit_address_space(memory_limit)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _limit_address_space(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (never above an existing hard cap),
    soft and hard, so the pipeline cannot raise it again."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _out_of_memory() -> MemoryLimitExceeded:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return MemoryLimitExceeded("the pipeline ran out of memory")
    return MemoryLimitExceeded(
        f"the pipeline needed more than the {soft // MIB} MiB a pool process may use"
        " (worker run --memory-limit)"
    )


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TaskTimeout("pipeline exceeded its time limit")


def _run_in_child(
    pipeline: Pipeline, data: bytes, params: dict[str, Any], limits: Limits, token: int = 0
) -> PipelineOutput:
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limits.timeout)
    try:
        with pipeline_progress.running(token):
            return pipeline(data, params, limits)
    except TaskTimeout:
        raise TaskTimeout(f"pipeline exceeded its time limit of {limits.timeout:g} s") from None
    except PixfleetError:
        raise
    except MemoryError:
        raise _out_of_memory() from None
    except Exception as exc:  # noqa: BLE001 - re-raised as a typed error
        # Unclassified failures cross the process boundary as one typed, picklable error.
        raise PipelineError(f"{type(exc).__name__}: {exc}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PipelinePool:
    """``async with PipelinePool(4) as pool: out = await pool.process(fn, data, params, limits)``.

    ``on_recycle(reason)`` is called (on the event loop) each time the pool is rebuilt; it
    should not raise (the CLI passes a guarded :class:`~consumers.events.EventFanout` method)."""

    def __init__(
        self,
        workers: int,
        *,
        max_tasks_per_child: int = 500,
        hard_grace: float = HARD_GRACE,
        shutdown_timeout: float = 30.0,
        memory_limit_mb: int = MEMORY_LIMIT_MB,
        on_recycle: Callable[[str], None] | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.hard_grace = hard_grace
        self.shutdown_timeout = shutdown_timeout
        self.memory_limit = max(0, memory_limit_mb) * MIB  # bytes; 0: no cap
        self._max_tasks = max_tasks_per_child
        self._on_recycle = on_recycle
        self._executor: ProcessPoolExecutor | None = None
        self._progress = ProgressChannel(multiprocessing.get_context("spawn"))
        # Retired pools finishing their tasks: executor -> its shutdown running in a thread.
        self._retired: dict[ProcessPoolExecutor, asyncio.Future[None]] = {}
        self.recycled = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(os.getpid(), self.memory_limit, self._progress.writer),
            max_tasks_per_child=self._max_tasks,
        )

    async def __aenter__(self) -> Self:
        """Start the children and warm them up, so the first tasks do not pay for interpreter
        start-up. A child that dies while it starts - before it could ignore SIGTERM, a
        SIGTERM to the whole group kills it - costs a fresh start of the pool, up to
        :data:`START_TRIES` times; then :class:`WorkerCrashed`."""
        loop = asyncio.get_running_loop()
        self._progress.open()
        for _ in range(START_TRIES):
            executor = self._executor = self._new_executor()
            warm = [loop.run_in_executor(executor, os.getpid) for _ in range(self.workers)]
            try:
                await asyncio.gather(*warm)
                return self
            except BrokenProcessPool:
                log.warning("a pool process died while starting; starting the pool again")
                _kill_children(executor)
                executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._progress.close()
        raise WorkerCrashed(f"the process pool did not start in {START_TRIES} tries")

    async def __aexit__(self, *exc: object) -> None:
        """Let the children (retired ones too) finish and exit; after ``shutdown_timeout``
        seconds, kill them."""
        try:
            await self._stop()
        finally:
            self._progress.close()

    async def _stop(self) -> None:
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
                _kill_children(executor)
            await closing
        self._retired.clear()

    async def process(
        self,
        pipeline: Pipeline,
        data: bytes,
        params: Mapping[str, Any],
        limits: Limits,
        on_progress: Listener | None = None,
    ) -> PipelineOutput:
        """Run ``pipeline`` in a child; ``on_progress(done, total, message)`` hears what it
        reports (:mod:`consumers.pipelines.progress`). Raises what the pipeline raised (typed),
        ``TaskTimeout`` or ``WorkerCrashed``."""
        if self._executor is None:
            raise RuntimeError("PipelinePool is not started")
        executor = self._executor
        try:
            with self._progress.listening(on_progress) as token:
                future = executor.submit(_run_in_child, pipeline, data, dict(params), limits, token)
                async with asyncio.timeout(limits.timeout + self.hard_grace):
                    return await asyncio.wrap_future(future)
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

    def _recycle(self, executor: ProcessPoolExecutor, why: str) -> None:
        """Kill every child of ``executor`` and replace it (once, however many callers see it).
        A retired ``executor`` (no longer the current one) just has its children killed."""
        if executor is not self._executor:
            _kill_children(executor)
            return
        log.warning("restarting the process pool: %s", why)
        _kill_children(executor)
        executor.shutdown(wait=False, cancel_futures=True)
        self._replace(why)

    def _retire(self, executor: ProcessPoolExecutor, why: str) -> None:
        """Send new tasks to a fresh pool; ``executor``'s children finish their tasks and exit."""
        if executor is not self._executor:
            return
        log.warning("replacing the process pool: %s", why)
        self._retired[executor] = _shut_down(executor, cancel=False)
        self._retired[executor].add_done_callback(lambda _: self._retired.pop(executor, None))
        self._replace(why)

    def _replace(self, why: str) -> None:
        self.recycled += 1
        self._executor = self._new_executor()
        if self._on_recycle is not None:
            self._on_recycle(why)


def _shut_down(executor: ProcessPoolExecutor, *, cancel: bool = True) -> asyncio.Future[None]:
    """``executor.shutdown(wait=True)`` in a thread: its children finish their tasks (and the
    queued ones, unless ``cancel``), then exit."""
    closing = asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=cancel)
    return asyncio.ensure_future(closing)


def _kill_children(executor: ProcessPoolExecutor) -> None:
    """SIGKILL every child of ``executor`` (they ignore SIGTERM)."""
    # ProcessPoolExecutor has no public way to kill a child; _processes is stable across
    # CPython 3.8-3.13 and typed in typeshed.
    for process in list((executor._processes or {}).values()):
        process.kill()
