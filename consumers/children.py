"""The processes of one :class:`~consumers.pool.PipelinePool` generation, driven from the event
loop: one socket pair per child, no manager or feeder thread.

``ProcessPoolExecutor`` hands every call from the event loop to its manager thread, which puts
it on a queue whose feeder thread pickles and writes it; the result comes back to the manager
thread, which completes a ``concurrent.futures`` future that wakes the event loop - four thread
switches per call, each a wait for the scheduler on a loaded machine (a no-op call took 1.5-2.4
ms and 0.3-0.4 ms of the worker's CPU; over one socket, 0.5-1.0 ms and 0.06 ms). Here the event
loop writes the pickled call to the child's socket and reads the result when it is readable.

What the pool relies on, as with the executor: a child that dies (or is killed) fails its call
and every later one with :class:`BrokenProcessPool`; :meth:`Children.close` lets the children
finish what they hold (and the calls waiting for one, unless cancelled), then they exit and are
reaped; :meth:`Children.kill` ends them at once. Calls queue (FIFO) while every child is busy.
Messages use :class:`multiprocessing.connection.Connection`'s framing and pickler (the pool's
own pipe between this process and its children, as under ``ProcessPoolExecutor``; nothing of it
reaches a broker), so the child side is a plain blocking ``Connection``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import struct
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

_SIZE = struct.Struct("!i")
_LARGE = struct.Struct("!Q")
_CHUNK = 1 << 16


def child_main(
    conn: Connection, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> None:
    """A child's life: the initializer, a ready message, then ``(fn, args)`` calls until ``None``
    or end of file. What a call raises goes back as its result; what cannot be pickled goes back
    as a ``RuntimeError`` naming it."""
    try:
        initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which gives up the pool
        _answer(conn, False, exc)
        return
    _answer(conn, True, None)
    while True:
        try:
            call = conn.recv()
        except EOFError:
            return
        if call is None:
            return
        fn, args = call
        try:
            value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            _answer(conn, False, exc)
        else:
            _answer(conn, True, value)


def _answer(conn: Connection, ok: bool, value: object) -> None:
    try:
        body = _dumps((ok, value))
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or error
        body = _dumps((False, RuntimeError(f"result not picklable: {exc!r}")))
    conn.send_bytes(body)


def _dumps(obj: object) -> bytes:
    return bytes(ForkingPickler.dumps(obj))


class _Child:
    def __init__(self, process: SpawnProcess, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.buffer = bytearray()

    async def send(self, body: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        if body is None:
            body = _dumps(None)
        if len(body) > 0x7FFFFFFF:
            head = _SIZE.pack(-1) + _LARGE.pack(len(body))
        else:
            head = _SIZE.pack(len(body))
        await loop.sock_sendall(self.sock, head + body if len(body) < _CHUNK else head)
        if len(body) >= _CHUNK:
            await loop.sock_sendall(self.sock, body)

    async def receive(self) -> tuple[bool, Any]:
        size = _SIZE.unpack(await self._exactly(_SIZE.size))[0]
        if size == -1:
            size = _LARGE.unpack(await self._exactly(_LARGE.size))[0]
        # our own child's answer, over a socket pair only it and we hold
        ok, value = ForkingPickler.loads(await self._exactly(size))
        return bool(ok), value

    async def _exactly(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while len(self.buffer) < n:
            part = await loop.sock_recv(self.sock, min(max(_CHUNK, n - len(self.buffer)), 1 << 20))
            if not part:
                raise EOFError("the pool process closed its end")
            self.buffer += part
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def call(self, body: bytes) -> Any:
        try:
            await self.send(body)
            ok, value = await self.receive()
        except (OSError, EOFError) as exc:
            raise BrokenProcessPool(
                f"pool process {self.process.pid} died (exit code {self.process.exitcode})"
            ) from exc
        if not ok:
            raise value
        return value


_LIVE: weakref.WeakSet[Children] = weakref.WeakSet()


def _kill_all() -> None:
    """At interpreter exit, before multiprocessing joins its children: the children of a pool
    nobody closed (they ignore SIGTERM, so multiprocessing's own ``terminate`` would leave the
    join waiting) are killed; their tasks were not acked and will be redelivered."""
    for children in list(_LIVE):
        children.kill()


class Children:
    """``workers`` spawned processes, each running :func:`child_main`. ``await start()``,
    ``await run(fn, *args)``, ``await close()``; ``kill()`` any time."""

    def __init__(
        self,
        workers: int,
        context: SpawnContext,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
    ) -> None:
        self._children: list[_Child] = []
        self._theirs: list[Connection] = []  # the children's ends, closed here once they run
        for _ in range(workers):
            mine, theirs = socket.socketpair()
            conn = Connection(theirs.detach())
            process = context.Process(
                target=child_main, args=(conn, initializer, initargs), daemon=True
            )
            self._children.append(_Child(process, mine))
            self._theirs.append(conn)
        self._starting: asyncio.Future[None] | None = None
        self._idle: deque[_Child] = deque()
        self._waiting: deque[asyncio.Future[_Child]] = deque()
        self._calls: set[asyncio.Future[Any]] = set()
        self._broken: str | None = None
        self._closing = False
        atexit.unregister(_kill_all)  # once, and after multiprocessing's: it runs before that
        atexit.register(_kill_all)
        _LIVE.add(self)

    @property
    def processes(self) -> list[SpawnProcess]:
        return [child.process for child in self._children]

    async def start(self) -> None:
        """Start every child and wait for each to be ready (its initializer run); the first
        :meth:`run` does it if nobody did. Raises :class:`BrokenProcessPool` if one died."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        for child in self._children:
            child.sock.setblocking(False)
            child.process.start()
        for conn in self._theirs:
            conn.close()  # the children hold their ends: ours would hide their death
        self._theirs.clear()
        for child in self._children:
            await self._call(child, None, ready=True)
            self._idle.append(child)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a free child (the first to be free); what it returned or raised."""
        if self._broken is not None:
            raise BrokenProcessPool(self._broken)
        if self._closing:
            raise RuntimeError("the pool is closing")
        body = _dumps((fn, args))
        if self._starting is None or not self._starting.done():
            await self.start()
        child = self._idle.popleft() if self._idle else await self._free_child()
        call = asyncio.ensure_future(self._call(child, body))
        self._calls.add(call)
        call.add_done_callback(lambda done: self._done(child, done))
        # shielded: a caller that stops waiting leaves the child busy until its result is in
        return await asyncio.shield(call)

    async def _free_child(self) -> _Child:
        waiter: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a child, then cancelled
                self._release(waiter.result())
            raise

    async def _call(self, child: _Child, body: bytes | None, *, ready: bool = False) -> Any:
        try:
            if ready:
                ok, value = await child.receive()
                if not ok:
                    raise value
                return None
            return await child.call(body or b"")
        except (BrokenProcessPool, OSError, EOFError) as exc:
            self._broken = self._broken or str(exc)
            raise BrokenProcessPool(self._broken) from exc

    def _done(self, child: _Child, call: asyncio.Future[Any]) -> None:
        self._calls.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: the caller may have stopped waiting
        self._release(child)

    def _release(self, child: _Child) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    async def close(self, *, cancel: bool = True) -> None:
        """The children finish their calls (and the waiting ones, unless ``cancel``), then exit
        and are reaped."""
        self._closing = True
        if cancel:
            while self._waiting:
                self._waiting.popleft().cancel()
        while self._calls or self._waiting:
            if self._calls:
                await asyncio.wait(self._calls)
            else:
                await asyncio.sleep(0.01)
        started = [c for c in self._children if c.process.pid is not None]
        for child in started:
            with contextlib.suppress(OSError):
                await child.send(None)
        await asyncio.gather(*(asyncio.to_thread(c.process.join) for c in started))
        self._close_sockets()

    def reap(self) -> None:
        """Kill the children and wait for them here (a pool given up while starting)."""
        self.kill()
        for child in self._children:
            if child.process.pid is not None:
                child.process.join(5.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for child in self._children:
            child.sock.close()
        for conn in self._theirs:
            conn.close()
        self._theirs.clear()

    def kill(self) -> None:
        """SIGKILL every child (they ignore SIGTERM); their calls fail as broken."""
        for child in self._children:
            if child.process.pid is not None and child.process.exitcode is None:
                child.process.kill()
