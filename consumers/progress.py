"""Rate-limited progress reports of one run (:class:`ProgressReporter`).

The worker reports each step as it starts (``queue``, ``fetch``, ``process``, ``store``), what
the pipeline reports from its pool process (``process``, ``done`` of ``total``: thumbs, one per
rendition) and each output as it is stored (``store``, ``done`` of ``total``). A report is
written only once the run has taken ``every`` seconds, and then at most once per ``every``
seconds, so a quick task writes none and a long one a few. The run is counted from
:meth:`~ProgressReporter.begin` - when the task gets its pipeline slot - so a quick task that
waited its turn behind others (a worker with a deep prefetch) writes none either: the report
would only say which step it started a moment before its result. The write
(:func:`pixfleet.progress.write_progress`, the latest report of the task in the blob store) runs
in the background and never slows or fails the task - a report that cannot be written is
dropped with a debug line. :meth:`ProgressReporter.aclose` ends the run's reporting (the result
supersedes whatever report is still on its way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from pixfleet.blobs import BlobStore
from pixfleet.envelope import Task, WorkerInfo
from pixfleet.errors import PixfleetError
from pixfleet.progress import Progress, write_progress

log = logging.getLogger(__name__)

#: Seconds the last report of a run may still take to be written once the run is over.
FLUSH_WAIT = 1.0


class ProgressReporter:
    """Reports the progress of one run of ``task`` in ``group`` (see the module docstring)."""

    def __init__(
        self, store: BlobStore, task: Task, group: str, worker: WorkerInfo, *, every: float
    ) -> None:
        self._store = store
        self._task = task
        self._group = group
        self._worker = worker
        self._every = every
        self._started = time.monotonic()
        self._last: float | None = None
        self._writing: asyncio.Task[None] | None = None
        self._next: Progress | None = None  # the newest report waiting for the write in flight

    def begin(self) -> None:
        """The run begins now: the time before (the wait for a slot) does not count."""
        self._started = time.monotonic()

    def report(self, step: str, done: int = 0, total: int | None = None, message: str = "") -> None:
        """Report ``step`` (``done`` of ``total``), if the rate limit lets it through."""
        if self._every < 0:
            return  # reporting is off
        now = time.monotonic()
        if now - self._started < self._every:
            return
        if self._last is not None and now - self._last < self._every:
            return
        self._last = now
        self._next = Progress(
            task_id=self._task.id,
            group=self._group,
            step=step,
            done=done,
            total=total,
            message=message[:200],
            worker=self._worker,
            at=datetime.now(UTC),
        )
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write())

    def processed(self, done: int, total: int | None, message: str) -> None:
        """The pipeline reported ``done`` of ``total`` (:func:`consumers.pipelines.progress.
        report_progress`)."""
        self.report("process", done, total, message)

    def stored(self, done: int, total: int, name: str) -> None:
        """Output ``name`` was stored, ``done`` of ``total``."""
        self.report("store", done, total, name)

    async def _write(self) -> None:
        while (progress := self._next) is not None:
            self._next = None
            try:
                await write_progress(self._store, progress)
            except PixfleetError as exc:
                log.debug("progress of task %s not written: %s", progress.task_id, exc.one_line())

    async def aclose(self) -> None:
        """Stop reporting; the last report still being written gets :data:`FLUSH_WAIT`
        seconds, then is cancelled (the result supersedes it)."""
        self._every = -1.0
        if self._writing is not None and not self._writing.done():
            await asyncio.wait([self._writing], timeout=FLUSH_WAIT)
            self._writing.cancel()
            await asyncio.gather(self._writing, return_exceptions=True)
