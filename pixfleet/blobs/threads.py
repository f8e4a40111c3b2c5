"""The file store's thread hops: blocking file operations run off the event loop, lean.

``loop.run_in_executor`` builds, per call, a :class:`concurrent.futures.Future` (a condition and
a lock), chains it to an asyncio future with two done-callbacks, and wakes the loop once per
completion. A worker makes three such hops per task (the records), so on a busy worker that
machinery was a quarter of the event loop's time. :func:`run` does the same hop with one
:class:`queue.SimpleQueue` put on the way out and, on the way back, one loop wake-up for every
completion that finished while the loop was busy (they are handed over together).

The threads (at most :data:`MAX_THREADS`, started as calls need them, like the default executor)
are daemons: a process that exits while an operation runs cuts it like a crash would - which
the file store's writes survive (temporary file, fsync, then rename or link).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Most threads running file operations at once (the default executor's ``min(32, cpus + 4)``
#: on a small machine).
MAX_THREADS = 8

_Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", "_Returns"]


class _Returns:
    """Completions on their way back to one event loop: one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self.lock = threading.Lock()

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        with self.lock:
            first = not self.done
            self.done.append((future, ok, value))
        if first:
            # RuntimeError: the loop was closed meanwhile, nobody waits any more
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:
        with self.lock:
            done, self.done = self.done, deque()
        for future, ok, value in done:
            if future.done():  # cancelled while the operation ran
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class _Threads:
    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.idle = threading.Semaphore(0)
        self.count = 0
        self.lock = threading.Lock()
        self.returns: dict[asyncio.AbstractEventLoop, _Returns] = {}

    def submit(self, call: _Call) -> None:
        self.calls.put(call)
        if self.idle.acquire(blocking=False):
            return
        with self.lock:
            if self.count < MAX_THREADS:
                self.count += 1
                name = f"pixfleet-files-{self.count}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()

    def returns_to(self, loop: asyncio.AbstractEventLoop) -> _Returns:
        found = self.returns.get(loop)
        if found is None:
            for old in list(self.returns):  # list(): atomic, whatever other loops do
                if old.is_closed():
                    self.returns.pop(old, None)
            found = self.returns[loop] = _Returns(loop)
        return found

    def _serve(self) -> None:
        while True:
            fn, args, future, returns = self.calls.get()
            try:
                returns.put(future, True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through its future
                returns.put(future, False, exc)
            del fn, args, future, returns  # hold nothing while idle
            self.idle.release()


_THREADS = _Threads()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in one of the file threads; its result, or what it raised."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    _THREADS.submit((fn, args, future, _THREADS.returns_to(loop)))
    return await future
