"""Progress from inside a pipeline: :func:`report_progress`, and the pipe that carries it from a
pool process to the worker's event loop (:class:`ProgressChannel`).

A pipeline calls ``report_progress(done, total, message)`` whenever it likes (thumbs: once per
rendition encoded); outside a worker's pool - in a test, a script - the call does nothing. In a
pool process it sends one small tuple, at most every :data:`MIN_INTERVAL` seconds (the last
unit, ``done == total``, always), down a one-way pipe shared by the pool's processes. Each
message is far below ``PIPE_BUF``, so one ``write`` carries it whole: processes never interleave
and a process killed mid-task leaves no half message behind. The worker reads the pipe on its
event loop and hands each report to the listener of the running task
(:meth:`ProgressChannel.listening`), which rate-limits again before anything is written
(:class:`consumers.progress.ProgressReporter`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

log = logging.getLogger(__name__)

#: Seconds between two reports a pipeline process sends (intermediate ones are dropped).
MIN_INTERVAL = 0.1
#: Longest message text sent.
MAX_MESSAGE = 200

Listener = Callable[[int, int | None, str], None]

# -- the pool process's side (set by the pool's initializer; one task at a time) -----------------

_writer: Connection | None = None
_token = 0
_last = 0.0


def report_progress(done: int, total: int | None = None, message: str = "") -> None:
    """Report that ``done`` of ``total`` units of the running task are done. Cheap and never
    raising: outside a worker's pool, or when the worker is gone, it does nothing."""
    global _last  # noqa: PLW0603 - per-process state of the pool process running the task
    if _writer is None or not _token:
        return
    now = time.monotonic()
    if now - _last < MIN_INTERVAL and done != total:
        return
    _last = now
    try:
        _writer.send((_token, int(done), None if total is None else int(total), message[:200]))
    except (OSError, ValueError) as exc:  # the worker went away: the task ends anyway
        log.debug("progress not sent: %s", exc)


def install(writer: Connection | None) -> None:
    """In a pool process: send reports to ``writer`` (the pool's initializer calls it)."""
    global _writer  # noqa: PLW0603 - set once per pool process
    _writer = writer


@contextmanager
def running(token: int) -> Iterator[None]:
    """In a pool process: reports made inside the block belong to ``token``'s task."""
    global _token, _last  # noqa: PLW0603 - the one task this process runs now
    _token, _last = token, 0.0
    try:
        yield
    finally:
        _token = 0


# -- the worker's side ---------------------------------------------------------------------------


class ProgressChannel:
    """The pipe from a pool's processes to the event loop that :meth:`open` ed it."""

    def __init__(self, context: BaseContext) -> None:
        self._reader, self.writer = context.Pipe(duplex=False)
        self._listeners: dict[int, Listener] = {}
        self._tokens = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._reader.fileno(), self._drain)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._reader.fileno())
            self._loop = None
        self._reader.close()
        self.writer.close()

    @contextmanager
    def listening(self, listener: Listener | None) -> Iterator[int]:
        """A token for one task; its reports go to ``listener`` inside the block (0: none)."""
        if listener is None:
            yield 0
            return
        token = next(self._tokens)
        self._listeners[token] = listener
        try:
            yield token
        finally:
            if self._loop is not None:
                self._drain()  # what the task wrote before its result came back is here already
            self._listeners.pop(token, None)

    def _drain(self) -> None:
        while self._reader.poll():
            try:
                token, done, total, message = self._reader.recv()
            except (EOFError, OSError, ValueError, TypeError) as exc:
                log.debug("progress pipe: %s", exc)
                return
            listener = self._listeners.get(token)
            if listener is not None:
                listener(done, total, message)
